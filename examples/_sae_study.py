"""The pipeline both SAE studies share (sae_features.py: a Shakespeare character model;
sae_smollm2.py: SmolLM2-135M on the same plays).

1. `cache_and_train`: activations at one hook cached on disk once (`cache_activations`),
   read back shuffled and normalised (`ActivationStore`), and every SAE of `sae_configs`
   (a ReLU-L1 sweep, TopK with k latents, JumpReLU with a quadratic L0 loss around k and
   thresholds started from the data) trained in one pass (`train_saes`).
2. `evaluate_all`: L0, FVU and loss recovered of each SAE on held-out windows.
3. `find_features`: for each label, the latent that detects it best (F1 of firing) on
   half of the held-out windows, measured on the other half; `show_features`: its top
   contexts, cards and an HTML dashboard.
4. `clamp_study`: sampled continuations with one feature clamped, labels measured.

The scripts add what differs: the model, its data and the report's wording.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

import _sae
from _common import console
from _interpret import InterpretStudy
from _sae_report import describe_sae
from lmscope.sae import (
    ActivationStore,
    SAEConfig,
    TokenWindows,
    build_sae,
    cache_activations,
    clamp_features,
    collect_features,
    evaluate_sae,
    train_saes,
    write_dashboard,
)
from lmscope.sae.activation_sources import special_position_mask, stop_layer
from lmscope.sae.features import PAD
from lmscope.sae.pipeline import parse_width

#: Clamp values, as multiples of the feature's largest held-out activation (0: ablated).
CLAMPS = (0.0, 0.5, 1.0, 2.0)
Labeller = Callable[[str], list[bool]]


def heldout_rows(
    data_dir: Path, context: int, n: int, prepend_bos: bool = False
) -> Int[Tensor, "n ctx"]:
    """`n` windows spread evenly over the validation split (the end of every play)."""
    windows = TokenWindows(data_dir, context_size=context, split="val", prepend_bos=prepend_bos)
    total = windows.n_windows or 0
    index = torch.linspace(0, total - 1, min(n, total)).long().unique().tolist()
    return torch.stack([next(windows.windows(i)) for i in index])


def sae_configs(args: argparse.Namespace, d_in: int, hook: str, ctx: int) -> dict[str, SAEConfig]:
    """The SAEs compared: ReLU-L1 for each ``--l1``, TopK (k) and JumpReLU (target L0 k).

    JumpReLU starts each threshold at the first batch's quantile for an L0 of k
    (``jumprelu_init_l0``) and moves its thresholds at 10x the learning rate
    (``jumprelu_threshold_lr_scale``): with SAELens's constant start (0.01) and one rate
    for all, the L0 was still 4x k after the few hundred steps these studies can afford.
    """
    base = {"d_in": d_in, "hook_name": hook, "context_size": ctx, **parse_width(args.width)}
    configs = {
        f"relu_l1_{c:g}": SAEConfig(arch="standard", l1_coefficient=c, **base) for c in args.l1
    }
    configs["topk"] = SAEConfig(arch="topk", k=args.k, **base)
    configs["jumprelu"] = SAEConfig(
        arch="jumprelu",
        jumprelu_sparsity_loss="quadratic",
        target_l0=args.k,
        jumprelu_init_l0=args.k,
        jumprelu_threshold_lr_scale=10.0,
        **base,
    )
    return configs


def cache_and_train(
    study: InterpretStudy,
    hook: str,
    data_dir: Path,
    runs: Path,
    *,
    cache_dtype: torch.dtype,
    prepend_bos: bool,
) -> dict[str, Any]:
    """Cache ``--sae-tokens`` activations at `hook` into ``runs/cache`` (special tokens,
    BOS included, left out), train every SAE in one pass; returns the SAEs, steps, and
    seconds spent on each half."""
    args, model = study.args, study.model
    ctx = model.cfg.max_seq_len if args.context is None else args.context
    start = time.perf_counter()
    manifest = cache_activations(
        model,
        None,
        str(data_dir),
        hook,
        runs / "cache",
        n_tokens=args.sae_tokens,
        context_size=ctx,
        prepend_bos=prepend_bos,
        dtype=cache_dtype,
    )
    cached_s = time.perf_counter() - start
    rows = sum(int(s["rows"]) for s in manifest["shards"])
    console.print(f"cached {rows:,} activations in {runs / 'cache'} ({cached_s:.0f} s)")
    store = ActivationStore(
        None,
        None,
        runs / "cache",
        hook,
        store_batch_size=args.batch,
        buffer_tokens=16 * args.batch,
        normalize="expected_average_only_in",
        seed=args.seed,
    )
    configs = sae_configs(args, model.cfg.d_model, hook, ctx)
    saes = {name: build_sae(cfg, seed=args.seed) for name, cfg in configs.items()}
    steps = args.sae_steps
    result = train_saes(
        saes,
        store,
        total_steps=steps,
        lr=args.lr,
        lr_warmup_steps=max(steps // 20, 1),
        sparsity_warmup_steps=max(steps // 10, 1),
        log_every=max(steps // 10, 1),
        out=runs / "saes",
        resume=False,
        progress=not args.no_progress,
        console=console,
    )
    return {
        "saes": result.saes,
        "steps": result.steps,
        "seconds": result.elapsed_s,
        "cache_seconds": cached_s,
        "cache_rows": rows,
        "context": ctx,
        "cache_dir": runs / "cache",
        "prepend_bos": prepend_bos,
    }


def evaluate_all(
    study: InterpretStudy, saes: dict[str, Any], rows: Tensor, special: list[int]
) -> list[dict]:
    """`evaluate_sae` of every SAE on the held-out windows `rows` (statistics without the
    positions of `special` tokens; the loss over every prediction)."""
    out = []
    for name, sae in saes.items():
        ev = evaluate_sae(
            study.model, sae, rows, max_contexts=None, exclude_special=special
        ).to_dict()
        label, setting = describe_sae(sae)
        out.append({"name": name, "arch": sae.cfg.arch, "label": label, "setting": setting, **ev})
    return out


@torch.no_grad()
def hook_acts(model: Any, hook: str, rows: Tensor) -> Tensor:
    """The activations at `hook` on every position of `rows`: [n * ctx, d] (the model
    stops after the hook's block)."""
    _, cache = model.run_with_cache(
        rows, names_filter=hook, stop_at_layer=stop_layer(model, [hook])
    )
    return cache[hook].reshape(-1, cache[hook].shape[-1])


@torch.no_grad()
def find_features(
    study: InterpretStudy,
    saes: dict[str, Any],
    rows: Tensor,
    labels: dict[str, tuple[str, Labeller]],
    special: list[int],
) -> dict[str, Any]:
    """Per SAE and label: the best detecting latent, chosen on half A, measured on half B.

    Positions of `special` tokens (a prepended BOS, document separators) are left out,
    as they are from the training data."""
    decode = study.tokenizer.decode
    halves = {"A": rows[0::2], "B": rows[1::2]}
    keep = {h: special_position_mask(r, special).reshape(-1) for h, r in halves.items()}
    marks = {
        h: {k: v.reshape(-1)[keep[h]] for k, v in _sae.token_labels(r, decode, labels).items()}
        for h, r in halves.items()
    }
    hook = next(iter(saes.values())).cfg.hook_name
    inputs = {h: hook_acts(study.model, hook, r)[keep[h]] for h, r in halves.items()}
    found: dict[str, dict[str, dict]] = {}
    for name, sae in saes.items():
        acts = {h: sae.encode(x).float() for h, x in inputs.items()}
        found[name] = {}
        for label in labels:
            best = _sae.best_detectors(_sae.detection_scores(acts["A"], marks["A"][label]), 1)[0]
            f = best["feature"]
            measured = _sae.detection_scores(acts["B"][:, [f]], marks["B"][label])
            found[name][label] = {
                "feature": f,
                "selected_f1": best["f1"],
                **{k: float(v[0]) for k, v in measured.items()},
                "on": acts["B"][marks["B"][label], f],
                "off": acts["B"][~marks["B"][label], f],
            }
    base = {label: float(v.float().mean()) for label, v in marks["B"].items()}
    return {"found": found, "base_rates": base, "rows_b": halves["B"], "keep_b": keep["B"]}


def show_features(
    study: InterpretStudy,
    sae: Any,
    picks: dict[str, dict],
    rows: Tensor,
    window: tuple[int, int],
    special: list[int],
) -> dict[str, Any]:
    """Top contexts (`window` tokens before / after the peak; `special` tokens never
    count), dashboard (HTML) and cards (PNG) of the features of `sae` picked per label."""
    tok = study.tokenizer
    features = sorted({p["feature"] for p in picks.values()})
    stats = collect_features(
        study.model, sae, rows, features=features, k=8, window=window, max_contexts=None,
        exclude_special=special,
    )  # fmt: skip
    html = study.out / f"{study.name}_dashboard.html"
    write_dashboard(stats, html, tokenizer=tok)
    cards, texts, promoted = [], {}, {}
    for label, p in picks.items():
        f = p["feature"]
        contexts = [
            ([tok.decode([t]) if t != PAD else "" for t in e.tokens], e.acts)
            for e in stats.top_examples(f)
        ]
        texts[label] = ["".join(pieces) for pieces, _ in contexts[:4]]
        promoted[label] = [tok.decode([t]) for t, _ in stats.logit_effect(f)["promoted"][:6]]
        cards.append(
            {
                "title": f"feature {f} ({label}): AUC {p['auc']:.3f}, precision "
                f"{p['precision']:.2f}, recall {p['recall']:.2f}",
                "contexts": contexts,
                "on": p["on"],
                "off": p["off"],
            }
        )
    _sae.plot_feature_cards(cards, study.picture("cards"))
    top = {f: stats.top_examples(f)[0].max_act if stats.top_examples(f) else 0.0 for f in features}
    return {"html": html, "texts": texts, "promoted": promoted, "max_act": top}


def clamp_study(
    study: InterpretStudy,
    sae: Any,
    feature: int,
    max_act: float,
    prompts: list[list[int]],
    labels: dict[str, tuple[str, Labeller]],
) -> list[dict[str, Any]]:
    """Continue `prompts` clean, with `feature` ablated, and clamped to multiples of
    `max_act`; the labels' rates in the generated text (same prompts, same seed)."""
    args = study.args
    conditions: list[tuple[str, float | None]] = [("clean", None)]
    conditions += [("ablated" if c == 0 else f"{c:g} x max", c * max_act) for c in CLAMPS]
    out = []
    for label, value in conditions:
        with contextlib.ExitStack() as stack:
            if value is not None:
                stack.enter_context(clamp_features(study.model, sae, {feature: value}))
            measured = _sae.sample_label_rates(
                study.model, study.tokenizer, prompts, args.new_tokens, args.seed, labels
            )
        out.append({"condition": label, "value": value, **measured})
    return out


def run_analyses(
    study: InterpretStudy,
    hook: str,
    data_dir: Path,
    runs: Path,
    *,
    labels: dict[str, tuple[str, Labeller]],
    unit: str,
    cache_dtype: torch.dtype,
    prepend_bos: bool,
    window: tuple[int, int],
    prompt_tokens: int,
) -> dict[str, Any]:
    """Every step after the model: cache and train, evaluate, find and show the TopK SAE's
    features for `labels`, clamp its speaker feature; returns the numbers for the report.

    `unit`: what a token of the model is ("character" or "token"), for the report's
    wording; `prepend_bos`: every window starts with the BOS token (left out of the
    SAEs' data: a real model's first position carries a huge attention-sink activation);
    `window`: tokens shown before / after a feature's peak; `prompt_tokens`: the length
    of the clamping prompts."""
    args = study.args
    trained = cache_and_train(
        study, hook, data_dir, runs, cache_dtype=cache_dtype, prepend_bos=prepend_bos
    )
    study.timings["activation cache"] = trained["cache_seconds"]
    study.lap("SAE training")
    study.timings["SAE training"] -= trained["cache_seconds"]
    rows = heldout_rows(data_dir, trained["context"], args.heldout, prepend_bos)
    special = TokenWindows(data_dir, context_size=trained["context"]).special_ids
    table = evaluate_all(study, trained["saes"], rows, special)
    n_eval = len(rows)
    if args.feature_windows != args.heldout:  # the features need only the cut-off model
        rows = heldout_rows(data_dir, trained["context"], args.feature_windows, prepend_bos)
    _sae.plot_tradeoff(table, args.k, study.picture())
    study.lap("evaluation")
    features = find_features(study, trained["saes"], rows, labels, special)
    sae = trained["saes"]["topk"]
    picks = features["found"]["topk"]
    shown = show_features(study, sae, picks, features["rows_b"], window, special)
    study.lap("features")
    speaker = picks["speaker"]["feature"]
    prompts = features["rows_b"][: args.samples, :prompt_tokens].tolist()
    clamps = clamp_study(study, sae, speaker, shown["max_act"][speaker], prompts, labels)
    _sae.plot_clamping(clamps, [*labels, "upper"], study.picture("clamping"))
    study.lap("clamping")
    return {
        "hook": hook,
        "k": args.k,
        "unit": unit,
        "window": window,
        "labels": labels,
        "table": table,
        "trained": trained,
        "features": features,
        "shown": shown,
        "clamps": clamps,
        "speaker_feature": speaker,
        "n_rows": n_eval,
        "n_feature_rows": len(rows),
        "prompt_tokens": prompt_tokens,
    }
