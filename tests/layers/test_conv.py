"""Depthwise convolutions that run in fp32 during CPU bf16-autocast training (layers/conv.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import crossformers
from crossformers.layers.conv import AutocastDepthwiseConv2d, fp32_depthwise_autocast, is_depthwise


def _pair(groups: int = 8, stride: int = 2):
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 8 if groups == 8 else 16, 3, stride=stride, padding=1, groups=groups)
    switched = copy.deepcopy(plain)
    return plain, switched, fp32_depthwise_autocast(switched)


def test_only_depthwise_convolutions_switch_and_back():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 3, groups=8), nn.Conv2d(8, 8, 1),
                          nn.Conv2d(8, 8, 3, groups=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert [is_depthwise(m) for m in model] == [True, True, False, False]
    assert fp32_depthwise_autocast(model) == 2
    assert [type(m) for m in model] == [AutocastDepthwiseConv2d, AutocastDepthwiseConv2d, nn.Conv2d, nn.Conv2d]
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert fp32_depthwise_autocast(model, False) == 2 and all(type(m) is nn.Conv2d for m in model)


def test_autocast_training_runs_the_convolution_in_fp32():
    plain, switched, n = _pair()
    assert n == 1
    x = torch.randn(2, 8, 10, 10)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        y_plain, y = plain(x1), switched(x2)
    assert y_plain.dtype == torch.bfloat16 and y.dtype == torch.float32
    ref = plain(x.clone())  # fp32, outside autocast
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    y.square().sum().backward()
    x.requires_grad_()
    plain(x).square().sum().backward()
    assert switched.weight.grad.dtype == torch.float32
    torch.testing.assert_close(switched.weight.grad, plain.weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-6, atol=1e-6)


def test_plain_convolution_outside_autocast_training():
    plain, switched, _ = _pair(groups=8, stride=1)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):  # inference under autocast keeps bf16
        assert switched(x).dtype == torch.bfloat16
    torch.testing.assert_close(switched(x), plain(x), rtol=0, atol=0)  # fp32 training: the same op
    cast = copy.deepcopy(switched).bfloat16()
    assert cast(x.bfloat16()).dtype == torch.bfloat16  # a model cast to bf16 stays bf16


@pytest.mark.parametrize("name,expected", [("fcaformer_nano", 15), ("crossformer_pp_small", 5),
                                           ("crossformer_tiny", 0), ("crossvit_tiny_240", 0)])
def test_create_model_switches_the_depthwise_convolutions(name, expected):
    model = crossformers.create_model(name, device="meta")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(type(m) is AutocastDepthwiseConv2d for m in convs) == expected
    assert all(type(m) is AutocastDepthwiseConv2d for m in convs if is_depthwise(m))


def test_model_trains_under_autocast_with_fp32_depthwise_gradients():
    model = crossformers.create_model("fcaformer_nano", img_size=32).train()
    x = torch.randn(2, 1, 32, 32)
    with torch.autocast("cpu", torch.bfloat16):
        out = model(x)
    nn.functional.cross_entropy(out.float(), torch.tensor([0, 1])).backward()
    dw = [m for m in model.modules() if type(m) is AutocastDepthwiseConv2d]
    assert dw and all(m.weight.grad is not None and torch.isfinite(m.weight.grad).all() for m in dw)
