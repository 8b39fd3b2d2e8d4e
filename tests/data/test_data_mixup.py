"""build_mixup: soft targets of the right shape, None when off, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.data import Mixup

from crossformers.data import DataError, build_mixup


@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_soft_targets(mixup_alpha, cutmix_alpha, mode) -> None:
    np.random.seed(0)
    mix = build_mixup(mixup_alpha, cutmix_alpha, 0.1, num_classes=10, mode=mode)
    assert isinstance(mix, Mixup)
    x = torch.randn(8, 1, 28, 28)
    y = torch.arange(8) % 10
    xm, ym = mix(x.clone(), y)
    assert xm.shape == x.shape
    assert ym.shape == (8, 10) and ym.dtype == torch.float32
    assert torch.allclose(ym.sum(1), torch.ones(8))
    assert (ym.min() >= 0.1 / 10 - 1e-6) and (ym.max() <= 1 - 0.1 + 0.1 / 10 + 1e-6)


def test_off_returns_none() -> None:
    assert build_mixup(0.0, 0.0, 0.1, 10) is None
    assert build_mixup(0.8, 1.0, 0.1, 10, prob=0.0) is None


def test_errors() -> None:
    mix = build_mixup(0.8, 0.0, 0.0, 10)
    assert mix is not None
    with pytest.raises(DataError, match="even batch size, got 3"):
        mix(torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match="integer class labels"):
        mix(torch.randn(2, 1, 8, 8), torch.zeros(2, 10))
    with pytest.raises(DataError, match="mixup_alpha must be >= 0"):
        build_mixup(-1.0, 0.0, 0.1, 10)
    with pytest.raises(DataError, match="num_classes must be an int >= 2"):
        build_mixup(0.8, 0.0, 0.1, 1)
    with pytest.raises(DataError, match=r"label_smoothing must be in \[0, 1\)"):
        build_mixup(0.8, 0.0, 1.0, 10)
