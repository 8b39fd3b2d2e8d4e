"""Fixtures shared by every test (helpers for the parity fixtures are in tests/parity_fixtures.py)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
