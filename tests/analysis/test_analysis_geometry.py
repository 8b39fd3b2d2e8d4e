"""Coordinate mapping: SDA/LDA groups against a brute-force reading of the paper's definition and against what the
model's grouping does; receptive-field centres; painting."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from crossformers.analysis.geometry import (
    Lattice,
    conv_chain,
    cross_token_lattice,
    group_coordinates,
    group_of_token,
)
from crossformers.layers.grouping import group_tokens

from analysis_helpers import brute_force_groups, one_thread  # noqa: F401 (autouse fixture)

CASES = [(10, 10, 4, 2, True), (10, 10, 4, 2, False), (7, 12, 3, 2, True), (16, 16, 4, 4, True),
         (5, 5, 4, 2, True), (9, 14, 2, 3, True), (8, 8, 4, 1, True), (13, 6, 5, 1, False)]


@pytest.mark.parametrize("H,W,G,I,lda", CASES)
def test_group_coordinates_match_the_definition(H, W, G, I, lda):  # noqa: E741
    coords, valid = group_coordinates(H, W, G, I, lda)
    ours = {frozenset(map(tuple, c[v].tolist())) for c, v in zip(coords, valid, strict=True)}
    ours.discard(frozenset())  # groups made only of padding
    assert ours == brute_force_groups(H, W, G, I, lda)
    # LDA members are I tokens apart along each axis
    if lda:
        g = coords[0]
        assert set(np.diff(g.reshape(G, G, 2)[:, 0, 0]).tolist()) == {I}


@pytest.mark.parametrize("H,W,G,I,lda", CASES)
def test_group_coordinates_match_the_models_grouping(H, W, G, I, lda):  # noqa: E741
    """Same order of groups and members as group_tokens (what GroupAttention sees), padding included."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    cmap = torch.stack([ys, xs], dim=-1)[None].float() + 1  # +1: padding (0) stays distinguishable
    grouped = group_tokens(cmap, G, I, lda)[0].long() - 1  # (nG, G*G, 2), -1 for padding
    coords, valid = group_coordinates(H, W, G, I, lda)
    assert grouped.shape == coords.shape
    assert np.array_equal(np.where(valid[..., None], coords, -1), grouped.numpy())


@pytest.mark.parametrize("H,W,G,I,lda", CASES)
def test_group_of_token_inverts(H, W, G, I, lda):  # noqa: E741
    coords, valid = group_coordinates(H, W, G, I, lda)
    for y, x in itertools.product(range(H), range(W)):
        g, n = group_of_token(y, x, H, W, G, I, lda)
        assert tuple(coords[g, n]) == (y, x) and valid[g, n]


def test_conv_chain_centres():
    assert conv_chain([(4, 4, 0)]) == (2.0, 4.0)  # patch 4: token i covers [4i, 4i + 4)
    assert conv_chain([(16, 4, 6)]) == (2.0, 4.0)  # CEL kernels share the centre of the smallest one
    assert conv_chain([(3, 2, 1), (3, 2, 1)]) == (0.5, 4.0)  # FcaFormer's stem: centred on pixel 4i
    assert conv_chain([(4, 4, 0), (2, 2, 0)]) == (4.0, 8.0)  # CrossFormer stage 2 (merge 2x2)
    assert conv_chain([(12, 12, 0)]) == (6.0, 12.0)


def test_lattice_paint_and_lookup():
    lat = Lattice(3, 4, (8.0, 8.0), (4.0, 4.0))  # tiles a 24 x 32 image exactly
    vals = np.arange(12, dtype=float)
    img = lat.paint(vals, (24, 32))
    assert img.shape == (24, 32)
    assert img[0, 0] == 0 and img[23, 31] == 11 and img[8, 8] == 5
    assert img.sum() == pytest.approx(vals.sum() * 64)  # every token spread over its 8 x 8 cell
    assert lat.token_at(12, 20) == (1, 2) and lat.token_at(-50, 999) == (0, 3)
    assert np.allclose(lat.centres()[5], (12.0, 12.0))
    shifted = Lattice(3, 4, (8.0, 8.0), (2.5, 2.5))  # cells stop 1.5 px short: the strip takes the edge token
    img = shifted.paint(vals, (24, 32))
    assert img[23, 31] == 11 and img[0, 0] == 0
    assert Lattice(1, 1, (4.0, 4.0), (2.0, 2.0)).paint(np.ones(1), (12, 12))[9:, 9:].sum() == 0  # beyond: 0


def test_cross_token_lattice():
    tokens = Lattice(12, 12, (4.0, 4.0), (0.5, 0.5))
    cross = cross_token_lattice(tokens)  # 7x7 stride-4 pad-3 merge: cross token a on token 4a
    assert (cross.height, cross.width, cross.stride, cross.offset) == (3, 3, (16.0, 16.0), (0.5, 0.5))
    pooled = cross_token_lattice(tokens, merge_conv=False)  # average pooling: bin centre (token 1.5)
    assert pooled.offset == (6.5, 6.5) and pooled.stride == (16.0, 16.0)
    assert (cross_token_lattice(Lattice(5, 9, (1, 1), (0, 0))).height,
            cross_token_lattice(Lattice(5, 9, (1, 1), (0, 0))).width) == (2, 3)
