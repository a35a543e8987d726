"""`PatchingResult`: a grid of patching effects, with its ranking, JSON and heatmap.

Exact activation patching, attribution patching and path-patching sweeps all return one:
``values`` indexed by ``axes`` (``("layer", "position")``, ``("layer", "head")`` or
``("layer", "head", "position")``), rows for ``layers``. Normalised values read the same
in every direction: 0 is the corrupted run's metric, 1 the clean run's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.interpret.tokens import token_label


@dataclass
class PatchingResult:
    """A grid of metric values after patching, one cell per patched site.

    - `values`: the metric after each patch (normalised: 0 = corrupted, 1 = clean).
    - `axes`: what each dimension of `values` indexes; ``layer`` rows are `layers`.
    - `activation`: what was patched (``resid_pre``, ``z``, ``path->v`` ...).
    - `method`: ``exact``, ``attribution`` or ``path``.
    - `direction`: ``denoise`` (the run was corrupted, clean values patched in) or
      ``noise`` (the run was clean, corrupted values patched in).
    - `clean_metric`, `corrupted_metric`: the raw metric on the unpatched runs.
    - `labels`: one label per position (``clean/corrupted`` tokens where they differ).
    """

    values: Tensor
    axes: tuple[str, ...]
    activation: str
    method: str
    direction: str
    normalized: bool
    clean_metric: float
    corrupted_metric: float
    layers: list[int]
    labels: list[str] | None = None

    @property
    def baseline(self) -> float:
        """The metric of the unpatched run (the corrupted run when denoising)."""
        corrupted, clean = (
            (0.0, 1.0)
            if self.normalized
            else (
                self.corrupted_metric,
                self.clean_metric,
            )
        )
        return corrupted if self.direction == "denoise" else clean

    @property
    def effect(self) -> Tensor:
        """How much each patch moves the metric, signed so that positive = the site
        carries the clean behaviour: ``values - baseline`` when denoising, ``baseline -
        values`` when noising."""
        diff = self.values - self.baseline
        return diff if self.direction == "denoise" else -diff

    def top(self, n: int = 10) -> list[tuple[dict[str, int | str], float]]:
        """The `n` cells with the largest absolute `effect`: ``({axis: index}, value)``."""
        flat = self.effect.flatten()
        order = flat.abs().argsort(descending=True)[:n]
        return [(self.cell(int(i)), float(self.values.flatten()[i])) for i in order]

    def cell(self, flat_index: int) -> dict[str, int | str]:
        """The named coordinates of a flat index into `values` (real layer numbers)."""
        index = torch.unravel_index(torch.tensor(flat_index), self.values.shape)
        named: dict[str, int | str] = {}
        for axis, i in zip(self.axes, index, strict=True):
            named[axis] = self.layers[int(i)] if axis == "layer" else int(i)
            if axis == "position" and self.labels is not None:
                named["token"] = self.labels[int(i)]
        return named

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        """Everything as JSON-ready data (NaN as None), with the `top` cells."""
        return {
            "activation": self.activation,
            "method": self.method,
            "direction": self.direction,
            "normalized": self.normalized,
            "axes": list(self.axes),
            "layers": self.layers,
            "labels": self.labels,
            "clean_metric": self.clean_metric,
            "corrupted_metric": self.corrupted_metric,
            "values": _json(self.values.tolist()),
            "top": [{**cell, "value": _json(v)} for cell, v in self.top(top)],
        }

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """A heatmap of `values` (PNG at `path`), token labels on the position axis."""
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt

        from lmscope.serialization import atomic_write

        grid, rows, cols, xlabel = self.matrix()
        n_rows, n_cols = grid.shape
        fig, ax = plt.subplots(
            figsize=(min(3.5 + 0.55 * n_cols, 16.0), min(max(3.4, 2.0 + 0.28 * n_rows), 14.0))
        )
        # Diverging colours centred on the unpatched run, so both signs of effect show.
        span = float((grid - self.baseline).abs().max()) or 1.0
        image = ax.imshow(
            grid.numpy(),
            cmap="RdBu_r",
            vmin=self.baseline - span,
            vmax=self.baseline + span,
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_xticks(
            range(n_cols),
            cols,
            rotation=60 if xlabel == "position" else 0,
            ha="right" if xlabel == "position" else "center",
            fontsize=8,
        )
        step = max(1, n_rows // 40)
        ax.set_yticks(range(0, n_rows, step), rows[::step], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(" x ".join(a for a in self.axes if a != xlabel))
        what = "0 = corrupted, 1 = clean" if self.normalized else "metric"
        fig.colorbar(image, ax=ax, label=what, shrink=0.85)
        ax.set_title(title or f"{self.method} patching of {self.activation} ({self.direction})")
        fig.tight_layout()
        target = Path(path)
        atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        return target

    def matrix(self) -> tuple[Tensor, list[str], list[str], str]:
        """`values` as a 2-D grid (rows: layers, or layer x head) with row and column
        labels and the column axis' name (for plots and tables)."""
        values = self.values.detach().float().cpu()
        if self.axes == ("layer", "head", "position"):
            n_heads = values.shape[1]
            rows = [f"L{layer}H{h}" for layer in self.layers for h in range(n_heads)]
            values = values.reshape(-1, values.shape[-1])
        elif len(self.axes) == 1:
            values, rows = values[:, None], [str(layer) for layer in self.layers]
        else:
            rows = [str(layer) for layer in self.layers]
        xlabel = self.axes[-1] if len(self.axes) > 1 else "all positions"
        if xlabel == "position":
            n = values.shape[1]
            cols = self.labels if self.labels is not None else [str(i) for i in range(n)]
            cols = [f"{i}: {label}" for i, label in enumerate(cols)] if self.labels else cols
        else:
            cols = [str(i) for i in range(values.shape[1])] if len(self.axes) > 1 else [""]
        return values, rows, cols, xlabel


def _json(value: Any) -> Any:
    """Nested floats with NaN/inf as None (JSON has no NaN)."""
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def position_labels(clean: Tensor, corrupted: Tensor, tokenizer: Any | None) -> list[str] | None:
    """Labels of the first sequence's positions: the clean token, ``clean/corrupted`` where
    the two differ (None without a tokenizer)."""
    if tokenizer is None:
        return None
    pairs = zip(clean[0].tolist(), corrupted[0].tolist(), strict=True)
    return [
        token_label(tokenizer, a) + ("" if a == b else "/" + token_label(tokenizer, b))
        for a, b in pairs
    ]
