"""Short- and long-distance attention grouping (CrossFormer, ICLR 2022, Sec. 3.2, Fig. 2).

Pure tensor functions on channels-last maps. A (H, W) map is padded at the bottom/right to a multiple of the group
extent (G for SDA, G * I for LDA), cut into groups of G x G tokens, and put back after attention:

* **SDA** (short distance attention): each group is a contiguous G x G window.
* **LDA** (long distance attention): the map is cut into regions of (G*I) x (G*I); inside a region the tokens whose
  coordinates are equal modulo I form one group, i.e. G x G tokens sampled every I tokens.

Padded tokens must not be attended to: :func:`padding_key_mask` gives, per group, which keys are padding.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ["group_extent", "padded_size", "group_tokens", "ungroup_tokens", "padding_key_mask", "group_coordinates",
           "group_of_token"]


def group_extent(group_size: int, interval: int, lda: bool) -> int:
    """Side of the area one group spans: G (SDA) or G * I (LDA)."""
    return group_size * interval if lda else group_size


def padded_size(height: int, width: int, group_size: int, interval: int, lda: bool) -> tuple[int, int]:
    """(Hp, Wp): height and width rounded up to a multiple of the group extent.

    A size that is already a multiple comes back as the very value given. Under torch.export with free sizes that
    value is a symbol, and the rounded-up form would be a floor expression that every later block nests again
    (measured: the dynamic export of crossformer_tiny took 66-69 s with the given sizes kept, 77-80 s without)."""
    e = group_extent(group_size, interval, lda)

    def rounded_up(size: int) -> int:
        rounded = -(-size // e) * e
        return size if rounded == size else rounded

    return rounded_up(height), rounded_up(width)


@register_notrace_function  # size-dependent padding: an FX leaf (traced as one call, run eagerly)
def group_tokens(x: torch.Tensor, group_size: int, interval: int, lda: bool) -> torch.Tensor:
    """Pad (bottom/right, zeros) and cut a map into groups.

    Args:
        x: (B, H, W, C).
        group_size: G.
        interval: I (LDA only).
        lda: LDA grouping if True, SDA otherwise.

    Returns:
        (B, nG, G*G, C) with nG = Hp*Wp / G^2; groups in row-major order of (region row, region col, i_h, i_w) for
        LDA and of (window row, window col) for SDA.
    """
    B, H, W, C = x.shape
    Hp, Wp = padded_size(H, W, group_size, interval, lda)
    if Hp != H or Wp != W:
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    G = group_size
    if lda:
        I = interval  # noqa: E741
        x = x.reshape(B, Hp // (G * I), G, I, Wp // (G * I), G, I, C).permute(0, 1, 4, 3, 6, 2, 5, 7)
    else:
        x = x.reshape(B, Hp // G, G, Wp // G, G, C).permute(0, 1, 3, 2, 4, 5)
    # explicit group count (not -1): an empty batch (B = 0) has no elements to infer it from
    return x.reshape(B, (Hp // G) * (Wp // G), G * G, C)


@register_notrace_function
def ungroup_tokens(x: torch.Tensor, height: int, width: int, group_size: int, interval: int, lda: bool) -> torch.Tensor:
    """Inverse of :func:`group_tokens`: (B, nG, G*G, C) -> (B, H, W, C), padding removed."""
    B, _, _, C = x.shape
    Hp, Wp = padded_size(height, width, group_size, interval, lda)
    G = group_size
    if lda:
        I = interval  # noqa: E741
        Rh, Rw = Hp // (G * I), Wp // (G * I)
        x = x.reshape(B, Rh, Rw, I, I, G, G, C).permute(0, 1, 5, 3, 2, 6, 4, 7)
    else:
        x = x.reshape(B, Hp // G, Wp // G, G, G, C).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(B, Hp, Wp, C)
    if Hp != height or Wp != width:
        x = x[:, :height, :width]
    return x


def padding_key_mask(height: int, width: int, group_size: int, interval: int, lda: bool,
                     device: torch.device | None = None) -> torch.Tensor | None:
    """Which keys of each group are padding.

    Returns:
        Bool tensor (nG, G*G), True where the token is padding; None when no padding is needed.
    """
    Hp, Wp = padded_size(height, width, group_size, interval, lda)
    if Hp == height and Wp == width:
        return None
    pad = torch.ones(1, Hp, Wp, 1, dtype=torch.bool, device=device)
    pad[:, :height, :width] = False
    return group_tokens(pad, group_size, interval, lda)[0, :, :, 0]


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
