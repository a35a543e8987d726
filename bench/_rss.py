"""The process's resident memory, from /proc/self/status and ``getrusage`` (Linux only).

Standard library only: bench/load.py imports it before a child's baseline RSS is taken.
"""

from __future__ import annotations

import resource
from pathlib import Path


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now; VmHWM: its peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # the file gives kB
    raise RuntimeError(f"/proc/self/status has no {field} (not Linux?)")


def rss_bytes() -> int:
    """The process's resident set size now (``VmRSS``), in bytes."""
    return status_kib("VmRSS") * 1024


def vm_hwm_bytes() -> int:
    """Peak resident set size since the last reset (``VmHWM``), in bytes."""
    return status_kib("VmHWM") * 1024


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``, KiB on Linux), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
