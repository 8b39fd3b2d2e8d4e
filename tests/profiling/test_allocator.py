"""retain_freed_memory: with glibc, memory of freed tensors stays in the process for reuse."""
from __future__ import annotations

import ctypes.util
from pathlib import Path

import pytest
import torch

from crossformers.profiling.allocator import retain_freed_memory

STATUS = Path("/proc/self/status")
pytestmark = pytest.mark.skipif(not STATUS.exists() or ctypes.util.find_library("c") is None,
                                reason="needs Linux /proc and a C library")


def _rss_mib() -> float:
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def test_freed_tensors_stay_resident_while_retained():
    if not retain_freed_memory():
        pytest.skip("not glibc: mallopt unavailable")
    try:
        before = _rss_mib()
        blocks = [torch.ones(4 * 1024 * 1024) for _ in range(10)]  # 10 x 16 MiB, each below the 32 MiB threshold
        grown = _rss_mib()
        assert grown - before > 120
        del blocks
        kept = _rss_mib()
        assert grown - kept < 40, f"RSS fell from {grown:.0f} to {kept:.0f} MiB: freed memory was given back"
        again = [torch.ones(4 * 1024 * 1024) for _ in range(10)]  # reuses the retained memory
        assert _rss_mib() - kept < 40
        del again
    finally:
        assert retain_freed_memory(False)
