"""Packed oneDNN weights (layers.linear.set_packed_weights): same results as the unpacked product, rebuilt whenever
the weight changes, used only without autograd, freed by train() and never pickled; the kernel a model uses is
visible in its repr and its ``linear_kernel`` attribute."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import crossformers
from crossformers.layers import linear as onednn
from crossformers.layers.linear import OneDNNLinear, set_onednn_linear, set_packed_weights

pytestmark = pytest.mark.skipif(not onednn.onednn_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture(autouse=True)
def every_product_to_onednn(monkeypatch):
    """These small products are below the size threshold; send them to oneDNN anyway."""
    monkeypatch.setattr(onednn, "MIN_MACS", 0)


def _packed_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 256), nn.GELU(), nn.Linear(256, 96))
    set_onednn_linear(model)
    return set_packed_weights(model)


def _cache(model: nn.Module) -> list:
    return [m.__dict__.get("_packed") for m in model.modules() if isinstance(m, OneDNNLinear)]


def test_packed_product_equals_plain_linear_for_any_row_count():
    model = _packed_mlp().eval()
    plain = set_onednn_linear(copy.deepcopy(model), False)
    for shape in ((1, 96), (3, 50, 96), (2, 1000, 96)):  # other row counts than the one packed for
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)
        assert all(c is not None for c in _cache(model))


def test_packed_weights_follow_loaded_and_in_place_updated_weights():
    model = _packed_mlp().eval()
    x = torch.randn(4, 40, 96)
    with torch.inference_mode():
        before = model(x)
    other = _packed_mlp()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-0.5)
    model.load_state_dict(other.state_dict())  # an in-place copy: same storage, new version
    plain = set_onednn_linear(copy.deepcopy(other), False).eval()
    with torch.inference_mode():
        after = model(x)
        torch.testing.assert_close(after, plain(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after, before)
    with torch.no_grad():
        model[0].weight.zero_()  # an optimizer-style in-place update
        model[0].bias.zero_()
        torch.testing.assert_close(model[0](x), torch.zeros(4, 40, 256))


def test_packing_needs_no_grad_and_train_frees_it():
    model = _packed_mlp().eval()
    x = torch.randn(2, 64, 96, requires_grad=True)
    model(x).sum().backward()  # autograd on: the plain weight, gradients flow
    assert model[0].weight.grad is not None
    assert all(c is None for c in _cache(model))
    with torch.no_grad():
        model(x)
    assert all(c is not None for c in _cache(model))
    model.train()
    assert all(c is None for c in _cache(model))
    model.eval()
    with torch.no_grad():
        model(x)
    set_packed_weights(model, False)
    assert all(c is None for c in _cache(model)) and not model[0].pack_weights


def test_models_with_packed_weights_copy_and_pickle_without_the_cache():
    model = _packed_mlp().eval()
    x = torch.randn(2, 64, 96)
    with torch.no_grad():
        expected = model(x)
    assert all(c is not None for c in _cache(model))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(c is None for c in _cache(clone)) and clone[0].pack_weights
        with torch.no_grad():
            torch.testing.assert_close(clone(x), expected)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert set(torch.load(io.BytesIO(buf.getvalue()), weights_only=True)) == set(model.state_dict())
    assert all(c is not None for c in _cache(model))  # the original keeps its cache


def test_switching_back_to_nn_linear_drops_packing_state():
    model = _packed_mlp().eval()
    with torch.no_grad():
        model(torch.randn(2, 64, 96))
    set_onednn_linear(model, False)
    assert type(model[0]) is nn.Linear
    assert "_packed" not in model[0].__dict__ and "pack_weights" not in model[0].__dict__


@pytest.mark.parametrize("in_features,out_features", [(48, 160), (160, 48), (64, 64)])
def test_onednn_backward_products_equal_autograd_of_f_linear(in_features, out_features):
    """Both weight-gradient layouts (larger of in/out features as oneDNN's output channels) and the input gradient."""
    torch.manual_seed(0)
    x = torch.randn(3, 70, in_features, requires_grad=True)
    w = torch.randn(out_features, in_features, requires_grad=True)
    b = torch.randn(out_features, requires_grad=True)
    grad = torch.randn(3, 70, out_features)
    got = torch.autograd.grad(onednn.fast_linear(x, w, b), (x, w, b), grad)
    want = torch.autograd.grad(torch.nn.functional.linear(x, w, b), (x, w, b), grad)
    for g, r in zip(got, want, strict=True):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,kwargs", [
    ("crossformer_tiny", dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), img_size=64)),
    ("fcaformer_l1", dict(embed_dim=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(0, 0, 2, 2))),
    ("fcaformer_l0", dict(embed_dim=32, depth=2, num_heads=2, img_size=64)),
    ("crossvit_tiny_240", dict(img_size=48, img_scale=(1.0, 32 / 48), embed_dim=(16, 32), num_heads=(2, 2),
                               depth=((1, 1, 0), (1, 1, 0)), mlp_ratio=(2, 2, 1))),
])
def test_linear_kernel_is_visible_in_repr_and_attribute(name, kwargs):
    model = crossformers.create_model(name, onednn_linear=True, **kwargs)
    assert model.linear_kernel == "onednn"
    linear = next(m for m in model.modules() if isinstance(m, OneDNNLinear))
    assert repr(linear) == (f"OneDNNLinear(in_features={linear.in_features}, out_features={linear.out_features}, "
                            "bias=True, kernel=onednn)")
    assert "kernel=onednn" in repr(model)
    set_packed_weights(model)
    assert repr(linear).endswith("kernel=onednn, packed_weights=True)")
    size = 48 if name.startswith("crossvit") else 64
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = model.eval()(x)
    model.linear_kernel = "native"  # the documented way off, per model
    assert model.linear_kernel == "native" and "kernel=onednn" not in repr(model)
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    assert crossformers.create_model(name, onednn_linear=False, **kwargs).linear_kernel == "native"
    with pytest.raises(ValueError, match="linear_kernel must be one of onednn, native, got 'mkl'"):
        model.linear_kernel = "mkl"
