"""What a run records: a JSONL metrics log and a loss-curve picture.

``metrics.jsonl`` holds one JSON object per line: training lines (``step``, ``loss``,
``lr``, ``tokens``, ``tokens_per_s``, ``mfu``...) and evaluation lines (``step``,
``val_loss``). On resume the log is cut back to the checkpoint's step, so a resumed run
leaves the same log as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmscope.serialization import atomic_write


class MetricsLog:
    """Append-only JSONL log of a run (written by the main process only)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (by a run that is being resumed)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.read() if line["step"] <= step]
        text = "".join(json.dumps(line) + "\n" for line in kept)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))

    def write(self, **fields: Any) -> None:
        """Append one line."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(fields) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        """Every line logged so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def plot_losses(lines: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Draw training and validation loss against step into `path` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    train = [(line["step"], line["loss"]) for line in lines if "loss" in line]
    val = [(line["step"], line["val_loss"]) for line in lines if "val_loss" in line]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
