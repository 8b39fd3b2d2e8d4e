"""Checks shared by the tests of the three model families."""
from __future__ import annotations

import pytest
import torch

from crossformers.errors import InputSizeError


def assert_input_size_errors(model: torch.nn.Module, wrong_channels: tuple[int, ...], too_small: tuple[int, ...],
                             unbatched: tuple[int, ...]) -> None:
    """``model`` rejects each of three bad input shapes with an :class:`InputSizeError` naming the problem.

    Args:
        wrong_channels: (B, C, H, W) with C other than the model's ``in_chans``: the message names ``in_chans=C``.
        too_small: (B, C, H, W) below the smallest size the model accepts: the message says "smaller than".
        unbatched: (C, H, W): the message asks for a batch dimension.
    """
    for shape, match in ((wrong_channels, f"in_chans={wrong_channels[1]}"), (too_small, "smaller than"),
                         (unbatched, "batch")):
        with pytest.raises(InputSizeError, match=match):
            model(torch.randn(*shape))
