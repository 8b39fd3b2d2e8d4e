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

import math

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn

from ..errors import CheckpointError

__all__ = ["OffsetBiasTable", "DynamicPosBias", "resample_grid_table", "resample_pos_embed", "offset_index",
           "grid_coords", "infer_grid"]


def grid_coords(height: int, width: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every token of a (height, width) grid in row-major order: two long tensors (height * width,).

    Written with ``expand`` rather than ``repeat_interleave``, so that an exported graph with symbolic sizes needs no
    decomposition pass before its ONNX translation (whose ``repeat_interleave`` with a symbolic count is invalid)."""
    ys = torch.arange(height, device=device).unsqueeze(1).expand(height, width).reshape(-1)
    xs = torch.arange(width, device=device).unsqueeze(0).expand(height, width).reshape(-1)
    return ys, xs


def offset_index(height: int, width: int, table_width: int, device: torch.device | None = None) -> torch.Tensor:
    """Flat table index of the offset between every pair of tokens of a (height, width) grid.

    Returns:
        Long tensor (N, N), N = height * width, with ``|dy| * table_width + |dx|`` for query i and key j
        (tokens in row-major order).
    """
    ys, xs = grid_coords(height, width, device)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * table_width + dx


@register_notrace_function  # size-dependent: an FX leaf
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


@register_notrace_function  # size-dependent: an FX leaf
def resample_pos_embed(pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int],
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """Absolute position embedding of a (h0, w0) token grid for another grid, prefix (class) tokens kept.

    Args:
        pos: (1, P + h0*w0, D).
        grid: (h0, w0).
        new_grid: (h, w).
        num_prefix_tokens: P, tokens in front of the grid (not resampled).

    Returns:
        (1, P + h*w, D): the grid part resampled bicubically (as timm's ViT); ``pos`` itself if the grids match.
    """
    if tuple(grid) == tuple(new_grid):
        return pos
    D = pos.shape[-1]
    patch = pos[:, num_prefix_tokens:].reshape(1, grid[0], grid[1], D).permute(0, 3, 1, 2)
    patch = resample_grid_table(patch, tuple(new_grid)).permute(0, 2, 3, 1).reshape(1, -1, D)
    return torch.cat((pos[:, :num_prefix_tokens], patch), dim=1)


@register_notrace_module  # size-dependent resampling: an FX leaf (its table is still a traced parameter)
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


class DynamicPosBias(nn.Module):
    """Dynamic position bias (DPB; CrossFormer, ICLR 2022, Sec. 3.2.2).

    An MLP maps each relative coordinate (dy, dx) of a G x G group to one bias per head, so the same weights serve
    any group size. Three (LayerNorm, ReLU, Linear) layers after a 2 -> ``dim // 16`` projection (``residual=False``
    as in the official models).

    Args:
        dim: channels of the attention layer the bias is for. The MLP width is ``dim // 16``: the official code
            passes ``dim // 4`` to a constructor that divides by 4 again, and the released weights have that width
            (``(dim // 4) // 4 == dim // 16`` for every integer ``dim``).
        num_heads: outputs per offset.
        residual: residual connections inside the MLP (off in the released models).
    """

    def __init__(self, dim: int, num_heads: int, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.num_heads = num_heads
        pos_dim = dim // 16
        self.pos_proj = nn.Linear(2, pos_dim)
        self.pos1 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(inplace=True), nn.Linear(pos_dim, pos_dim))
        self.pos2 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(inplace=True), nn.Linear(pos_dim, pos_dim))
        self.pos3 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(inplace=True), nn.Linear(pos_dim, num_heads))

    def table(self, group_h: int, group_w: int) -> torch.Tensor:
        """Bias of every relative offset: ((2Gh-1) * (2Gw-1), num_heads), offsets in row-major (dy, dx) order."""
        device = self.pos_proj.weight.device
        dy = torch.arange(1 - group_h, group_h, device=device)
        dx = torch.arange(1 - group_w, group_w, device=device)
        coords = torch.stack(torch.meshgrid(dy, dx, indexing="ij")).flatten(1).t().to(self.pos_proj.weight.dtype)
        pos = self.pos_proj(coords)
        if self.residual:
            pos = pos + self.pos1(pos)
            pos = pos + self.pos2(pos)
            return self.pos3(pos)
        return self.pos3(self.pos2(self.pos1(pos)))

    def forward(self, group_h: int, group_w: int) -> torch.Tensor:
        """Bias for a (group_h, group_w) group: (num_heads, N, N), N = group_h * group_w."""
        table = self.table(group_h, group_w)
        ys, xs = grid_coords(group_h, group_w, table.device)
        idx = (ys[:, None] - ys[None, :] + group_h - 1) * (2 * group_w - 1) + (xs[:, None] - xs[None, :] + group_w - 1)
        return table[idx].permute(2, 0, 1)


def infer_grid(count: int, target: tuple[int, int], key: str) -> tuple[int, int]:
    """The (h, w) grid of a checkpoint table with ``count`` flattened cells (a position embedding, a relative or
    cross-token table): the model's own grid ``target`` when the sizes agree, else a square.

    Raises:
        CheckpointError: ``count`` is neither ``target``'s size nor a square (naming ``key`` and the fix).
    """
    if count == target[0] * target[1]:
        return target
    side = math.isqrt(count)
    if side * side != count:
        raise CheckpointError(f"cannot infer the grid of {key} ({count} cells, not square): create the model with "
                              "the img_size the checkpoint was trained at")
    return side, side
