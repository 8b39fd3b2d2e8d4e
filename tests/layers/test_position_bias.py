"""Shared position-table helpers of layers/position_bias.py."""
from __future__ import annotations

import pytest
import torch

from crossformers.errors import CheckpointError
from crossformers.layers.position_bias import infer_grid, resample_pos_embed


def test_infer_grid_prefers_the_model_grid_then_a_square():
    assert infer_grid(12 * 16, (12, 16), "pos_embed") == (12, 16)  # the model's own non-square grid
    assert infer_grid(14 * 14, (12, 16), "pos_embed") == (14, 14)  # a square checkpoint grid
    with pytest.raises(CheckpointError, match=r"pos_embed \(150 cells, not square\).*img_size"):
        infer_grid(150, (12, 16), "pos_embed")


def test_resample_pos_embed_keeps_a_same_size_grid_and_resizes_others():
    pos = torch.randn(1, 1 + 4 * 6, 8)  # one prefix token, then a 4x6 grid
    same = resample_pos_embed(pos, (4, 6), (4, 6))
    torch.testing.assert_close(same, pos)
    bigger = resample_pos_embed(pos, (4, 6), (8, 12))
    assert bigger.shape == (1, 1 + 8 * 12, 8)
    torch.testing.assert_close(bigger[:, :1], pos[:, :1])  # prefix tokens are never resampled
    flat = torch.cat((pos[:, :1], torch.full((1, 24, 8), 0.5)), dim=1)
    torch.testing.assert_close(resample_pos_embed(flat, (4, 6), (7, 5))[:, 1:], torch.full((1, 35, 8), 0.5))


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (7, 7), (4, 1)])
def test_grid_coords_are_the_row_major_rows_and_columns(height, width):
    from crossformers.layers.position_bias import grid_coords

    ys, xs = grid_coords(height, width)
    assert ys.dtype == xs.dtype == torch.long and ys.shape == xs.shape == (height * width,)
    assert torch.equal(ys, torch.arange(height).repeat_interleave(width))
    assert torch.equal(xs, torch.arange(width).repeat(height))
    assert torch.equal(ys * width + xs, torch.arange(height * width))  # row-major order
