"""The real Fashion-MNIST in tests: skip where it is not installed, FAIL on CI (one implementation for the suite).

Used by the ``fmnist`` fixture of tests/conftest.py; a module of its own (not conftest) so tests can import it.
"""
from __future__ import annotations

import os

import pytest

FASHION_MNIST_MISSING = "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or bash scripts/setup.sh)"


def in_ci() -> bool:
    """True on a CI runner (``CI=true``, set by GitHub Actions, GitLab CI and most others)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def fashion_mnist_missing() -> str | None:
    """Why the real Fashion-MNIST cannot be read (the reader's own message), or None when it can."""
    from crossformers.data import DataError, FashionMNIST

    try:
        for split in ("train", "val"):
            FashionMNIST(split=split, limit=1)
    except DataError as e:
        return str(e).splitlines()[0] if str(e) else "unreadable"
    return None


def require_fashion_mnist() -> str:
    """The built-in dataset name ``'fashion-mnist'`` when the real data is installed.

    Otherwise the calling test is skipped with a clear reason, except on CI (``CI=true``) where it FAILS: the data is
    part of CI's set-up, so its absence is a broken runner and must not hide ~30 engine / CLI tests as skips.
    """
    why = fashion_mnist_missing()
    if why is not None:
        msg = f"{FASHION_MNIST_MISSING}: {why}"
        if in_ci():
            pytest.fail(f"CI=true but the dataset is missing: {msg}", pytrace=False)
        pytest.skip(msg)
    return "fashion-mnist"
