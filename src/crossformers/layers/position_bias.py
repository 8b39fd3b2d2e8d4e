"""Learned position-bias tables that work at any token-grid size.

* :class:`OffsetBiasTable` — a bias per head indexed by the absolute token offset ``(|dy|, |dx|)`` between query and
  key, the relative position bias of LeViT (Graham et al. 2021, Sec. 4.2) used by FcaFormer's attention.
* :func:`resample_grid_table` — resamples a table laid out on a 2-D grid to another grid size (bicubic), the rule used
  for tables tied to absolute positions (FcaFormer's cross-token scale factors and biases).

How other sizes are handled (documented behaviour):
    A grid that fits inside the trained table (``H <= H0`` and ``W <= W0``) is indexed by offset: exact, an offset
    of ``(dy, dx)`` tokens gets the bias it was trained with. A larger grid resamples the table bicubically with
    ``align_corners=True`` to ``(max(H, H0), max(W, W0))`` so that offset 0 and the largest offset stay anchored (the
    convention timm uses when fine-tuning relative-position tables at a larger resolution).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OffsetBiasTable", "resample_grid_table", "offset_index"]


def offset_index(height: int, width: int, table_width: int, device: torch.device | None = None) -> torch.Tensor:
    """Flat table index of the offset between every pair of tokens of a (height, width) grid.

    Returns:
        Long tensor (N, N), N = height * width, with ``|dy| * table_width + |dx|`` for query i and key j
        (tokens in row-major order).
    """
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * table_width + dx


def resample_grid_table(table: torch.Tensor, size: tuple[int, int], align_corners: bool = False,
                        mode: str = "bicubic") -> torch.Tensor:
    """Resample a table whose last two dims are a (H0, W0) grid to ``size`` = (H, W).

    Args:
        table: (..., H0, W0).
        size: target (H, W).
        align_corners: passed to ``F.interpolate``.
        mode: ``'bicubic'`` or ``'bilinear'``.

    Returns:
        (..., H, W); the same tensor when the size already matches.
    """
    if tuple(table.shape[-2:]) == tuple(size):
        return table
    lead = table.shape[:-2]
    flat = table.reshape(1, -1, *table.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode=mode, align_corners=align_corners)
    return out.reshape(*lead, *size).to(table.dtype)


class OffsetBiasTable(nn.Module):
    """Relative position bias indexed by absolute token offset (LeViT Sec. 4.2; FcaFormer's attention bias).

    Args:
        num_heads: attention heads.
        grid_size: (H0, W0), the token grid the table is trained for; offsets 0..H0-1 and 0..W0-1.

    Parameter ``table``: (num_heads, H0, W0), zero-initialised.
    """

    def __init__(self, num_heads: int, grid_size: tuple[int, int]):
        super().__init__()
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.table = nn.Parameter(torch.zeros(num_heads, *self.grid_size))

    def forward(self, height: int, width: int) -> torch.Tensor:
        """Bias for a (height, width) token grid: (num_heads, N, N), N = height * width."""
        h0, w0 = self.grid_size
        table = self.table
        if height > h0 or width > w0:
            table = resample_grid_table(table, (max(height, h0), max(width, w0)), align_corners=True)
        idx = offset_index(height, width, table.shape[-1], device=table.device)
        return table.flatten(1)[:, idx]
