"""Drawing a direct logit attribution: ranked bars, and a layers x heads heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.serialization import atomic_write

if TYPE_CHECKING:
    from lmscope.interpret.attribution import AttributionResult


def plot_attribution(
    result: AttributionResult, path: str | Path, *, top: int = 20, title: str | None = None
) -> Path:
    """Write a PNG: the `top` components by |attribution| as horizontal bars (positive
    pushes towards the target), beside a layers x heads heatmap for head attributions."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    heads = result.granularity == "heads"
    rows = result.top(top, by="abs")[::-1]  # largest at the top of the chart
    fig, axes = plt.subplots(
        1,
        2 if heads else 1,
        figsize=(13 if heads else 7, max(3.0, 0.28 * len(rows) + 1.5)),
        dpi=110,
        squeeze=False,
    )
    bars = axes[0, 0]
    values = [v for _, v in rows]
    bars.barh(
        range(len(rows)),
        values,
        color=["tab:blue" if v >= 0 else "tab:red" for v in values],
    )
    bars.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    bars.axvline(0.0, color="black", linewidth=0.8)
    what = "logit difference" if result.baseline_id is not None else "logit"
    bars.set_xlabel(f"direct contribution to the {what}")
    bars.grid(axis="x", alpha=0.3)
    if heads:
        grid = result.head_matrix()
        bound = float(grid.abs().max()) or 1.0
        ax = axes[0, 1]
        image = ax.imshow(
            grid.numpy(), origin="lower", aspect="auto", cmap="RdBu", vmin=-bound, vmax=bound
        )
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(result.n_heads))
        ax.set_yticks(range(result.n_layers))
        fig.colorbar(image, ax=ax, label=what)
        ax.set_title("heads")
    target = repr(result.target_token)
    if result.baseline_id is not None:
        target += f" - {result.baseline_token!r}"
    fig.suptitle(
        title
        or f"direct logit attribution of {target} at position {result.position} "
        f"(sum {result.total:.3f} = model {result.logit:.3f})",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(path)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
