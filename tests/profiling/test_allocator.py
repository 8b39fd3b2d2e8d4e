"""retain_freed_memory: with glibc, memory of freed tensors stays in the process for reuse.

Each measurement runs in a fresh interpreter: in the test process, memory freed by earlier tests would serve the
new tensors and hide the effect.
"""
from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists() or ctypes.util.find_library("c") is None,
                                reason="needs Linux /proc and a C library")

PROBE = r"""
import json, sys
from pathlib import Path
import torch
from crossformers.inference.allocator import freed_memory_retained, retain_freed_memory

def rss():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

assert not freed_memory_retained()
active = retain_freed_memory() if sys.argv[1] == "retain" else None
assert freed_memory_retained() is bool(active)
mib, count = int(sys.argv[2]), int(sys.argv[3])
before = rss()
blocks = [torch.ones(mib * 256 * 1024) for _ in range(count)]
grown = rss()
del blocks
kept = rss()
again = [torch.ones(mib * 256 * 1024) for _ in range(count)]
print(json.dumps(dict(active=active, grown=grown - before, released=grown - kept, regrown=rss() - kept)))
"""


def _probe(mode: str, mib: int = 16, count: int = 10) -> dict:
    """Allocate ``count`` tensors of ``mib`` MiB, free them, allocate them again; RSS changes in MiB."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(mib), str(count)], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_tensors_stay_resident_while_retained_and_are_given_back_by_default():
    retained = _probe("retain")
    if not retained["active"]:
        pytest.skip("not glibc: mallopt unavailable")
    assert retained["grown"] > 120
    assert retained["released"] < 40, retained  # freed memory kept in the process
    assert retained["regrown"] < 40, retained  # and reused by the next tensors
    default = _probe("default")
    assert default["grown"] > 120 and default["released"] > 120, default  # glibc's default unmaps it


def test_tensors_above_the_mmap_threshold_are_kept_too():
    """Training allocates tensors far above glibc's largest mmap threshold (32 MiB): retained, they come from the heap
    and stay; by default each is a fresh mapping, unmapped when freed."""
    retained = _probe("retain", mib=64, count=3)
    if not retained["active"]:
        pytest.skip("not glibc: mallopt unavailable")
    assert retained["grown"] > 180
    assert retained["released"] < 40, retained  # nothing unmapped
    # reused: at most one block lands beside the freed space (the small allocations between the blocks split it)
    assert retained["regrown"] < 100, retained
    default = _probe("default", mib=64, count=3)
    assert default["released"] > 180 and default["regrown"] > 180, default


def test_the_setting_can_be_queried_and_turned_back():
    probe = ("from crossformers.inference.allocator import freed_memory_retained, retain_freed_memory\n"
             "done = retain_freed_memory(); on = freed_memory_retained(); retain_freed_memory(False)\n"
             "print(done, on, freed_memory_retained())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    done, on, off = out.stdout.split()
    if done != "True":
        pytest.skip("not glibc: mallopt unavailable")
    assert (on, off) == ("True", "False")
