"""Where tokens sit in the input image, in pixels.

Coordinates are continuous input-pixel coordinates ``(y, x)``: pixel ``(r, c)`` of the (preprocessed) model input
covers ``[r, r + 1) x [c, c + 1)``, so its centre is ``(r + 0.5, c + 0.5)``. A token map is a :class:`Lattice`: token
``(i, j)`` is centred at ``offset + (i, j) * stride`` and owns the ``stride``-sized cell around its centre.

* :func:`conv_chain` gives the lattice of a chain of convolutions (receptive-field centres), used for every stem and
  downsampling layer of the three families.
* :func:`group_coordinates` maps CrossFormer's SDA/LDA groups back to token coordinates (CrossFormer Sec. 3.2,
  Fig. 2): the closed form of :func:`crossformers.layers.grouping.group_tokens`, padding included.
* :func:`cross_token_lattice` places FcaFormer's cross tokens (FcaFormer Sec. 3.1, token merge) on the image.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Lattice", "conv_chain", "group_coordinates", "group_of_token", "cross_token_lattice", "pairwise_distance"]


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


def group_coordinates(height: int, width: int, group_size: int, interval: int,
                      lda: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token coordinates of every member of every SDA/LDA group (CrossFormer Sec. 3.2, Fig. 2).

    The map is padded at the bottom/right to a multiple of the group extent (G for SDA, G * I for LDA). SDA group
    ``(wh, ww)`` holds tokens ``(wh * G + gh, ww * G + gw)``; LDA group ``(rh, rw, ih, iw)`` holds tokens
    ``(rh * G * I + gh * I + ih, rw * G * I + gw * I + iw)`` for ``gh, gw < G``: G x G tokens sampled every I tokens
    inside one (G * I)^2 region. Groups and members are in the order of
    :func:`crossformers.layers.grouping.group_tokens`.

    Args:
        height, width: token map size (H, W).
        group_size: G.
        interval: I (LDA only).
        lda: long-distance grouping.

    Returns:
        ``(coords, valid)``: coords (nG, G * G, 2) int64 token coordinates ``(y, x)`` in the padded map; valid
        (nG, G * G) bool, False for padding tokens (``y >= height`` or ``x >= width``).
    """
    G = group_size
    extent = G * interval if lda else G
    Hp, Wp = -(-height // extent) * extent, -(-width // extent) * extent
    gh, gw = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
    gh, gw = gh.ravel(), gw.ravel()
    groups = []
    if lda:
        I = interval  # noqa: E741
        for rh in range(Hp // extent):
            for rw in range(Wp // extent):
                for ih in range(I):
                    for iw in range(I):
                        groups.append(np.stack([rh * extent + gh * I + ih, rw * extent + gw * I + iw], axis=1))
    else:
        for wh in range(Hp // G):
            for ww in range(Wp // G):
                groups.append(np.stack([wh * G + gh, ww * G + gw], axis=1))
    coords = np.stack(groups).astype(np.int64)
    valid = (coords[..., 0] < height) & (coords[..., 1] < width)
    return coords, valid


def group_of_token(y: int, x: int, height: int, width: int, group_size: int, interval: int,
                   lda: bool) -> tuple[int, int]:
    """``(group index, member index)`` of token ``(y, x)`` in the layout of :func:`group_coordinates`."""
    G = group_size
    if lda:
        I = interval  # noqa: E741
        extent = G * I
        Wp = -(-width // extent) * extent
        Rw = Wp // extent
        g = (((y // extent) * Rw + x // extent) * I + y % I) * I + x % I
        n = ((y % extent) // I) * G + (x % extent) // I
    else:
        Wp = -(-width // G) * G
        g = (y // G) * (Wp // G) + x // G
        n = (y % G) * G + x % G
    return int(g), int(n)


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
