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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def fmnist() -> str:
    """The built-in dataset name; skips without Fashion-MNIST, fails on CI (see :func:`require_fashion_mnist`)."""
    return require_fashion_mnist()
