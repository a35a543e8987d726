"""Keeping freed memory: big allocations reuse the heap instead of fresh kernel pages."""

from __future__ import annotations

import resource

import pytest
import torch

from lmscope import allocator

pytestmark = pytest.mark.skipif(
    not allocator.allocator_tunable(), reason="the allocator can only be tuned under glibc"
)

#: 64 MiB: above glibc's largest dynamic mmap threshold, so it is returned on free.
NUMEL = 16 << 20
PAGES = (NUMEL * 4) // 4096


def _faults_of_second_allocation() -> int:
    """Minor page faults of filling a 64 MiB tensor just after an equal one was freed."""
    first = torch.ones(NUMEL)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones(NUMEL)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def test_kept_memory_is_reused_without_page_faults_and_released_after() -> None:
    with allocator.kept_freed_memory() as kept:
        assert kept and allocator.keeping_freed_memory()
        _faults_of_second_allocation()  # the heap grows to the block's size once
        reused = _faults_of_second_allocation()
    assert not allocator.keeping_freed_memory()
    fresh = _faults_of_second_allocation()
    assert reused < PAGES // 10, reused  # the freed block came back from the heap
    assert fresh > PAGES // 2, fresh  # released: a block this size is the kernel's again


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
