"""The cross-scale embedding's wide-kernel convolution: space-to-depth weight gradient (layers/embed.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from crossformers.layers.embed import WIDE_KERNEL_FACTOR, CrossScaleEmbedding, WideKernelConv2d


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal within float rounding of sums taken in another order: max |a - b| <= rel * max |b|."""
    assert (a - b).abs().max() <= rel * b.abs().max(), ((a - b).abs().max(), b.abs().max())


def _pair(c_in: int, c_out: int, k: int, s: int, bias: bool = True):
    torch.manual_seed(0)
    wide = WideKernelConv2d(c_in, c_out, k, stride=s, padding=(k - s) // 2, bias=bias)
    plain = nn.Conv2d(c_in, c_out, k, stride=s, padding=(k - s) // 2, bias=bias)
    plain.load_state_dict(wide.state_dict())
    return wide, plain


@pytest.mark.parametrize("k,s,size,bias", [(32, 4, (64, 64), True), (16, 4, (50, 37), True), (8, 2, (21, 30), False),
                                          (12, 3, (40, 41), True)])
def test_gradients_equal_the_plain_convolution(k, s, size, bias):
    wide, plain = _pair(3, 5, k, s, bias)
    x = torch.randn(2, 3, *size)
    xw, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    yw, yp = wide(xw), plain(xp)
    torch.testing.assert_close(yw, yp, rtol=0, atol=0)  # the forward pass is the plain convolution
    g = torch.randn_like(yp)
    yw.backward(g)
    yp.backward(g)
    _close(wide.weight.grad, plain.weight.grad)
    _close(xw.grad, xp.grad)
    if bias:
        _close(wide.bias.grad, plain.bias.grad)


def test_weight_gradient_without_input_gradient():
    wide, plain = _pair(3, 4, 32, 4)
    x = torch.randn(1, 3, 48, 48)  # an image: no gradient of its own
    wide(x).square().sum().backward()
    plain(x).square().sum().backward()
    _close(wide.weight.grad, plain.weight.grad)


def test_space_to_depth_path_is_taken_only_in_fp32_training(monkeypatch):
    from crossformers.layers import embed

    calls = []
    original = embed._WideKernelConv.apply
    monkeypatch.setattr(embed._WideKernelConv, "apply", lambda *a: calls.append(1) or original(*a))
    wide, _ = _pair(3, 4, 16, 4)
    x = torch.randn(1, 3, 32, 32)
    wide(x)
    assert calls == [1]
    with torch.no_grad():
        wide(x)
    with torch.autocast("cpu", torch.bfloat16):
        assert wide(x).dtype == torch.bfloat16
    wide.weight.requires_grad_(False)
    wide(x)
    assert calls == [1]


def test_cel_uses_it_for_wide_kernels_only_and_keeps_the_state_dict():
    cel = CrossScaleEmbedding(3, 64, (4, 8, 16, 32), stride=4)
    assert [type(p) for p in cel.projs] == [nn.Conv2d, nn.Conv2d, WideKernelConv2d, WideKernelConv2d]
    assert all(p.kernel_size[0] >= WIDE_KERNEL_FACTOR * 4 for p in cel.projs if type(p) is WideKernelConv2d)
    plain = copy.deepcopy(cel)
    for p in plain.projs:
        p.__class__ = nn.Conv2d
    assert cel.state_dict().keys() == plain.state_dict().keys()


def test_bad_configuration_names_the_fix():
    with pytest.raises(ValueError, match="use nn.Conv2d"):
        WideKernelConv2d(3, 4, 10, stride=4)
    with pytest.raises(ValueError, match="use nn.Conv2d"):
        WideKernelConv2d(4, 4, 16, stride=4, groups=2)


def test_token_map_conv_caches_a_channels_last_weight_in_inference():
    from crossformers.layers.embed import TokenMapConv2d

    torch.manual_seed(0)
    conv = TokenMapConv2d(16, 8, 4, stride=2, padding=1).eval()
    plain = nn.Conv2d(16, 8, 4, stride=2, padding=1)
    plain.load_state_dict(conv.state_dict())
    assert conv.state_dict().keys() == plain.state_dict().keys()  # the cache adds no keys
    x = torch.randn(2, 12, 12, 16).permute(0, 3, 1, 2)  # a token map seen as NCHW

    def cached():
        entries = list(conv.weight_cache._store.values())
        assert len(entries) <= 1
        return entries[0] if entries else None

    with torch.no_grad():
        y = conv(x)
        torch.testing.assert_close(y, plain(x), rtol=0, atol=0)
        first = cached()
        if torch.backends.mkldnn.is_available():  # fp32: the weight packed once in oneDNN's layout
            assert first is not None and first.layout == torch._mkldnn and first.shape == conv.weight.shape
            for size in ((3, 7, 9, 16), (1, 5, 5, 16)):  # packed again for another input size, only the last kept
                other = torch.randn(size).permute(0, 3, 1, 2)
                torch.testing.assert_close(conv(other), plain(other), rtol=0, atol=0)
                assert [k[0][1] for k in conv.weight_cache._store] == [(size[0], size[3], size[1], size[2])]
            conv(x)
            first = cached()
        else:
            assert first is not None and first.is_contiguous(memory_format=torch.channels_last)
        conv(x)
        assert cached() is first  # reused
        conv.weight.mul_(2)  # an in-place update: the cache misses and copies again
        plain.weight.mul_(2)
        torch.testing.assert_close(conv(x), plain(x), rtol=0, atol=0)
        assert any(v is not first for v in conv.weight_cache._store.values())
    assert len(copy.deepcopy(conv).weight_cache) == 0
    with torch.no_grad():  # other dtypes keep a channels-last copy of the weight
        low = copy.deepcopy(conv).to(torch.bfloat16)
        low(x.to(torch.bfloat16))
        (entry,) = low.weight_cache._store.values()
        assert entry.dtype == torch.bfloat16 and entry.is_contiguous(memory_format=torch.channels_last)
    conv.train()
    assert len(conv.weight_cache) == 0
    out = conv(x)  # training with gradients: the plain convolution, nothing cached, the weight gets its gradient
    assert len(conv.weight_cache) == 0 and out.requires_grad
    out.sum().backward()
    assert conv.weight.grad is not None
    conv.eval()
    with torch.no_grad():
        conv(x.contiguous())  # a contiguous NCHW input needs no channels-last weight
    assert len(conv.weight_cache) == 0


def test_patch_merging_uses_token_map_convolutions():
    from crossformers.layers.embed import TokenMapConv2d

    merge = CrossScaleEmbedding(64, 128, (2, 4), stride=2, norm_layer=nn.LayerNorm, norm_first=True,
                                input_fmt="NHWC")
    assert all(type(p) is TokenMapConv2d for p in merge.projs)
    x = torch.randn(1, 8, 8, 64)
    plain = copy.deepcopy(merge)
    for p in plain.projs:
        p.__class__ = nn.Conv2d
    with torch.no_grad():
        torch.testing.assert_close(merge(x), plain(x), rtol=0, atol=0)


def test_stem_convolves_images_channels_last_on_the_cpu(monkeypatch):
    from crossformers.layers import embed

    torch.manual_seed(0)
    stem = CrossScaleEmbedding(3, 32, (4, 8, 16, 32), stride=4, norm_layer=nn.LayerNorm)
    seen = []
    for p in stem.projs:
        p.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)
                                                            and not a[0].is_contiguous()))
    x = torch.randn(2, 3, 40, 36)
    y = stem(x)
    assert seen == [True] * 4
    assert y.shape == (2, 10, 9, 32) and y.is_contiguous()  # tokens without a copy
    plain = torch.cat([nn.functional.conv2d(x, p.weight, p.bias, p.stride, p.padding) for p in stem.projs], 1)
    _close(y, stem.norm(plain.permute(0, 2, 3, 1)))
    y.sum().backward()  # training keeps the input's gradient path
    assert all(p.weight.grad is not None for p in stem.projs)
    seen.clear()
    monkeypatch.setattr(embed, "tool_is_running", lambda: True)
    stem(x)
    assert seen == [False] * 4  # compilers, exporters and tracers see the input as given
