"""How the induction study (examples/induction_heads.py) measures a model on R + R.

- `per_position_loss`, `halves`: next-token loss at each position of a random sequence
  R written twice, and its mean on each copy (counted as `InductionLoss` counts it);
  `ablation_rows`: those halves with sets of heads ablated; `check_against_detector`:
  the unablated halves equal the detector's own loss report.
- `pretrained_heads`: the pretrained model's detector scores, and its best induction
  heads ablated together against as many other heads.
- `trained_heads`: a model trained by the study, its detectors and single heads ablated.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from _interpret import InterpretStudy
from lmscope.data import TokenData, iter_eval_batches
from lmscope.interpret import (
    HeadScores,
    ablate,
    corpus_token_batches,
    detect_heads,
    repeated_random_tokens,
)

#: Sequences R + R each model is measured on.
N_SEQUENCES = 32
#: SmolLM2 heads ablated together (its best induction heads, or as many controls).
N_ABLATED = 5


# --- measuring a model on R + R ------------------------------------------------------------
def per_position_loss(
    logits: Float[Tensor, "batch pos vocab"], ids: Int[Tensor, "batch pos"]
) -> Float[Tensor, " pos"]:
    """Next-token loss at each position (the prediction of token p + 1), batch mean."""
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none")
    return loss.mean(0).cpu()


def halves(loss: Tensor, seq_len: int, prefix: int) -> tuple[float, float]:
    """Mean loss on each copy of R + R, counted as `InductionLoss` counts it: each copy's
    tokens 2..L predicted from what precedes them (`prefix` = 1 after a <bos>)."""
    first = loss[prefix : prefix + seq_len - 1]
    second = loss[prefix + seq_len : prefix + 2 * seq_len - 1]
    return float(first.mean()), float(second.mean())


def ablation_rows(
    model: Any,
    ids: Tensor,
    plans: list[tuple[str, list[tuple[int, int]], str]],
    reference: Tensor,
    seq_len: int,
    prefix: int,
) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Loss on each copy with no ablation and with each plan's heads ablated."""
    with torch.no_grad():
        base = per_position_loss(model(ids), ids)
    curves = {"no ablation": base}
    first, second = halves(base, seq_len, prefix)
    rows = [{"ablated": "none", "first_half": first, "second_half": second}]
    for label, heads, method in plans:
        logits = ablate(
            model,
            ids,
            heads,
            method=method,
            reference_tokens=reference if method == "mean" else None,
        )
        loss = per_position_loss(logits, ids)
        first, second = halves(loss, seq_len, prefix)
        rows.append({"ablated": label, "first_half": first, "second_half": second})
        if method == "mean":
            curves[label] = loss
    for row in rows:
        row["gap"] = row["first_half"] - row["second_half"]
    return rows, curves


def check_against_detector(rows: list[dict[str, Any]], scores: HeadScores) -> None:
    """The unablated halves must equal the detector's own loss report (same tokens)."""
    check = scores.induction_loss
    assert check is not None
    assert abs(rows[0]["first_half"] - check.first_half) < 1e-3, (rows[0], check)
    assert abs(rows[0]["second_half"] - check.second_half) < 1e-3, (rows[0], check)


# --- 1. the pretrained model ---------------------------------------------------------------
def pretrained_heads(study: InterpretStudy, seq_len: int) -> dict[str, Any]:
    """Detector scores of every head on [bos] + R + R, and ablations of the best
    induction heads against as many heads drawn at random from the rest."""
    model, tok = study.model, study.tokenizer
    special = set(tok.special_tokens().values())
    batch = 4 if study.args.quick else 8
    scores = detect_heads(
        model, seq_len=seq_len, batch=batch, seed=study.args.seed, bos=tok.bos_id, avoid=special
    )
    scores.plot(study.picture("smollm2"))
    ids = repeated_random_tokens(
        model.cfg.vocab_size, seq_len, batch, seed=study.args.seed, bos=tok.bos_id, avoid=special
    )
    n = min(N_ABLATED, model.cfg.n_layers * model.cfg.n_heads // 2)
    best = [(layer, head) for layer, head, _ in scores.top("induction", n)]
    rest = [
        (layer, head)
        for layer in range(model.cfg.n_layers)
        for head in range(model.cfg.n_heads)
        if (layer, head) not in best
    ]
    control = random.Random(study.args.seed).sample(rest, n)
    # Mean ablation: each head's output averaged over ordinary text (Shakespeare).
    reference = torch.cat(corpus_token_batches(tok, max_tokens=1024, seq_len=64))
    plans = [
        (f"the {n} best induction heads, mean", best, "mean"),
        (f"{n} other heads at random, mean", control, "mean"),
    ]
    rows, curves = ablation_rows(model, ids, plans, reference, seq_len, prefix=1)
    check_against_detector(rows, scores)
    return {"scores": scores, "ablations": rows, "curves": curves, "best": best, "control": control}


# --- 2 and 3. the models trained here -------------------------------------------------------
def trained_heads(
    study: InterpretStudy, run: Any, data_dir: Path, seq_len: int, label: str
) -> dict[str, Any]:
    """Detectors, per-position loss on R + R, and that loss with single heads ablated."""
    model = run.model(torch.device("cpu")).eval()
    data = TokenData(data_dir)
    newline = data.tokenizer.encode("\n")  # a line break would give R structure
    seed = study.args.seed
    ids = repeated_random_tokens(
        model.cfg.vocab_size, seq_len, N_SEQUENCES, seed=seed, avoid=newline
    )
    scores = detect_heads(
        model, seq_len=seq_len, batch=N_SEQUENCES, seed=seed, avoid=newline
    )  # fmt: skip
    scores.plot(study.picture(label))
    # Mean ablation replaces a head's output by its mean over the model's own validation
    # text, not over the random sequences being measured.
    block = model.cfg.max_seq_len
    reference, _ = next(iter_eval_batches(data.split("val"), 16, block, 1))
    # Induction needs a head of an earlier layer to compose with: candidates are layer 1's.
    ranked = [h for h in scores.top("induction", 99) if h[0] >= 1]
    induction = ranked[0][:2]
    strong = [h[:2] for h in ranked if h[2] > 0.5]
    layer0 = [h for h in scores.top("previous_token", 99) if h[0] == 0]
    previous = layer0[0][:2]
    control = ranked[-1][:2]  # the layer-1 head with the lowest induction score
    name = lambda h: f"L{h[0]}H{h[1]}"  # noqa: E731
    plans = [
        (f"best induction score {name(induction)}, zero", [induction], "zero"),
        (f"best induction score {name(induction)}, mean", [induction], "mean"),
    ]
    if len(strong) > 1:
        names = " + ".join(name(h) for h in strong)
        plans.append((f"every head scoring > 0.5: {names}, mean", strong, "mean"))
    plans += [
        (f"previous-token head {name(previous)}, mean", [previous], "mean"),
        (f"control {name(control)}, mean", [control], "mean"),
    ]
    rows, curves = ablation_rows(model, ids, plans, reference, seq_len, prefix=0)
    check_against_detector(rows, scores)
    return {
        "scores": scores,
        "ablations": rows,
        "curves": curves,
        "induction_head": induction,
        "induction_heads": strong,
        "previous_head": previous,
        "control_head": control,
        "steps": run.result.steps,
        "tokens": run.result.tokens,
        "seconds": run.result.elapsed_s,
        "train_loss": run.final_train_loss(),
        "val_loss": run.val_curve[-1][1],
        "vocab": data.vocab_size,
    }
