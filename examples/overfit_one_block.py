"""Study (a): a GPT with a single block overfits (memorises) a slice of tiny Shakespeare.

The sanity check every from-scratch transformer should pass: with no dropout and no
weight decay, a model with one attention + MLP block trained for many epochs on a small
text drives its training loss far below the validation loss, and greedy decoding from a
training prompt reproduces the text that followed it. The slice is the first `--chars`
characters of the corpus; the last 10% of it is the validation text.

Writes docs/studies/overfit_one_block.md (table) and .png (curves)::

    python examples/overfit_one_block.py            # about 1.5 minutes on a 2-core CPU
    python examples/overfit_one_block.py --quick    # a few seconds, toy sizes
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from _common import (
    RunResult,
    Study,
    figure,
    fmt,
    markdown_table,
    open_study,
    run_script,
    save_figure,
    study_parser,
    write_report,
)
from lmscope.data import eval_starts
from lmscope.model.base import BaseTransformer
from lmscope.presets import preset_dict

NAME = "overfit_one_block"


def settings(quick: bool) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(model config, train settings, characters of text) at full or toy size."""
    d_model, block, chars = (32, 32, 4_000) if quick else (128, 64, 20_000)
    # GPT-2's wiring (learned positions, pre-norm LayerNorm, GELU) with one block.
    model = {
        **preset_dict("gpt2-small"),
        "name": "gpt-1-block",
        "n_layers": 1,
        "d_model": d_model,
        "n_heads": 4,
        "max_seq_len": block,
        "dropout": 0.0,
    }
    train = {
        "batch_size": 8 if quick else 16,
        "block_size": block,
        "lr": 3e-3,
        "warmup_steps": 5 if quick else 50,
        "weight_decay": 0.0,  # nothing holds the model back from memorising
        "eval_every": 20 if quick else 100,  # quick: few evaluations (each draws loss.png)
        "eval_batches": 1 if quick else 8,
        "log_every": 5 if quick else 10,
    }
    return model, train, chars


@torch.no_grad()
def recall(model: BaseTransformer, tokens: Any, n: int) -> dict[str, float]:
    """Greedy continuations of `n` windows spread over `tokens`, compared with the text.

    Each window fills the model's context: a quarter is the prompt, the rest is decoded
    greedily. Returns the share of decoded characters that match the text (`match`), the
    mean length of the exactly reproduced prefix (`prefix`), and teacher-forced top-1
    accuracy over the same windows (`accuracy`).
    """
    length = model.cfg.max_seq_len
    prompt_len = length // 4
    starts = eval_starts(len(tokens), length, n)
    rows = torch.tensor([list(tokens[s : s + length]) for s in starts], dtype=torch.long)
    device = next(model.parameters()).device
    rows = rows.to(device)
    new = model.generate(rows[:, :prompt_len], max_new_tokens=length - prompt_len, temperature=0.0)
    made = torch.tensor(new.new_tokens, device=device)
    truth = rows[:, prompt_len:]
    same = made == truth
    prefix = same.long().cumprod(dim=1).sum(dim=1).float()
    predicted = model(rows[:, :-1]).argmax(-1)
    return {
        "match": float(same.float().mean()),
        "prefix": float(prefix.mean()),
        "accuracy": float((predicted == rows[:, 1:]).float().mean()),
    }


def sample(study: Study, model: BaseTransformer) -> tuple[str, str, str]:
    """(prompt, true continuation, greedy continuation) of the first training window."""
    data = study.data
    tokenizer = data.tokenizer
    length = model.cfg.max_seq_len
    prompt_len = length // 4
    ids = [int(t) for t in data.split("train")[:length]]
    device = next(model.parameters()).device
    prompt = torch.tensor([ids[:prompt_len]], device=device)
    new = model.generate(prompt, max_new_tokens=length - prompt_len, temperature=0.0)
    return (
        tokenizer.decode(ids[:prompt_len]),
        tokenizer.decode(ids[prompt_len:]),
        tokenizer.decode(new.new_tokens[0]),
    )


def plot(run: RunResult, path: Path, vocab: int) -> None:
    """Training and validation loss against step on one axis."""
    fig, ax = figure()
    ax.plot(*zip(*run.train_curve, strict=True), label="train (batch)", linewidth=1, alpha=0.8)
    ax.plot(*zip(*run.val_curve, strict=True), "o-", label="validation", linewidth=1.5)
    ax.axhline(math.log(vocab), color="grey", linestyle=":", label=f"ln(vocab={vocab})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title("a 1-block GPT memorises its training text")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as a table and a picture)."""
    parser = study_parser(__doc__.splitlines()[0], steps=1500, quick_steps=40)
    parser.add_argument("--chars", type=int, default=None, help="characters of text to train on")
    args = parser.parse_args(argv)
    model_cfg, train_cfg, chars = settings(args.quick)
    chars = args.chars or chars
    with open_study(NAME, __file__, args, argv, max_chars=chars) as study:
        run = study.train("1 block", model_cfg, **train_cfg)
        model = run.model(study.device)
        data = study.data
        n = 16 if args.quick else 64
        on_train = recall(model, data.split("train"), n)
        on_val = recall(model, data.split("val"), n)
        prompt, truth, made = sample(study, model)
        vocab = data.tokenizer.vocab_size
        plot(run, args.out / f"{NAME}.png", vocab)
        numbers = report(
            study, run, model_cfg, on_train, on_val, (prompt, truth, made), chars, vocab, n
        )
    return numbers


def report(
    study: Study,
    run: RunResult,
    model_cfg: dict[str, Any],
    on_train: dict[str, float],
    on_val: dict[str, float],
    text: tuple[str, str, str],
    chars: int,
    vocab: int,
    n_windows: int,
) -> dict[str, Any]:
    """Write the markdown report; return the numbers it holds."""
    train_at = dict(run.train_curve)
    prompt_len = model_cfg["max_seq_len"] // 4
    decoded = model_cfg["max_seq_len"] - prompt_len
    curve = markdown_table(
        ["step", "train loss (batch)", "val loss", "val - train"],
        [
            (
                step,
                fmt(train_at.get(step)),
                fmt(val),
                fmt(val - train_at[step]) if step in train_at else "-",
            )
            for step, val in run.val_curve
        ],
    )
    summary = markdown_table(
        ["split", "next-char accuracy", f"greedy chars matching (of {decoded})", "exact prefix"],
        [
            (name, fmt(r["accuracy"]), fmt(decoded * r["match"], 1), fmt(r["prefix"], 1))
            for name, r in (("train", on_train), ("validation", on_val))
        ],
    )
    best_step, best_val = min(run.val_curve, key=lambda sv: sv[1])
    first_train = run.train_curve[0][1]
    final_train = run.train_curve[-1][1]
    final_val = run.val_curve[-1][1]
    intro = (
        f"A GPT with **one block** (d_model {model_cfg['d_model']}, {model_cfg['n_heads']} "
        f"heads, context {model_cfg['max_seq_len']}, learned positions, pre-norm, no dropout, "
        f"no weight decay) trained on the first {chars:,} characters of the corpus "
        f"(vocabulary {vocab} characters; the last 10% held out for validation). The "
        f"untrained loss is about ln({vocab}) = {math.log(vocab):.2f}."
    )
    prompt, truth, made = (s.replace("\n", "⏎") for s in text)
    sections = [
        "## Loss during training\n\n" + curve,
        f"Training loss went from {fmt(first_train)} (first logged step) to "
        f"{fmt(final_train)}; validation loss was lowest ({fmt(best_val)}) at step "
        f"{best_step} and ended at {fmt(final_val)}.",
        f"## Memorisation\n\nGreedy continuations ({decoded} characters after a "
        f"{prompt_len}-character prompt) of {n_windows} windows spread over each split, compared "
        "with the real text:\n\n" + summary,
        "First training window, greedy (⏎ = newline):\n\n"
        f"```text\nprompt:    {prompt}\ntext:      {truth}\ngenerated: {made}\n```",
    ]
    write_report(study, "Study (a): a 1-block GPT overfits tiny Shakespeare", intro, sections)
    return {
        "first_train_loss": first_train,
        "final_train_loss": final_train,
        "final_val_loss": final_val,
        "best_val_loss": best_val,
        "best_val_step": best_step,
        "train": on_train,
        "val": on_val,
    }


if __name__ == "__main__":
    run_script(main)
