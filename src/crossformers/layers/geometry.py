"""Where tokens sit in the input image, in pixels: the lattice of a token map and the receptive-field centres of a
chain of convolutions.

Coordinates are continuous input-pixel coordinates ``(y, x)``: pixel ``(r, c)`` of the (preprocessed) model input
covers ``[r, r + 1) x [c, c + 1)``, so its centre is ``(r + 0.5, c + 0.5)``. A token map is a :class:`Lattice`: token
``(i, j)`` is centred at ``offset + (i, j) * stride`` and owns the ``stride``-sized cell around its centre. The model
families build their attention layouts (:mod:`crossformers.models.protocol`) from these pieces.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

__all__ = ["Lattice", "conv_chain", "conv_lattice", "grid_convs", "cross_token_lattice", "pairwise_distance"]


@dataclass(frozen=True)
class Lattice:
    """A regular grid of token centres in input pixels.

    Attributes:
        height, width: tokens per column / row.
        stride: ``(sy, sx)`` pixels between neighbouring token centres (also the side of a token's cell).
        offset: ``(oy, ox)`` pixel coordinates of the centre of token ``(0, 0)``.
    """

    height: int
    width: int
    stride: tuple[float, float]
    offset: tuple[float, float]

    @property
    def size(self) -> int:
        """Number of tokens ``height * width``."""
        return self.height * self.width

    def centres(self) -> np.ndarray:
        """Centres of all tokens in row-major order: (height * width, 2) ``(y, x)`` in pixels."""
        ii, jj = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        y = self.offset[0] + ii.ravel() * self.stride[0]
        x = self.offset[1] + jj.ravel() * self.stride[1]
        return np.stack([y, x], axis=1).astype(np.float64)

    def token_at(self, y: float, x: float) -> tuple[int, int]:
        """The token whose centre is nearest to pixel position ``(y, x)`` (clamped to the grid): ``(i, j)``."""
        i = int(np.clip(math.floor((y - self.offset[0]) / self.stride[0] + 0.5), 0, self.height - 1))
        j = int(np.clip(math.floor((x - self.offset[1]) / self.stride[1] + 0.5), 0, self.width - 1))
        return i, j

    def paint(self, values: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Spread per-token values over the pixels of their cells.

        Args:
            values: (..., height * width) or (..., height, width).
            image_size: ``(H, W)`` of the input image in pixels.

        Returns:
            (..., H, W): each pixel takes the value of the token whose cell holds the pixel centre. Pixels in a border
            strip up to one cell beyond the lattice take the nearest edge token (FcaFormer's receptive-field centres
            sit on pixel 4i, so its cells stop 1.5 px short of the right/bottom edge; a CrossViT patch grid may leave
            a remainder of less than one patch); pixels farther out get 0.
        """
        vals = np.asarray(values, dtype=np.float64)
        if vals.shape[-2:] != (self.height, self.width):
            vals = vals.reshape(*vals.shape[:-1], self.height, self.width)
        H, W = image_size
        rows = np.floor((np.arange(H) + 0.5 - (self.offset[0] - self.stride[0] / 2)) / self.stride[0]).astype(int)
        cols = np.floor((np.arange(W) + 0.5 - (self.offset[1] - self.stride[1] / 2)) / self.stride[1]).astype(int)
        rin = (rows >= -1) & (rows <= self.height)
        cin = (cols >= -1) & (cols <= self.width)
        out = vals[..., np.clip(rows, 0, self.height - 1)[:, None], np.clip(cols, 0, self.width - 1)[None, :]]
        return out * (rin[:, None] & cin[None, :])


def conv_chain(specs: Sequence[tuple[int, int, int]]) -> tuple[float, float]:
    """Receptive-field centre of a chain of convolutions along one axis.

    Args:
        specs: ``(kernel, stride, padding)`` of each convolution, first applied first.

    Returns:
        ``(offset, stride)`` in input pixels: output index ``o`` of the last convolution is centred at
        ``offset + o * stride`` (continuous coordinates, pixel ``r`` centred at ``r + 0.5``).
    """
    def centre(o: float) -> float:
        pos = float(o)
        for k, s, p in reversed(list(specs)):
            pos = pos * s - p + (k - 1) / 2
        return pos + 0.5

    c0 = centre(0)
    return c0, centre(1) - c0


def _conv_spec(conv: nn.Module, axis: int) -> tuple[int, int, int]:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if isinstance(p, str):
        raise ValueError(f"cannot place tokens for a convolution with padding={p!r}")
    return int(k[axis]), int(s[axis]), int(p[axis])


def grid_convs(module: nn.Module) -> list[nn.Module]:
    """The convolutions of ``module`` that change the sampling grid, in order (1x1 stride-1 convolutions skipped)."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and
            not (m.kernel_size == (1, 1) and m.stride == (1, 1))]


def conv_lattice(convs: Sequence[nn.Module], height: int, width: int) -> Lattice:
    """Lattice of a (height, width) map made from the input by the convolutions ``convs`` (first applied first).

    Raises:
        ValueError: a convolution with string padding ('same'), whose centres are not a fixed chain.
    """
    oy, sy = conv_chain([_conv_spec(c, 0) for c in convs])
    ox, sx = conv_chain([_conv_spec(c, 1) for c in convs])
    return Lattice(height, width, (sy, sx), (oy, ox))


def cross_token_lattice(tokens: Lattice, merge_conv: bool = True) -> Lattice:
    """Lattice of the cross tokens an FcaFormer block makes from a token map (FcaFormer Sec. 3.1, token merge).

    With TME the merge is a 7x7 stride-4 convolution with padding 3, so cross token ``(a, b)`` is centred on token
    ``(4a, 4b)`` and stands for a 4 x 4 patch of tokens. Without TME (``merge_conv=False``: adaptive average pooling to
    ``ceil(H / 4) x ceil(W / 4)``) a cross token is the mean of a bin of about ``H / ceil(H / 4)`` tokens, centred on the
    bin (exact when H and W are multiples of 4).

    Returns:
        Lattice of ``ceil(H / 4) x ceil(W / 4)`` cross tokens in input pixels.
    """
    hs, ws = (tokens.height + 3) // 4, (tokens.width + 3) // 4
    sy, sx = tokens.stride
    if merge_conv:
        return Lattice(hs, ws, (4 * sy, 4 * sx), tokens.offset)
    by, bx = tokens.height / hs, tokens.width / ws
    return Lattice(hs, ws, (by * sy, bx * sx),
                   (tokens.offset[0] + (by - 1) / 2 * sy, tokens.offset[1] + (bx - 1) / 2 * sx))


def pairwise_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between points ``a`` (..., Na, 2) and ``b`` (..., Nb, 2) -> (..., Na, Nb); NaN where a
    point is NaN (no position, e.g. a class token)."""
    d = a[..., :, None, :] - b[..., None, :, :]
    return np.sqrt((d ** 2).sum(-1))
