"""Fixtures shared by every test (helpers for the parity fixtures are in tests/parity_fixtures.py)."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch

from real_data import require_fashion_mnist

# The linear-kernel default must not depend on a calibration the machine's user recorded (crossformers profile
# --calibrate-linear): the tests see the built-in rule unless they write a calibration of their own. The variable is
# inherited by the subprocesses the tests start (torchrun, memory measurement).
os.environ["CROSSFORMERS_LINEAR_CALIBRATION"] = os.path.join(tempfile.mkdtemp(prefix="cf-nocal-"), "none.json")


@pytest.fixture(scope="session", autouse=True)
def retain_memory_calls() -> list[bool]:
    """The training and inference commands call ``retain_freed_memory()`` (process-wide, not undone for blocks already mapped); the
    tests run them in this process, so their calls are recorded here instead (tests/test_cli.py reads the list).
    Commands run as subprocesses do the real thing."""
    calls: list[bool] = []

    def record(enable: bool = True) -> bool:
        calls.append(enable)
        return True

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("crossformers.cli.retain_freed_memory", record)
        mp.setattr("crossformers.dense.cli.retain_freed_memory", record)
        mp.setattr("crossformers.profiling.cli.retain_freed_memory", record)
        yield calls


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def fmnist() -> str:
    """The built-in dataset name; skips without Fashion-MNIST, fails on CI (see :func:`require_fashion_mnist`)."""
    return require_fashion_mnist()
