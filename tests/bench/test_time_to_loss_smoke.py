"""Smoke test of the time-to-loss benchmark (bench/time_to_loss.py), lmscope side only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "time_to_loss.py"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def test_time_to_loss_reports_when_the_target_is_reached(tmp_path: Path) -> None:
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT * 300)
    out = tmp_path / "ttl.json"
    # A target above the untrained loss (ln 30 ~ 3.4) is met by the step-0 evaluation:
    # the run stops there, which exercises stopping, live log reading and the summary.
    command = [sys.executable, str(SCRIPT), "--quick", "--data", str(data), "--target", "6.0"]
    command += ["--recipes", "shakespeare-quick", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    summary = report["summary"]["shakespeare-quick"]
    assert summary["reached"] == "1/1" and summary["steps"] == [0]
    assert 0 < summary["median_wall_s"] < 300
    run = report["runs"]["shakespeare-quick"][0]
    assert run["evals"][0]["val_loss"] < 6.0 and "nanoGPT" not in report["summary"]
    assert "shakespeare-quick" in done.stdout
