"""compile_for_inference: inductor with frozen weights, linear layers lowered to oneDNN (packed weights) on request.

These compile for real with inductor (a C++ compiler is needed), on a small two-layer MLP so that each case takes
seconds; the generated code shows which library the products call.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
import warnings

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_cpp_code

from crossformers.inference import package_cache
from crossformers.inference.compile import compile_for_inference, onednn_weight_packing
from crossformers.layers.linear import onednn_available

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="inductor on CPU needs a C++ compiler")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("ahead_of_time", [True, False])
def test_compiled_linear_layers_call_onednn_with_packed_weights_and_match_eager(ahead_of_time):
    """With oneDNN packing the default is AOTInductor (one package per input shape, no dynamo); the dynamo path packs
    for oneDNN through the switch. Both generate C++ that calls oneDNN's packed linear kernel."""
    model = _mlp()
    x = torch.randn(2, 50, 64)
    with torch.no_grad():
        expected = model(x)
    compiled = compile_for_inference(model, onednn=True, ahead_of_time=ahead_of_time)
    assert compiled.ahead_of_time is ahead_of_time
    out, code = run_and_get_cpp_code(compiled, x)
    assert "_linear_pointwise" in code and "_reorder_linear_weight" in code and "mkl_linear" not in code
    assert ("AOTInductorModel" in code) is ahead_of_time  # the ahead-of-time package, or dynamo's C++ wrapper
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not out.requires_grad and compiled.module is model and not model.training
    assert len(compiled._packages) == int(ahead_of_time)
    # another shape compiles again; a channels-last (non-contiguous) input of a known shape gives the same result
    y = torch.randn(3, 20, 64)
    torch.testing.assert_close(compiled(y), model(y).detach(), atol=1e-5, rtol=1e-5)
    assert len(compiled._packages) == 2 * int(ahead_of_time)
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(compiled(strided), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch._C.has_mkl, reason="inductor's own fp32 lowering is MKL's packed sgemm")
def test_without_the_switch_inductor_keeps_its_mkl_lowering():
    """MKL packing exists only on the dynamo path: the default then is dynamo, and AOTInductor (which packs for
    oneDNN) is refused with MKL asked for explicitly."""
    compiled = compile_for_inference(_mlp(), onednn=False)
    assert not compiled.ahead_of_time
    _, code = run_and_get_cpp_code(compiled, torch.randn(2, 50, 64))
    assert "mkl_linear" in code and "_linear_pointwise" not in code
    with pytest.raises(ValueError, match="ahead_of_time=True packs the linear weights for oneDNN"):
        compile_for_inference(_mlp(), onednn=False, ahead_of_time=True)
    assert compile_for_inference(_mlp(), ahead_of_time=True).onednn  # unspecified packing: oneDNN
    assert not compile_for_inference(_mlp(), onednn=True, dynamic=True).ahead_of_time  # packages are per shape


def test_a_module_torch_export_cannot_trace_takes_the_dynamo_path_with_a_warning():
    class Untraceable(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses it, dynamo breaks the graph
                return x * 2
            return x - 1

    compiled = compile_for_inference(Untraceable(), onednn=True, ahead_of_time=True, fullgraph=False)
    x = torch.ones(2, 3)
    with pytest.warns(RuntimeWarning, match="torch.export could not trace Untraceable"):
        out = compiled(x)
    torch.testing.assert_close(out, x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second attempt: this shape stays on the dynamo path
        torch.testing.assert_close(compiled(-x), -x - 1)


def test_ahead_of_time_specialises_the_first_batch_sizes_then_shares_one_package_with_a_free_batch(monkeypatch):
    """The first SPECIALISED_BATCHES batch sizes of an image size get packages of their own, later ones share one
    exported with a free batch (compiled once); another image size counts afresh; where the free batch cannot be
    exported, each later batch size is specialised."""
    from crossformers.inference import compile as compile_module

    compiled = compile_for_inference(_mlp(), onednn=True, ahead_of_time=True)
    built: list[tuple[tuple[int, ...], bool]] = []

    def fake(x, any_batch=False):
        built.append((tuple(x.shape), any_batch))
        return lambda t, n=len(built): torch.full((t.shape[0], 1), float(n))

    monkeypatch.setattr(compiled, "_compile_ahead_of_time", fake)
    k = compile_module.SPECIALISED_BATCHES
    sizes = list(range(1, k + 4))
    outs = [compiled(torch.randn(b, 50, 64)) for b in sizes + sizes]  # each size twice: no compile the second time
    assert built == [((b, 50, 64), False) for b in sizes[:k]] + [((k + 1, 50, 64), True)]
    assert [o.shape[0] for o in outs] == sizes + sizes and len({o[0, 0].item() for o in outs}) == k + 1
    compiled(torch.randn(9, 20, 64))
    assert built[-1] == ((9, 20, 64), False)  # a new image size: specialised again

    monkeypatch.setattr(compiled, "_compile_ahead_of_time",
                        lambda x, any_batch=False: None if any_batch else fake(x))
    for b in sizes:
        compiled(torch.randn(b, 30, 64))
    assert built[-3:] == [((b, 30, 64), False) for b in sizes[-3:]]  # no free batch: one package per size


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_a_package_with_a_free_batch_serves_every_batch_size():
    model = _mlp()
    compiled = compile_for_inference(model, onednn=True, ahead_of_time=True)
    run = compiled._compile_ahead_of_time(torch.randn(4, 50, 64), any_batch=True)
    assert run is not None
    with torch.no_grad():
        for b in (1, 2, 7):
            x = torch.randn(b, 50, 64)
            torch.testing.assert_close(run(x), model(x), atol=1e-5, rtol=1e-5)


def test_weight_packing_switch_is_scoped():
    from torch._inductor.fx_passes import mkldnn_fusion

    op = mkldnn_fusion.CpuMkldnnDeviceOp
    before = (op.pack_linear_weight, op.pack_linear)
    with onednn_weight_packing() as active:
        assert active and (op.pack_linear_weight, op.pack_linear) != before
    assert (op.pack_linear_weight, op.pack_linear) == before


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_a_model_with_packed_onednn_weights_compiles():
    """optimize_for_inference then compile_for_inference (the eager paths first, as documented): the packed-weight
    layers step aside while dynamo traces instead of breaking the graph, also under torch.inference_mode."""
    from crossformers.inference import optimize_for_inference
    from crossformers.layers import linear

    model = _mlp()
    x = torch.randn(2, 300, 64)  # above linear.MIN_MACS, so eager inference uses the packed weights
    assert x.numel() * 256 >= linear.MIN_MACS
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, onednn_linear=True)
    assert fast[0].pack_weights
    compiled = compile_for_inference(fast, onednn=True)
    with torch.inference_mode():
        out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _small_crossformer(bias_cache: bool) -> nn.Module:
    import crossformers
    from crossformers.inference import set_bias_cache

    torch.manual_seed(0)
    model = crossformers.create_model("crossformer_tiny", img_size=64, embed_dim=16, depths=(1, 2, 1, 1),
                                      num_heads=(1, 2, 2, 4), group_size=(4, 4, 4, 2), num_classes=5).eval()
    set_bias_cache(model, bias_cache)
    return model


def test_the_dynamo_path_takes_the_cached_biases_as_constants_without_recompiling():
    """On the dynamo path the position biases filled by one eager call are constants of the graph: its code has no
    position-bias products (fewer than with the caches off), the result is the eager one, and later calls of the
    same shape reuse the graph (the cached tensors stay the same objects, so dynamo's guards hold)."""
    from torch._dynamo.utils import counters

    x = torch.randn(1, 3, 64, 64)
    codes = {}
    for cache in (False, True):
        torch._dynamo.reset()
        model = _small_crossformer(cache)
        with torch.no_grad():
            expected = model(x)
        compiled = compile_for_inference(model, onednn=False, ahead_of_time=False)
        out, code = run_and_get_cpp_code(compiled, x)
        codes[cache] = code
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        graphs = counters["stats"]["unique_graphs"]
        for _ in range(2):
            torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-5)
        assert counters["stats"]["unique_graphs"] == graphs  # no recompilation
    assert codes[True].count("addmm") < codes[False].count("addmm")


def test_package_key_follows_the_graph_the_weights_and_the_input_spec():
    from crossformers.inference.package_cache import package_key

    model = _mlp().eval()
    with torch.no_grad():
        def key(m, x, **kw):
            return package_key(torch.export.export(m, (x,), **kw), {"freezing": True})

        x = torch.randn(2, 50, 64)
        base = key(model, x)
        assert base == key(copy.deepcopy(model), x) and len(base) == 64  # the same program: the same package
        assert key(model, torch.randn(3, 50, 64)) != base  # another shape
        assert key(model, x, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},)) != base
        changed = copy.deepcopy(model)
        changed[0].weight[0, 0] += 1e-3
        assert key(changed, x) != base  # other weights
        other = copy.deepcopy(model)
        other[1] = nn.ReLU()
        assert key(other, x) != base  # another graph
        assert package_key(torch.export.export(model, (x,)), {"freezing": False}) != base  # other options


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_packages_kept_in_a_cache_directory_are_loaded_instead_of_compiled(tmp_path, monkeypatch):
    """A second compile_for_inference of the same model (a fresh process would be the same) loads the kept package;
    changed weights compile and keep another; a damaged file is compiled again and replaced;
    CROSSFORMERS_COMPILE_CACHE names the default directory; a cache that cannot be written is skipped with a
    warning."""
    import torch._inductor as inductor

    model = _mlp().eval()
    x = torch.randn(2, 50, 64)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(compile_for_inference(model, onednn=True, cache_dir=tmp_path)(x), expected,
                               atol=1e-5, rtol=1e-5)
    kept = list(tmp_path.glob("*.pt2"))
    assert len(kept) == 1 and not [p for p in tmp_path.iterdir() if p.is_dir()]  # no temporary folder left

    real = inductor.aoti_compile_and_package
    monkeypatch.setattr(inductor, "aoti_compile_and_package",
                        lambda *a, **k: pytest.fail("a kept package was compiled again"))
    monkeypatch.setenv("CROSSFORMERS_COMPILE_CACHE", str(tmp_path))
    os.utime(kept[0], (time.time() - 3600, time.time() - 3600))
    again = compile_for_inference(copy.deepcopy(model), onednn=True)
    assert again.cache_dir == tmp_path
    torch.testing.assert_close(again(x), expected, atol=1e-5, rtol=1e-5)
    assert kept[0].stat().st_mtime > time.time() - 600  # loading marked it used

    monkeypatch.setattr(inductor, "aoti_compile_and_package", real)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[2].bias.add_(1.0)
        torch.testing.assert_close(compile_for_inference(changed, onednn=True)(x), changed(x), atol=1e-5, rtol=1e-5)
    assert len(list(tmp_path.glob("*.pt2"))) == 2
    with monkeypatch.context() as bound, torch.no_grad():  # a bound below one package: only the new one stays
        bound.setattr(package_cache, "cache_limit_bytes", lambda: 1)
        newer = copy.deepcopy(changed)
        newer[2].bias.add_(1.0)
        torch.testing.assert_close(compile_for_inference(newer, onednn=True)(x), newer(x), atol=1e-5, rtol=1e-5)
    assert len(list(tmp_path.glob("*.pt2"))) == 1 and not kept[0].exists()
    kept[0].write_bytes(b"not a package")  # damaged (here: in place of the evicted one): compiled again, replaced
    with pytest.warns(RuntimeWarning, match="could not load the cached package"):
        torch.testing.assert_close(compile_for_inference(copy.deepcopy(model), onednn=True)(x), expected,
                                   atol=1e-5, rtol=1e-5)
    assert kept[0].stat().st_size > 1000
    monkeypatch.delenv("CROSSFORMERS_COMPILE_CACHE")
    assert compile_for_inference(model, onednn=True).cache_dir is None
    blocked = tmp_path / "a file"
    blocked.write_text("")
    unwritable = compile_for_inference(copy.deepcopy(changed), onednn=True, cache_dir=blocked / "cache")
    with pytest.warns(RuntimeWarning, match="cannot write the compile cache .*compiling without it"):
        torch.testing.assert_close(unwritable(x), changed(x).detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch._C.has_mkl, reason="the dynamo path with inductor's MKL lowering")
def test_the_dynamo_path_checks_only_tensor_guards_and_keeps_each_model_apart():
    """Dynamo's guards on module attributes are skipped (tensor guards only), so each compile has a cache of its own:
    two models of the same class give their own outputs, and a new input shape still compiles anew."""
    from crossformers.inference.compile import tensor_guards_only

    assert tensor_guards_only().get("isolate_recompiles") is True  # the pinned PyTorch has both
    a, b = _mlp(), _mlp()
    with torch.no_grad():
        b[2].bias.add_(1.0)
    ca = compile_for_inference(a, onednn=False, ahead_of_time=False)
    cb = compile_for_inference(b, onednn=False, ahead_of_time=False)
    x, y = torch.randn(2, 50, 64), torch.randn(3, 20, 64)
    with torch.no_grad():
        for t in (x, y, x):
            torch.testing.assert_close(ca(t), a(t), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cb(t), b(t), atol=1e-5, rtol=1e-5)


def test_the_compile_cache_keeps_the_most_recently_used_packages_within_its_bound(tmp_path, monkeypatch):
    """Eviction deletes the least recently used packages (modification time) beyond the bound, never the package
    just written and nothing but packages; the bound comes from CROSSFORMERS_COMPILE_CACHE_MAX_MB (0: none), and a
    bad value is refused as soon as a cache is named, before any compiling."""
    from crossformers.inference.package_cache import CompileCacheError, cache_limit_bytes, evict, resolve_cache_dir

    now = time.time()
    for age, name in enumerate(["new", "mid", "old", "oldest"]):
        path = tmp_path / f"{name}.pt2"
        path.write_bytes(b"x" * 100)
        os.utime(path, (now - 60 * age, now - 60 * age))
    (tmp_path / "notes.txt").write_bytes(b"x" * 1000)
    assert evict(tmp_path, limit_bytes=250) == [tmp_path / "oldest.pt2", tmp_path / "old.pt2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.pt2", "new.pt2", "notes.txt"]
    assert evict(tmp_path, keep=tmp_path / "mid.pt2", limit_bytes=50) == [tmp_path / "new.pt2"]
    assert (tmp_path / "mid.pt2").exists()  # the package just written stays, even above the bound

    monkeypatch.delenv(package_cache.CACHE_MAX_ENV, raising=False)
    assert cache_limit_bytes() == package_cache.DEFAULT_MAX_MB << 20
    monkeypatch.setenv(package_cache.CACHE_MAX_ENV, "0")
    assert cache_limit_bytes() is None and evict(tmp_path, limit_bytes=None) == []
    monkeypatch.setenv(package_cache.CACHE_MAX_ENV, "12")
    assert cache_limit_bytes() == 12 << 20
    monkeypatch.setenv(package_cache.CACHE_MAX_ENV, "2 GB")
    with pytest.raises(CompileCacheError, match=r"CROSSFORMERS_COMPILE_CACHE_MAX_MB='2 GB' is not a size in MiB"):
        compile_for_inference(_mlp(), onednn=True, cache_dir=tmp_path)
    monkeypatch.delenv(package_cache.CACHE_ENV, raising=False)
    assert resolve_cache_dir(None) is None  # no cache: the bound is not read
