"""Study (d): pre-norm against post-norm blocks at increasing depth.

Post-norm (the original Transformer, BERT) normalises after the residual sum,
x <- LN(x + f(x)); pre-norm (GPT-2, Llama) normalises only the branch input,
x <- x + f(LN(x)), which leaves the residual stream an identity path from the embedding
to the final norm. Post-norm is known to need learning-rate warm-up and to get harder to
train as depth grows (Xiong et al. 2020, "On Layer Normalization in the Transformer
Architecture"). The study trains the same GPT at each depth with either placement (same
learning rate, warm-up, seed and batches), reports the validation loss, and measures each
block's gradient norm at initialisation. It then trains the deepest post-norm model once
more with a long warm-up (`--long-warmup`, default half the run), the usual remedy.

Writes docs/studies/norm_placement.md (table) and .png (curves)::

    python examples/norm_placement.py            # about 4.5 minutes on a 2-core CPU
    python examples/norm_placement.py --quick    # a few seconds, toy sizes
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

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
from lmscope.data import get_batch
from lmscope.model.base import BaseTransformer
from lmscope.presets import preset_dict

NAME = "norm_placement"
PLACEMENTS = ("pre", "post")


def settings(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, train settings) at full or toy size (depth is set per run)."""
    d_model, block = (32, 16) if quick else (64, 64)
    # GPT-2's wiring (learned positions, LayerNorm, GELU); final_norm follows the placement
    # (a final LayerNorm for pre-norm, none for post-norm, whose last block ends in one).
    model = {
        **preset_dict("gpt2-small"),
        "name": "gpt-norm",
        "d_model": d_model,
        "n_heads": 4,
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


def block_grad_norms(model: BaseTransformer, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Gradient norm of each block's parameters for one batch's loss (the model unchanged)."""
    model.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    norms = []
    for block in model.blocks:
        grads = [p.grad.flatten() for p in block.parameters() if p.grad is not None]
        norms.append(float(torch.cat(grads).norm()))
    model.zero_grad(set_to_none=True)
    return norms


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as a table and a picture)."""
    parser = study_parser(__doc__.splitlines()[0], steps=450, quick_steps=20)
    parser.add_argument("--depths", type=int, nargs="+", default=None, help="blocks per model")
    parser.add_argument(
        "--long-warmup",
        type=int,
        default=None,
        help="warm-up steps of the extra deepest post-norm run (default: half the run; 0: skip)",
    )
    args = parser.parse_args(argv)
    depths = args.depths or ([1, 2] if args.quick else [2, 4, 8])
    model_cfg, train_cfg = settings(args.quick)
    with open_study(NAME, __file__, args, argv) as study:
        generator = torch.Generator().manual_seed(0)
        x, y = get_batch(study.data.split("train"), 16, train_cfg["block_size"], generator)
        warmup = train_cfg["warmup_steps"]
        plan = [(depth, placement, warmup) for depth in depths for placement in PLACEMENTS]
        long_warmup = study.steps // 2 if args.long_warmup is None else args.long_warmup
        if long_warmup > 0:
            plan.append((max(depths), "post", long_warmup))
        rows = []
        for depth, placement, steps in plan:
            cfg = {**model_cfg, "n_layers": depth, "norm_placement": placement}
            label = f"{placement}-norm, {depth} blocks, warm-up {steps}"
            run = study.train(label, cfg, **{**train_cfg, "warmup_steps": steps})
            norms = block_grad_norms(run.initial_model(study.device), x, y)
            rows.append((depth, placement, steps, run, norms))
        plot(rows, args.out / f"{NAME}.png")
        numbers = report(study, rows, model_cfg, train_cfg)
    return numbers


Row = tuple[int, str, int, RunResult, list[float]]  # depth, placement, warm-up steps, ...


def plot(rows: list[Row], path: Path) -> None:
    """Final validation loss by depth, every run's validation curve, gradients by block."""
    fig, (left, right, grads) = figure(ncols=3, width=5.0)
    colors = {"pre": "tab:blue", "post": "tab:orange"}
    usual = rows[0][2]  # the grid's warm-up (extra runs differ)
    for placement in PLACEMENTS:
        points = [
            (d, r.val_curve[-1][1]) for d, p, w, r, _ in rows if p == placement and w == usual
        ]
        if points:
            left.plot(*zip(*points, strict=True), "o-", color=colors[placement], label=placement)
    depths = sorted({row[0] for row in rows})
    widths = {depth: 0.8 + 0.5 * i for i, depth in enumerate(depths)}
    for depth, placement, warmup, run, _ in rows:
        label = f"{placement}, {depth} blocks" + ("" if warmup == usual else f", warm-up {warmup}")
        style = "-" if warmup == usual else ":"
        right.plot(
            *zip(*run.val_curve[1:], strict=True),  # step 0 (ln vocab) would flatten the rest
            style,
            color=colors[placement],
            linewidth=widths[depth],
            label=label,
        )
    left.set_title(f"final validation loss by depth (warm-up {usual} steps)")
    left.set_xlabel("blocks")
    left.set_xscale("log", base=2)
    left.set_xticks(depths, [str(d) for d in depths])
    right.set_title("validation loss during training (thicker = deeper)")
    right.set_xlabel("step")
    deepest = max(depths)
    for depth, placement, warmup, _, norms in rows:
        if depth == deepest and warmup == usual:
            blocks = range(len(norms))
            grads.plot(blocks, norms, "o-", color=colors[placement], label=f"{placement}-norm")
    grads.set_yscale("log")
    grads.set_xticks(range(deepest))
    grads.set_title(f"gradient norm by block at initialisation ({deepest} blocks)")
    grads.set_xlabel("block (0 = nearest the embedding)")
    grads.set_ylabel("norm of the block's parameter gradients")
    grads.grid(alpha=0.3)
    grads.legend(fontsize=7)
    for ax in (left, right):
        ax.set_ylabel("cross-entropy (nats / char)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def report(
    study: Study, rows: list[Row], model_cfg: dict[str, Any], train_cfg: dict[str, Any]
) -> dict[str, Any]:
    """Write the markdown report; return the numbers it holds."""
    early = min(100, study.steps)
    table = markdown_table(
        [
            "blocks",
            "placement",
            "warm-up steps",
            f"val loss @ step {early}",
            "final val loss",
            "final train loss",
            "grad norm at init: first block",
            "middle blocks (median)",
            "last block",
        ],
        [
            (
                depth,
                placement,
                warmup,
                fmt(dict(run.val_curve).get(early)),
                fmt(run.val_curve[-1][1]),
                fmt(run.final_train_loss()),
                fmt(norms[0], 3),
                fmt(statistics.median(norms[1:-1]), 3) if len(norms) > 2 else "-",
                fmt(norms[-1], 3),
            )
            for depth, placement, warmup, run, norms in rows
        ],
    )
    intro = (
        f"The same GPT (d_model {model_cfg['d_model']}, {model_cfg['n_heads']} heads, "
        f"learned positions, LayerNorm, GELU, context {train_cfg['block_size']}) at several "
        "depths, with **pre-norm** `x + f(LN(x))` (and a final LayerNorm) or **post-norm** "
        "`LN(x + f(x))` blocks. Every run: AdamW, peak learning rate "
        f"{train_cfg['lr']} reached after a linear warm-up ({train_cfg['warmup_steps']} steps "
        f"unless the table says otherwise), cosine decay over {study.steps} steps, gradient "
        "clipping at 1.0, the same seed and batches."
    )
    sections = [
        "## Loss and gradients by depth\n\n" + table,
        "Final train loss is the mean of the last 5 logged steps. Gradient norms: the norm "
        "of each block's parameter gradients for one training batch at initialisation "
        "(before any step, the same batch for every run); block 0 is nearest the embedding, "
        "the last block nearest the output. The third panel of the picture shows every "
        "block of the deepest pair.",
    ]
    write_report(study, "Study (d): pre-norm vs post-norm at increasing depth", intro, sections)
    return {
        f"{placement}-{depth}" + ("" if warmup == rows[0][2] else f"-warmup-{warmup}"): {
            "final_val_loss": run.val_curve[-1][1],
            "final_train_loss": run.final_train_loss(),
            "grad_norms_at_init": norms,
        }
        for depth, placement, warmup, run, norms in rows
    }


if __name__ == "__main__":
    run_script(main)
