"""The device's peak matmul throughput, for model-FLOPs-utilisation (MFU) estimates.

MFU = achieved model FLOP/s / the device's peak FLOP/s (PaLM, Chowdhery et al. 2022).
GPU peaks are the vendors' dense figures; a CPU's is measured once per process with a
square matmul, since it depends on the instruction set, cores and BLAS in use.
"""

from __future__ import annotations

import functools
import time

import torch

#: Dense peak FLOP/s by GPU name fragment: (bf16 / fp16 tensor cores, fp32 without TF32).
GPU_PEAKS = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "L4": (121e12, 30.3e12),
    "A10": (125e12, 31.2e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}


@functools.cache
def _measured_cpu_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up: thread pool, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of `device` for matmuls in `dtype` (None when unknown)."""
    if device.type == "cpu":
        return _measured_cpu_peak(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, (half, full) in GPU_PEAKS.items():
            if fragment in name:
                return half if dtype in (torch.bfloat16, torch.float16) else full
    return None
