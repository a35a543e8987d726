"""Peak memory of bench/run_with_cache.py's variants: measured one variant at a time, in
a fresh process each (``run_with_cache.py --child VARIANT`` runs `child_main`), or with
``--quick`` in the benchmark's own process."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _load_children import measure_in_child
from _rss import rss_bytes, vm_hwm_bytes
from _run_with_cache_models import (
    cached_bytes,
    load_lmscope,
    load_tl,
    make_tokens,
    names,
    variant_fns,
)

#: The script whose ``--child`` option runs `child_main`.
SCRIPT = Path(__file__).resolve().with_name("run_with_cache.py")


def release_free_heap() -> None:
    """glibc's ``malloc_trim(0)``: return free heap memory to the kernel (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fns: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Peak RSS each variant needs above what is resident before it, run one at a time."""
    report: dict[str, Any] = {}
    for name, fn in fns.items():
        fn()  # warm-up: one-off allocations (kernels, thread pools) are not the call's
        gc.collect()
        # Hand the warm-up's freed heap pages back to the kernel: otherwise the measured
        # call reuses pages that are already resident, and its peak looks smaller.
        release_free_heap()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = rss_bytes()
        result = fn()
        peak = vm_hwm_bytes()
        report[name] = {
            "rss_before": before,
            "peak_over_before": peak - before,
            "cached_bytes": cached_bytes(result),
        }
        del result
        gc.collect()
    return report


def child_main(directory: Path, batch: int, seq: int, which: list[str]) -> None:
    """In a fresh process: load the model(s), then `peak_memory` of the variants in `which`."""
    ours = load_lmscope(directory)
    filters, vocab = names(ours), ours.cfg.vocab_size
    if not any(w.startswith("lmscope") for w in which):
        del ours  # only its hook names were needed
        ours = None
    tl = load_tl(directory) if any(w.startswith("tl") for w in which) else None
    gc.collect()
    fns = variant_fns(which, make_tokens(vocab, batch, seq), ours, tl, None, filters)
    print(json.dumps(peak_memory(fns)))


def measure_memory(
    args: argparse.Namespace, which: Sequence[str], log: Callable[[str], None]
) -> dict[str, Any]:
    """Each variant in its own fresh process, the variants one after another."""
    report: dict[str, Any] = {}
    for name in which:
        child_args = ["--child", name, "--dir", str(args.dir)]
        child_args += ["--batch", str(args.batch), "--seq", str(args.seq)]
        report |= measure_in_child(SCRIPT, child_args)
        log_memory(name, report[name], log)
    return report


def log_memory(name: str, row: dict[str, Any], log: Callable[[str], None]) -> None:
    """Log one variant's peak (above the RSS before the call) and cached bytes, in MiB."""
    log(
        f"  {name}: peak {row['peak_over_before'] / 2**20:.1f} MiB above what was resident "
        f"before (the loaded model), cache {row['cached_bytes'] / 2**20:.1f} MiB"
    )
