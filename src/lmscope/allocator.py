"""Keeping freed memory in the process, so big tensors stop paying for fresh pages.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc gives a large block
(above its mmap threshold, 128 KiB to 32 MiB, adjusted as it goes) its own ``mmap`` and
returns it to the kernel on free, and it trims the top of its heap once more than a few
tens of MiB are free there. The next forward pass then asks the kernel for the same
memory again, and every fresh 4 KiB page costs a page fault that zero-fills it. On a
bare machine that is a few percent; in a virtual machine whose free memory goes back to
the host (this project's CI and development machines) it was measured at ~5 us per
page: ~25% of a CPU training step, and most of the extra cost of caching every
activation of a forward pass (``run_with_cache``, 1.9 GB for GPT-2 small at 8 x 256).

`keep_freed_memory` tells glibc to keep freed memory for reuse instead (what jemalloc
and tcmalloc do, and what PyTorch's CPU performance guide recommends them for). The
price is that the process's resident size stays at its high-water mark until
`release_freed_memory` (or leaving the context) hands the free part back. Long jobs
whose peak repeats every step (training, a loop of analyses) gain; a one-off call does
not. It is process-wide, applies to allocations made while it is on, and does nothing
(returns False) where the C library is not glibc.

`hold_freed_memory` is the counted form that `run_with_cache` uses on CPU: memory is
kept while any hold is open (a call running, or a CPU cache it returned still alive)
and released when the last one ends. A loop that rebinds its cache
(``logits, cache = model.run_with_cache(batch)``) keeps one cache alive across calls,
so each call reuses the previous cache's memory, and dropping every cache hands the
memory back. Nothing changes for a process that keeps freed memory itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: While kept: blocks up to 1 GiB come from the heap (so they are reused), and the heap
#: is never trimmed on free.
_KEEP_MMAP_THRESHOLD = 1 << 30
_KEEP_TRIM_THRESHOLD = (1 << 31) - 1
#: On release: where glibc's own dynamic thresholds settle in a warm process (32 MiB,
#: trim at twice that); they stay fixed, since glibc stops adjusting once they are set.
_RELEASED_MMAP_THRESHOLD = 32 << 20
_RELEASED_TRIM_THRESHOLD = 64 << 20

_kept = False
#: Open holds (`hold_freed_memory`), and whether they turned keeping on (so the last
#: one to end turns it off again; an explicit `keep_freed_memory` is left alone).
_holds = 0
_kept_by_holds = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None (musl, macOS, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def allocator_tunable() -> bool:
    """Whether this process's allocator can be told to keep freed memory (glibc)."""
    return _glibc() is not None


def keeping_freed_memory() -> bool:
    """Whether `keep_freed_memory` is currently in effect."""
    return _kept


def keep_freed_memory() -> bool:
    """From now on, keep freed memory in the process for reuse; False where unsupported."""
    global _kept_by_holds
    _kept_by_holds = False  # the caller owns it now: ending the holds leaves it on
    return _keep()


def _keep() -> bool:
    """Set glibc's thresholds so that freed memory stays in the process."""
    global _kept
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_MMAP_THRESHOLD) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD) == 1 and ok
    _kept = ok
    return ok


def release_freed_memory() -> bool:
    """Go back to glibc's thresholds and hand the free part of the heap to the kernel."""
    global _kept, _kept_by_holds
    _kept_by_holds = False
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, _RELEASED_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _RELEASED_TRIM_THRESHOLD)
    libc.malloc_trim(0)
    _kept = False
    return True


@contextmanager
def kept_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """`keep_freed_memory` for a block; on exit, release (unless it was already on).

    Yields whether memory is being kept. Nested uses and a process that called
    `keep_freed_memory` itself are left as they were. Memory kept only for open holds
    (a live cache) is taken over for the block and given back to the holds after it.
    """
    global _kept_by_holds
    if not enabled or (_kept and not _kept_by_holds):
        yield _kept
        return
    applied = keep_freed_memory()
    try:
        yield applied
    finally:
        if applied and _holds:
            _kept_by_holds = True  # the last hold to end releases
        elif applied:
            release_freed_memory()


def hold_freed_memory() -> Callable[[], None]:
    """Keep freed memory until the returned function is called (once; later calls do
    nothing). Holds are counted: memory is released when the last open hold ends, unless
    it was being kept before the first one (`keep_freed_memory`, a trainer)."""
    global _holds, _kept_by_holds
    if _holds == 0 and not _kept:
        _kept_by_holds = _keep()
    _holds += 1
    ended = False

    def end() -> None:
        global _holds
        nonlocal ended
        if ended:
            return
        ended = True
        _holds -= 1
        if _holds == 0 and _kept_by_holds:
            release_freed_memory()

    return end


def open_holds() -> int:
    """How many `hold_freed_memory` holds are open."""
    return _holds


__all__ = [
    "allocator_tunable",
    "hold_freed_memory",
    "keep_freed_memory",
    "keeping_freed_memory",
    "kept_freed_memory",
    "open_holds",
    "release_freed_memory",
]
