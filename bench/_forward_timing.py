"""The machine a benchmark runs on, and round-robin timing (bench/forward.py's helpers;
the other bench scripts reach them through bench/forward.py)."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


# --- machine ---------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model, vector extensions, cores, library versions and threads, as measured."""
    model, flags = platform.processor() or "unknown", set[str]()
    ident: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() in ("cpu family", "model") and key.strip() not in ident:
            ident[key.strip()] = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    import transformers  # imported here: only needed for the version

    return {
        "cpu": model,
        "cpu_family_model": f"{ident.get('cpu family', '?')}/{ident.get('model', '?')}",
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        # Whether torch sends bf16 matmuls to oneDNN; if not, ATen's slow fallback runs.
        "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_start": os.getloadavg()[0],
    }


# --- timing ----------------------------------------------------------------------------
def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    usage: dict[str, list[dict[str, float]]] | None = None,
    hold_results: bool = False,
) -> dict[str, list[float]]:
    """Seconds per call of each function, run round-robin for `repeats` rounds.

    The round's first function rotates, so no variant always follows the same one
    (allocator state and cache contents left behind by the previous call differ).
    With `usage`, each timed call's kernel seconds and minor page faults (the cost of
    fresh memory, ``getrusage``) are appended there too, per function name; the call's
    result is dropped inside the measured span, so freeing it counts to the call.
    With `hold_results`, each function's result is kept until its next call, as a loop
    that rebinds its variable (``logits, cache = f()``) keeps it: the new result is made
    while the old one lives, and freeing the old one counts to the new call.
    """
    names = list(fns)
    held: dict[str, object] = {}

    def call(name: str) -> None:
        result = fns[name]()  # freed on return unless held
        if hold_results:
            held[name] = result  # ...and then the one it replaces is freed here

    for _ in range(warmup):
        for name in names:
            call(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            call(name)
            times[name].append(time.perf_counter() - start)
            if usage is not None:
                after = resource.getrusage(resource.RUSAGE_SELF)
                usage.setdefault(name, []).append(
                    {
                        "sys_s": after.ru_stime - before.ru_stime,
                        "minor_faults": after.ru_minflt - before.ru_minflt,
                    }
                )
    return times


def matmul_gflops(n: int, dtype: torch.dtype, layout: str, repeats: int) -> float:
    """Median GFLOP/s of an n x n ``torch.mm``; `layout` 'nn', 'nt' or 'tn' says which
    operand is a transposed view (``nt`` is ``x @ W.T``, what ``nn.Linear`` does)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    lhs = a.t() if layout[0] == "t" else a
    rhs = b.t() if layout[1] == "t" else b
    times = interleaved({"mm": lambda: torch.mm(lhs, rhs)}, repeats)["mm"]
    return 2 * n**3 / statistics.median(times) / 1e9
