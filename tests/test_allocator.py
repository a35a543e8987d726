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
