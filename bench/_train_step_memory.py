"""Peak memory of bench/train_step.py's training steps, each implementation in a fresh
process (``train_step.py --memory-child IMPL`` runs `memory_child`)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _rss import status_kib
from _train_step_models import build, model_config
from _train_step_steps import fixed_batch, make_step

#: The script whose ``--memory-child`` option runs `memory_child`.
SCRIPT = Path(__file__).resolve().with_name("train_step.py")


def memory_child(impl: str, quick: bool, batch: int, seq: int, steps: int) -> dict[str, Any]:
    """Peak RSS of `steps` fp32 steps of `impl` (run in a fresh process).

    The peak (VmHWM) is reset after building model, optimizer and batch (writing 5 to
    /proc/self/clear_refs), so import- and build-time peaks do not count; ``ru_maxrss``
    is no use here, since a child inherits its parent's high-water mark across fork/exec.
    """
    cfg = model_config(quick)
    model, call = build(impl, cfg)
    tokens, targets = fixed_batch(batch, seq, cfg.vocab_size)
    step = make_step(model, call, tokens, targets)
    base = status_kib("VmRSS") / 1024
    Path("/proc/self/clear_refs").write_text("5")
    peaks = []
    for _ in range(steps):
        step()
        peaks.append(status_kib("VmHWM") / 1024)
    return {
        "impl": impl,
        "base_rss_mb": base,
        "peak_rss_mb": peaks[-1],
        "training_peak_mb": peaks[-1] - base,
        "peak_after_each_step_mb": peaks,
        "steps": steps,
    }


def measure_memory(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run `memory_child` in a fresh interpreter (its own peak RSS) and parse its result."""
    cmd = [sys.executable, str(SCRIPT), "--memory-child", impl]
    cmd += ["--batch", str(args.batch), "--seq", str(args.seq)]
    cmd += ["--memory-steps", str(args.memory_steps)] + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if out.returncode != 0:
        return {"impl": impl, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])
