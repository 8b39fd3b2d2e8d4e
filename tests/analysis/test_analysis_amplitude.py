"""Activation amplitude on models with known weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from crossformers.analysis import EmptyInputError, activation_amplitude

from analysis_helpers import one_thread, tiny_crossformer  # noqa: F401 (autouse fixture)


class Toy(nn.Module):
    """Two hand-set linear blocks on the three input channels of a 1x1 image."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
        with torch.no_grad():
            self.blocks[0].weight.copy_(2 * torch.eye(3))
            self.blocks[1].weight.copy_(torch.diag(torch.tensor([1.0, -3.0, 0.5])))

    def forward(self, x):
        return self.blocks(x.flatten(1))


def test_hand_set_blocks():
    x = torch.tensor([[1.0, -2.0, 4.0], [0.5, 1.0, -1.0]]).view(2, 3, 1, 1)
    res = activation_amplitude(Toy().eval(), x, batch_size=1)
    assert [r["name"] for r in res] == ["blocks.0", "blocks.1"]
    # block 0: 2x -> |.| = 2, 4, 8, 1, 2, 2; block 1: (2x0, -6x1, x2) -> 2, 12, 4, 1, 6, 1
    assert res[0]["max_abs"] == pytest.approx(8.0) and res[0]["mean_abs"] == pytest.approx(19 / 6)
    assert res[1]["max_abs"] == pytest.approx(12.0) and res[1]["mean_abs"] == pytest.approx(26 / 6)
    assert res[1]["num_values"] == 6


def test_zeroed_crossformer_pp_blocks_and_acl():
    """Blocks whose residual branches are zero pass their input on; an ACL whose conv is zero outputs its LayerNorm
    bias (CrossFormer++ Sec. 4.2)."""
    model = tiny_crossformer(acl=True, depths=(4, 1, 1, 1))
    with torch.no_grad():
        for blk in model.stages[0].blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
        acl = model.stages[0].blocks[2].acl
        acl.conv.weight.zero_()
        acl.conv.bias.zero_()
        acl.norm.bias.fill_(-0.25)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        stem = model.stem(x).abs()
    res = activation_amplitude(model, x, blocks=["stages.0.*"])
    assert [r["acl"] for r in res] == [False, False, True, False]
    for r in res[:2]:
        assert r["max_abs"] == pytest.approx(stem.max().item(), rel=1e-6)
        assert r["mean_abs"] == pytest.approx(stem.mean().item(), rel=1e-6)
    for r in res[2:]:
        assert r["max_abs"] == pytest.approx(0.25) and r["mean_abs"] == pytest.approx(0.25)


def test_every_block_by_default_and_empty_input():
    model = tiny_crossformer()
    res = activation_amplitude(model, torch.randn(1, 3, 40, 40))
    assert [r["index"] for r in res] == list(range(6))
    with pytest.raises(EmptyInputError):
        activation_amplitude(model, [])
