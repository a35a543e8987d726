"""What SAE training reports: a JSONL line per SAE every few steps and a live progress bar.

Each line of ``metrics.jsonl`` holds ``step``, ``sae`` (its name), ``tokens``, the loss
and its parts (``mse``, ``sparsity_loss``, ``aux_loss``), ``l0``, ``fvu``,
``dead_fraction`` (not fired for ``dead_after_tokens``), ``dense_fraction`` (firing on
more than 10% of the activations since the last line), ``lr``, ``sparsity_scale``,
``acts_per_s`` and the variant's own numbers (``threshold``, ``aux_k``...). The values
are those of the step the line is written at.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lmscope.sae import metrics
from lmscope.sae.base import LossOutput


def metrics_line(
    out: LossOutput,
    tracker: metrics.FiringTracker,
    dead_after: int,
    **fields: Any,
) -> dict[str, Any]:
    """One metrics line from a step's loss output and the SAE's firing statistics."""
    return {
        **fields,
        "loss": float(out.total),
        "mse": float(out.mse),
        "sparsity_loss": float(out.sparsity),
        "aux_loss": float(out.aux),
        "l0": float(out.l0),
        "fvu": float(metrics.fvu(out.reconstruction, out.target)),
        "dead_fraction": float(tracker.dead_mask(dead_after).float().mean()),
        "dense_fraction": metrics.dense_fraction(tracker.density()),
        **{name: float(value) for name, value in out.metrics.items()},
    }


def short_summary(name: str, line: dict[str, Any]) -> str:
    """``name L0 32.0 FVU 0.123 dead 1%`` for the progress bar."""
    text = f"L0 {line['l0']:.1f} FVU {line['fvu']:.3f} dead {100 * line['dead_fraction']:.0f}%"
    return f"{name} {text}" if name else text


class ProgressView:
    """A rich progress bar (or nothing, when disabled); `update` after each log."""

    def __init__(self, enabled: bool, total: int | None, start: int, console: Console | None):
        self.progress: Progress | None = None
        if enabled:
            self.progress = Progress(
                TextColumn("[bold]sae[/]"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=console,
            )
            self.task = self.progress.add_task("sae", total=total, completed=start, metrics="")

    def context(self) -> AbstractContextManager[Any]:
        """Shows the bar for the duration of a ``with`` block."""
        return self.progress if self.progress is not None else nullcontext()

    def update(self, step: int, total: int | None, text: str) -> None:
        """Move the bar to `step` with `text` beside it."""
        if self.progress is not None:
            self.progress.update(self.task, completed=step, total=total, metrics=text)
