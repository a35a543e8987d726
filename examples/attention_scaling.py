"""Study (b): training with and without the 1/sqrt(d_k) attention scaling at d_head = 128.

Vaswani et al. divide QK^T by sqrt(d_k) so that, when query and key components have
unit variance, the scores keep unit variance instead of growing to sqrt(d_k) (about 11
at d_k = 128), which would push the softmax towards one-hot rows with vanishing
gradients. Whether that happens depends on how large q and k are, so the study trains
the same model (same seed, same data order) four times: scaled or unscaled, at GPT-2's
small initialisation (std 0.02) and at std 1/sqrt(d_model), where q and k components
start with about unit variance, as the argument assumes. It reports the loss curves and
the attention rows' entropy, largest weight and raw-score spread before and after.

Writes docs/studies/attention_scaling.md (table) and .png (curves)::

    python examples/attention_scaling.py            # about 2 minutes on a 2-core CPU
    python examples/attention_scaling.py --quick    # a few seconds, toy sizes
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    RunResult,
    Study,
    attention_stats,
    figure,
    fmt,
    markdown_table,
    open_study,
    run_script,
    save_figure,
    smooth,
    study_parser,
    write_report,
)
from lmscope.data import iter_eval_batches
from lmscope.presets import preset_dict

NAME = "attention_scaling"
SCALINGS = {"1/sqrt(d_head)": None, "none": "none"}  # label -> ModelConfig.attention_scale


def settings(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, train settings) at full or toy size."""
    d_model, block = (32, 32) if quick else (128, 64)
    # GPT-2's wiring with a single head per layer, so d_head = d_model = 128.
    model = {
        **preset_dict("gpt2-small"),
        "name": "gpt-one-head",
        "n_layers": 2,
        "d_model": d_model,
        "n_heads": 1,
        "max_seq_len": block,
        "dropout": 0.0,
    }
    train = {
        "batch_size": 8 if quick else 16,
        "block_size": block,
        "lr": 2e-3,
        "warmup_steps": 5 if quick else 50,
        "eval_every": 20 if quick else 100,  # quick: few evaluations (each draws loss.png)
        "eval_batches": 1 if quick else 10,
        "log_every": 5 if quick else 10,
    }
    return model, train


def inits(d_model: int) -> dict[str, float]:
    """Initialisation std by label: GPT-2's, and the one that gives unit-variance q, k."""
    return {"std 0.02": 0.02, f"std 1/sqrt({d_model})": 1 / math.sqrt(d_model)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as a table and a picture)."""
    parser = study_parser(__doc__.splitlines()[0], steps=400, quick_steps=20)
    args = parser.parse_args(argv)
    model_cfg, train_cfg = settings(args.quick)
    with open_study(NAME, __file__, args, argv) as study:
        x, _ = next(iter_eval_batches(study.data.split("val"), 16, train_cfg["block_size"], 1))
        rows = []
        for init_label, std in inits(model_cfg["d_model"]).items():
            for scale_label, scale in SCALINGS.items():
                cfg = {**model_cfg, "init_std": std, "attention_scale": scale}
                run = study.train(f"{init_label}, scale {scale_label}", cfg, **train_cfg)
                before = attention_stats(run.initial_model(study.device), x)
                after = attention_stats(run.model(study.device), x)
                rows.append((init_label, scale_label, run, before, after))
        plot(rows, args.out / f"{NAME}.png", model_cfg["d_model"])
        numbers = report(study, rows, model_cfg, train_cfg)
    return numbers


Row = tuple[str, str, RunResult, dict[str, Any], dict[str, Any]]  # init, scale, run, stats


def plot(rows: list[Row], path: Path, d_head: int) -> None:
    """Training loss (smoothed) and validation loss against step, every run on one axis."""
    fig, (left, right) = figure(ncols=2)
    colors = {"1/sqrt(d_head)": "tab:blue", "none": "tab:red"}
    for init_label, scale_label, run, _, _ in rows:
        style = "-" if init_label == "std 0.02" else "--"
        label = f"scale {scale_label}, {init_label}"
        steps, losses = zip(*run.train_curve, strict=True)
        color = colors[scale_label]
        left.plot(steps, smooth(losses, 5), style, color=color, label=label, linewidth=1.2)
        right.plot(*zip(*run.val_curve, strict=True), style, marker="o", color=color, label=label)
    left.set_title(f"training loss (moving average), d_head = {d_head}")
    right.set_title("validation loss")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats / char)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def report(
    study: Study, rows: list[Row], model_cfg: dict[str, Any], train_cfg: dict[str, Any]
) -> dict[str, Any]:
    """Write the markdown report; return the numbers it holds."""
    early = min(200, study.steps)
    loss_table = markdown_table(
        ["init", "scaling", f"val loss @ step {early}", "final val loss", "final train loss"],
        [
            (
                init,
                scale,
                fmt(dict(run.val_curve).get(early)),
                fmt(run.val_curve[-1][1]),
                fmt(run.final_train_loss()),
            )
            for init, scale, run, _, _ in rows
        ],
    )
    attn_table = markdown_table(
        [
            "init",
            "scaling",
            "score std (before → after)",
            "row entropy, nats (before → after)",
            "max weight (before → after)",
        ],
        [
            (
                init,
                scale,
                f"{fmt(b['score_std'], 2)} → {fmt(a['score_std'], 2)}",
                f"{fmt(b['entropy'], 2)} → {fmt(a['entropy'], 2)}",
                f"{fmt(b['max_weight'], 2)} → {fmt(a['max_weight'], 2)}",
            )
            for init, scale, _, b, a in rows
        ],
    )
    uniform = rows[0][3]["uniform_entropy"]
    d = model_cfg["d_model"]
    intro = (
        f"The same GPT ({model_cfg['n_layers']} layers, **one head of d_head = {d}** per "
        f"layer, d_model {d}, learned positions, context {model_cfg['max_seq_len']}) trained "
        f"with attention scores QK^T scaled by 1/sqrt({d}) (the default) or not scaled "
        "(`attention_scale='none'`): same seed, same batches, same learning-rate schedule. "
        "Two initialisations: GPT-2's std 0.02 (q and k components start with std about "
        f"{0.02 * math.sqrt(d):.2f}) and std 1/sqrt(d_model) (about 1, the premise of the "
        "1/sqrt(d_k) argument)."
    )
    sections = [
        "## Loss\n\n" + loss_table,
        "Final train loss is the mean of the last 5 logged steps (one batch each, logged "
        f"every {train_cfg['log_every']} steps).",
        "## Attention before and after training\n\n"
        "Over one validation batch (16 windows), averaged over layers, heads and query "
        "positions. Score std: spread of the raw (scaled) scores the softmax sees. Row "
        f"entropy: uniform causal rows would have {uniform:.2f} nats, one-hot rows 0.\n\n"
        + attn_table,
    ]
    title = f"Study (b): loss with and without 1/sqrt(d_k) at d_head = {d}"
    write_report(study, title, intro, sections)
    return {
        f"{init}, {scale}": {
            "final_val_loss": run.val_curve[-1][1],
            "final_train_loss": run.final_train_loss(),
            "before": before,
            "after": after,
        }
        for init, scale, run, before, after in rows
    }


if __name__ == "__main__":
    run_script(main)
