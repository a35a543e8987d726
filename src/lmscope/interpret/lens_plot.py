"""Drawing a lens: a layers x positions heatmap with the top token written in each cell."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.serialization import atomic_write

if TYPE_CHECKING:
    from lmscope.interpret.logit_lens import LensResult

#: Characters of a token shown in a cell (longer ones are cut with an ellipsis).
CELL_CHARS = 8


def _short(text: str, limit: int = CELL_CHARS) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_lens(result: LensResult, path: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG: one row per lens row (embeddings at the bottom), one column per
    position. Colour is the target's probability when the lens has a target, else the
    top-1 probability; each cell shows the top-1 token."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    with_target = result.target_probs is not None
    values = result.target_probs if with_target else result.top_probs[..., 0]
    assert values is not None
    n_rows, n_pos = values.shape
    fig, ax = plt.subplots(
        figsize=(min(2.0 + 0.95 * n_pos, 40), min(1.5 + 0.34 * n_rows, 40)), dpi=110
    )
    image = ax.imshow(
        values.numpy(), origin="lower", aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0
    )
    for r in range(n_rows):
        for p in range(n_pos):
            dark = float(values[r, p]) > 0.6
            ax.text(
                p,
                r,
                _short(result.top_tokens[r][p][0]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    ax.set_xticks(
        range(n_pos), [_short(t, 12) for t in result.input_tokens], rotation=45, ha="right"
    )
    ax.set_yticks(range(n_rows), result.labels)
    ax.set_xlabel("input token (position)")
    ax.set_ylabel("residual stream")
    what = f"P({result.target_token!r})" if with_target else "top-1 probability"
    fig.colorbar(image, ax=ax, label=what, fraction=0.04)
    ax.set_title(title or f"{result.method} ({result.norm} norm): {what}; cells: top-1 token")
    fig.tight_layout()
    out = Path(path)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
