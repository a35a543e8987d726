"""Training-step time with the C library's defaults vs freed memory kept in the process.

Usage::

    python bench/allocator.py [--steps 6] [--rounds 2] [--batch 64] [--json out.json]

Each measurement is a fresh Python process that builds the ``shakespeare-char`` preset
(6 layers, d_model 384, context 256, dropout 0), and runs ``--steps`` AdamW steps on a
fixed random batch, with or without `lmscope.allocator.keep_freed_memory` (the first
step, which grows the heap, is excluded). Modes alternate over ``--rounds``; reported:
the median step time, system (kernel) time and minor page faults per step, and the
ratio default / kept. What is measured is the kernel's cost of handing fresh pages to
a process that gave them back a moment earlier, which depends on the machine: large on
virtual machines whose free memory returns to the host.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODES = ("default", "kept")


def child(mode: str, steps: int, batch: int) -> list[dict[str, float]]:
    """Run in a fresh process: time `steps` training steps; per step time / sys / faults."""
    import torch

    from lmscope import build_model
    from lmscope.allocator import keep_freed_memory
    from lmscope.config import ModelConfig

    if mode == "kept" and not keep_freed_memory():
        raise SystemExit("the allocator cannot be tuned here (not glibc)")
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("shakespeare-char").replace(dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seq, vocab = model.cfg.max_seq_len, model.cfg.vocab_size
    x, y = torch.randint(0, vocab, (batch, seq)), torch.randint(0, vocab, (batch, seq))
    rows = []
    for _ in range(steps + 1):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        opt.step()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        rows.append(
            {
                "s": t1 - t0,
                "sys_s": r1.ru_stime - r0.ru_stime,
                "faults": float(r1.ru_minflt - r0.ru_minflt),
            }
        )
    return rows[1:]  # the first step grows the heap in both modes


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Alternate fresh processes per mode; print and return the medians and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch)))
        return None
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            cmd = [sys.executable, __file__, "--child", mode]
            cmd += ["--steps", str(args.steps), "--batch", str(args.batch)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[mode] += json.loads(out.strip().splitlines()[-1])
            print(f"round {r + 1}: {mode} done", flush=True)
    result: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "json"}}
    for mode in MODES:
        result[mode] = {k: statistics.median(row[k] for row in rows[mode]) for k in rows[mode][0]}
    result["default_over_kept"] = result["default"]["s"] / result["kept"]["s"]
    for mode in MODES:
        m = result[mode]
        print(f"{mode:8s} step {m['s']:.2f} s  sys {m['sys_s']:.2f} s  faults {m['faults']:.0f}")
    print(f"default / kept: {result['default_over_kept']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result | {"rows": rows}, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
