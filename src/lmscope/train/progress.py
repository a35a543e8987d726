"""The live view of a run: a rich progress bar with loss, val loss, tokens/s, lr and MFU."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressDisplay:
    """Context manager; call it with ``(trainer, tokens_per_s, mfu, lr)`` after each log."""

    def __init__(self, total_steps: int | None, start: int, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start, metrics="")

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def __call__(self, trainer: Any, tokens_per_s: float, mfu: float | None, lr: float) -> None:
        parts = [f"loss {trainer.last_loss:.4f}"]
        if trainer.last_val is not None:
            parts.append(f"val {trainer.last_val:.4f}")
        parts.append(f"{tokens_per_s / 1000:.1f}k tok/s")
        parts.append(f"lr {lr:.1e}")
        if mfu is not None:
            parts.append(f"mfu {100 * mfu:.0f}%")
        self.progress.update(self.task, completed=trainer.step, metrics=" | ".join(parts))
