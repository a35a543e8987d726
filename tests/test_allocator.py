"""Keeping freed memory: big allocations reuse the heap instead of fresh kernel pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmscope import allocator

pytestmark = pytest.mark.skipif(
    not allocator.allocator_tunable(), reason="the allocator can only be tuned under glibc"
)

#: 64 MiB: above glibc's largest dynamic mmap threshold, so it is returned on free.
NUMEL = 16 << 20
PAGES = (NUMEL * 4) // 4096


#: Run in a fresh interpreter: in a long-lived test process earlier tests leave free
#: holes in the heap, and glibc serves a block from such a hole before it would map it.
_MEASURE = f"""
import resource, torch
from lmscope import allocator

def faults_of_second_allocation():
    first = torch.ones({NUMEL})
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones({NUMEL})
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_second_allocation()
with allocator.kept_freed_memory() as kept:
    assert kept and allocator.keeping_freed_memory()
    faults_of_second_allocation()  # the heap grows to the block's size once
    reused = faults_of_second_allocation()
assert not allocator.keeping_freed_memory()
released = faults_of_second_allocation()
print(default, reused, released)
"""


def test_kept_memory_is_reused_without_page_faults_and_released_after() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE], capture_output=True, text=True, check=True
    ).stdout
    default, reused, released = map(int, out.split())
    assert default > PAGES // 2, default  # glibc's default: a fresh mapping every time
    assert reused < PAGES // 10, reused  # kept: the freed block came back from the heap
    assert released > PAGES // 2, released  # released: the kernel's again


def test_nested_use_leaves_an_outer_setting_on() -> None:
    assert allocator.keep_freed_memory()
    try:
        with allocator.kept_freed_memory() as kept:
            assert kept
        assert allocator.keeping_freed_memory()
    finally:
        allocator.release_freed_memory()
    assert not allocator.keeping_freed_memory()


def test_disabled_context_changes_nothing() -> None:
    with allocator.kept_freed_memory(enabled=False) as kept:
        assert not kept and not allocator.keeping_freed_memory()


def test_holds_are_counted_and_the_last_one_releases() -> None:
    first, second = allocator.hold_freed_memory(), allocator.hold_freed_memory()
    assert allocator.keeping_freed_memory() and allocator.open_holds() == 2
    first()
    first()  # ending a hold twice counts once
    assert allocator.keeping_freed_memory() and allocator.open_holds() == 1
    second()
    assert not allocator.keeping_freed_memory() and allocator.open_holds() == 0


def test_holds_leave_memory_kept_by_someone_else_on() -> None:
    """A trainer (or the user) keeping freed memory keeps it after the holds end, both
    when it started before the first hold and when it started during one."""
    for keep_first in (True, False):
        if keep_first:
            allocator.keep_freed_memory()
        end = allocator.hold_freed_memory()
        allocator.keep_freed_memory()
        end()
        try:
            assert allocator.keeping_freed_memory() and allocator.open_holds() == 0
        finally:
            allocator.release_freed_memory()


#: A cache of ~64 MiB in a fresh interpreter: while it lives, a rerun reuses the memory
#: the previous cache freed (few page faults); once every cache is dropped, the memory is
#: handed back (the resident size falls) and memory is no longer kept.
_CACHE_LOOP = """
import gc, resource, torch
from lmscope import allocator
from lmscope.config import ModelConfig
from lmscope.model import build_model

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

torch.manual_seed(0)
cfg = ModelConfig.from_preset(
    "gpt2-small", n_layers=2, d_model=64, n_heads=4, vocab_size=97, max_seq_len=256
)
model = build_model(cfg).eval()
tokens = torch.randint(0, 97, (8, 256))
out = {}
for keep in (False, True):
    # A loop that rebinds its cache: each call runs while the previous cache lives, so
    # the third call is the first that can reuse freed cache memory.
    for _call in range(2):
        _, cache = model.run_with_cache(tokens, keep_freed_memory=keep)
        assert allocator.keeping_freed_memory() == keep
    before = faults()
    _, cache = model.run_with_cache(tokens, keep_freed_memory=keep)
    out[keep] = faults() - before
    rss_held = rss_mib()
    del cache, _
    gc.collect()
    assert not allocator.keeping_freed_memory() and allocator.open_holds() == 0
    out[f"drop{keep}"] = rss_held - rss_mib()
print(out[False], out[True], out["dropTrue"], out["dropFalse"])
"""


def test_a_cache_loop_reuses_freed_memory_and_hands_it_back_at_the_end() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CACHE_LOOP], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    default, kept, dropped_mib, _ = map(float, result.stdout.split())
    assert default > 8_000, default  # glibc's defaults: the next cache faults fresh pages
    assert kept < default / 4, (kept, default)
    assert dropped_mib > 32, dropped_mib  # the cache's memory went back to the kernel


def test_a_block_inside_a_hold_keeps_memory_through_the_hold_then_hands_it_back() -> None:
    end = allocator.hold_freed_memory()
    with allocator.kept_freed_memory() as kept:
        assert kept
        end()  # the hold ends inside the block: the block still keeps memory
        assert allocator.keeping_freed_memory()
    assert not allocator.keeping_freed_memory()  # ...and releases it on exit
    end = allocator.hold_freed_memory()
    with allocator.kept_freed_memory():
        pass
    assert allocator.keeping_freed_memory()  # the hold is still open
    end()
    assert not allocator.keeping_freed_memory()
