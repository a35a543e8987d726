"""Study (c): positional schemes side by side, and which of them extrapolate to 2x context.

Copies of one small GPT differ only in `positional`: none, sinusoidal, learned, relative
(Shaw, distances clipped at 16), RoPE and ALiBi; plus sinusoidal with the token
embeddings multiplied by sqrt(d_model), as Vaswani et al. do (without it the fixed
unit-amplitude sinusoids dwarf GPT-2-initialised token embeddings). Each trains on windows of T
characters with room for 2T positions (max_seq_len = 2T), then is evaluated on held-out
windows of 2T characters. In a causal model position p of a 2T window sees exactly the
p + 1 characters it would see in a shorter window, so the mean loss over positions < T is
the loss at the trained context and positions T..2T-1 show what happens beyond it.
Learned positions past T were never trained (that is the point).

Writes docs/studies/positional_schemes.md (table) and .png (curves)::

    python examples/positional_schemes.py            # about 4 minutes on a 2-core CPU
    python examples/positional_schemes.py --quick    # a few seconds, toy sizes
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    RunResult,
    Study,
    figure,
    fmt,
    markdown_table,
    open_study,
    per_position_loss,
    run_script,
    save_figure,
    smooth,
    study_parser,
    write_report,
)
from lmscope.presets import preset_dict

NAME = "positional_schemes"
SCHEMES = ("none", "sinusoidal", "sinusoidal-scaled", "learned", "relative", "rope", "alibi")


def variant(scheme: str, d_model: int) -> dict[str, Any]:
    """The model settings of one compared scheme."""
    if scheme == "sinusoidal-scaled":  # Vaswani et al. 3.4: embeddings times sqrt(d_model)
        return {"positional": "sinusoidal", "embed_scale": math.sqrt(d_model)}
    return {"positional": scheme}


def settings(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, train settings) at full or toy size; max_seq_len is twice the block."""
    d_model, block = (32, 16) if quick else (64, 64)
    # GPT-2's wiring (pre-norm LayerNorm, GELU); only the positional scheme changes.
    model = {
        **preset_dict("gpt2-small"),
        "name": "gpt-positions",
        "n_layers": 2,
        "d_model": d_model,
        "n_heads": 4,
        "max_seq_len": 2 * block,
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as a table and a picture)."""
    parser = study_parser(__doc__.splitlines()[0], steps=700, quick_steps=20)
    parser.add_argument(
        "--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES, help="schemes to compare"
    )
    args = parser.parse_args(argv)
    model_cfg, train_cfg = settings(args.quick)
    with open_study(NAME, __file__, args, argv) as study:
        block = train_cfg["block_size"]
        n_windows = 32 if args.quick else 256
        rows = []
        for scheme in args.schemes:
            cfg = {**model_cfg, **variant(scheme, model_cfg["d_model"])}
            run = study.train(scheme, cfg, **train_cfg)
            model = run.model(study.device)
            curve = per_position_loss(model, study.data.split("val"), 2 * block, n_windows)
            rows.append((scheme, run, curve.tolist()))
        plot(rows, args.out / f"{NAME}.png", block)
        numbers = report(study, rows, model_cfg, block, n_windows)
    return numbers


Row = tuple[str, RunResult, list[float]]


def plot(rows: list[Row], path: Path, block: int) -> None:
    """Validation loss against step, and loss against position over 2T-long windows."""
    fig, (left, right) = figure(ncols=2)
    for scheme, run, curve in rows:
        left.plot(*zip(*run.val_curve, strict=True), "o-", label=scheme, markersize=3)
        # Single positions are noisy (one character each per window): average 4 of them.
        right.plot(range(len(curve)), smooth(curve, 4), label=scheme, linewidth=1.2)
    left.set_title(f"validation loss during training (context T = {block})")
    left.set_xlabel("step")
    right.axvline(block - 0.5, color="grey", linestyle=":", label="trained context T")
    right.set_title("loss at each position of 2T-long held-out windows")
    right.set_xlabel("position in window (0 = first)")
    lows = [min(curve[block // 4 :]) for _, _, curve in rows]
    right.set_ylim(min(lows) - 0.2, max(lows) + 2.0)  # the first characters are off scale
    for ax in (left, right):
        ax.set_ylabel("cross-entropy (nats / char)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def report(
    study: Study, rows: list[Row], model_cfg: dict[str, Any], block: int, n_windows: int
) -> dict[str, Any]:
    """Write the markdown report; return the numbers it holds."""
    numbers: dict[str, Any] = {}
    table_rows = []
    for scheme, run, curve in rows:
        at_t = sum(curve[:block]) / block
        at_2t = sum(curve) / len(curve)
        beyond = sum(curve[block:]) / block
        # Positions just inside and just outside T, where context lengths are comparable.
        quarter = block // 4
        inside = sum(curve[block - quarter : block]) / quarter
        outside = sum(curve[block : block + quarter]) / quarter
        numbers[scheme] = {
            "val_loss_at_T": at_t,
            "val_loss_at_2T": at_2t,
            "loss_beyond_T": beyond,
            "last_quarter_inside": inside,
            "first_quarter_beyond": outside,
            "trainer_val_loss": run.val_curve[-1][1],
        }
        table_rows.append(
            (
                scheme,
                fmt(at_t),
                fmt(at_2t),
                fmt(at_2t - at_t, 3),
                fmt(inside),
                fmt(beyond),
                fmt(beyond - inside, 3),
            )
        )
    table = markdown_table(
        [
            "positional",
            f"val loss @ T={block}",
            f"val loss @ 2T={2 * block}",
            "2T - T",
            f"positions {block - block // 4}..{block - 1}",
            f"positions {block}..{2 * block - 1}",
            "beyond - inside",
        ],
        table_rows,
    )
    intro = (
        f"One GPT ({model_cfg['n_layers']} layers, d_model {model_cfg['d_model']}, "
        f"{model_cfg['n_heads']} heads, pre-norm, GELU) per positional scheme, trained "
        f"on windows of **T = {block}** characters (max_seq_len {2 * block}), same seed and "
        f"batches; evaluated on {n_windows} held-out windows of **2T = {2 * block}**."
    )
    sections = [
        "## Loss at the trained context and at twice it\n\n" + table,
        "`sinusoidal-scaled`: sinusoidal with token embeddings multiplied by "
        f"sqrt(d_model) = {math.sqrt(model_cfg['d_model']):.0f} (`embed_scale`), as in the "
        "original Transformer.",
        f"`val loss @ T`: mean over positions 0..{block - 1} (what training saw); `@ 2T`: "
        f"mean over all {2 * block} positions. The last two columns compare the final "
        "quarter inside the trained context with the positions past it: a scheme that "
        "extrapolates keeps (or improves) its loss past T; one that does not gets worse.",
    ]
    write_report(
        study, "Study (c): positional schemes, and extrapolation to 2x context", intro, sections
    )
    return numbers


if __name__ == "__main__":
    run_script(main)
