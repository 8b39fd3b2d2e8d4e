"""One intra-op thread for the tests of tiny models (engine, profiling, the CLI)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(1)``, then restore the previous count (also on error).

    Tiny models gain nothing from more threads, and on a loaded 2-core machine OpenMP threads waiting for each other
    make a step up to 10x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
