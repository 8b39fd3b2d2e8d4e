"""Fixtures shared by every test (helpers for the parity fixtures are in tests/parity_fixtures.py)."""
from __future__ import annotations

import pytest
import torch

from real_data import require_fashion_mnist


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def fmnist() -> str:
    """The built-in dataset name; skips without Fashion-MNIST, fails on CI (see :func:`require_fashion_mnist`)."""
    return require_fashion_mnist()
