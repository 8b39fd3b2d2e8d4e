"""count_macs: exact on hand-countable models, per-module breakdown, fused/oneDNN kernels counted like the plain ones."""
from __future__ import annotations

import pytest
import timm
import torch
from profiling_cases import one_thread  # noqa: F401  (autouse fixture)
from torch import nn

import crossformers
from crossformers.layers import linear as onednn
from crossformers.layers.linear import set_onednn_linear
from crossformers.profiling import count_macs


class Tiny(nn.Module):
    """conv 3->8 k3 pad 1 on 10x12, then a Linear 8->5 on the pooled features, plus a bias-free Linear 5->2."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(5, 2, bias=False))

    def forward(self, x):
        return self.out(self.fc(self.conv(x).mean((2, 3))))


def test_hand_counted_model_is_exact():
    conv = 8 * 10 * 12 * 3 * 3 * 3  # out channels x out pixels x (in channels x kernel area)
    fc, out = 8 * 5, 5 * 2
    total, per_module = count_macs(Tiny(), (3, 10, 12))
    assert total == conv + fc + out
    assert per_module == {"": conv + fc + out, "conv": conv, "fc": fc, "out": out, "out.1": out}
    total4, _ = count_macs(Tiny(), (4, 3, 10, 12))  # a batch counts every image
    assert total4 == 4 * total


def test_input_shape_is_checked():
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(Tiny(), (10, 12))


def test_model_state_is_restored():
    model = crossformers.create_model("crossvit_9_240", img_size=48, img_scale=(1.0, 32 / 48), patch_size=(12, 16),
                                      embed_dim=(16, 32), num_heads=(2, 2), depth=((1, 1, 0), (1, 1, 0)),
                                      mlp_ratio=(2, 2, 1), num_classes=3).train()
    count_macs(model, (3, 48, 48))
    assert model.training
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))


def test_fused_attention_and_onednn_are_counted(monkeypatch):
    """timm's own CrossViT (fused SDPA, no set_fused_attn) counts the same as with explicit attention; the oneDNN
    linear counts the same as F.linear."""
    model = timm.create_model("crossvit_tiny_240", img_size=120, num_classes=3)
    total, _ = count_macs(model, (3, 120, 120))
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    explicit, _ = count_macs(model, (3, 120, 120))
    assert total == explicit
    from torch.utils.flop_counter import FlopCounterMode

    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 120, 120))
    assert fc.get_total_flops() / 2 < total  # what the bare flop counter misses
    monkeypatch.setattr(onednn, "MIN_MACS", 0)
    set_onednn_linear(model)
    assert count_macs(model, (3, 120, 120))[0] == total


def test_published_model_macs():
    """fcaformer_l1 at 224: the published 1.4 GMACs (docs/reference.md baseline: 1.374 by the same counter)."""
    total, per_module = count_macs(crossformers.create_model("fcaformer_l1"), (3, 224, 224))
    assert abs(total / 1e9 - 1.374) < 0.01
    assert sum(v for k, v in per_module.items() if k.count(".") == 1 and k.startswith("stages.")) == \
        per_module["stages"]
