"""Every inference fast path computes the plain path's function (max abs difference <= 1e-4).

Plain path: explicit softmax attention, position biases recomputed in every forward, BatchNorms and layer scales
unfolded, ``nn.Linear`` through ``F.linear``, default (NCHW) memory format. Fast paths, one at a time and all
together: fused SDPA attention, cached biases, Conv-BN/layer-scale folding (``crossformers.inference.fuse``), oneDNN
linear layers, channels-last; and optimize_for_inference (all of them, channels-last where it helps).
"""
from __future__ import annotations

import copy
import statistics
from pathlib import Path

import pytest
import timm
import torch
from profiling_cases import CASES, fixture_model, one_thread  # noqa: F401  (autouse fixture)

import crossformers
from crossformers.layers import linear as onednn
from crossformers.layers.linear import OneDNNLinear, OneDNNMlp, set_onednn_linear, set_packed_weights
from crossformers.profiling import (
    fuse,
    optimize_for_inference,
    optimize_for_training,
    set_bias_cache,
    set_channels_last,
)

ATOL = 1e-4


def plain(model: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(model).eval()
    model.set_fused_attn(False)
    set_bias_cache(model, False)
    set_onednn_linear(model, False)  # models are created with it on AVX-512 CPUs
    return model


def fast(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """A copy of the plain ``model`` with one fast path (or 'all') switched on."""
    model = copy.deepcopy(model).eval()
    if path in ("fused_attn", "all"):
        model.set_fused_attn(True)
    if path in ("bias_cache", "all"):
        set_bias_cache(model, True)
    if path in ("fuse", "all"):
        fuse(model)
    if path in ("onednn_linear", "packed_weights", "all"):
        set_onednn_linear(model)
    if path in ("packed_weights", "all"):
        set_packed_weights(model)
    if path in ("channels_last", "all"):
        set_channels_last(model)
    if path == "optimize":
        optimize_for_inference(model)
    return model


def run(model: torch.nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    if path in ("channels_last", "all"):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = model(x)
        second = model(x)  # with the bias cache: served from the cache
    if path in ("bias_cache", "all", "optimize"):
        assert any(getattr(m, "bias_cache", None) for m in model.modules()) or not any(
            hasattr(m, "bias_cache") for m in model.modules())
    torch.testing.assert_close(second, first, rtol=0, atol=1e-6)
    return second


PATHS = ["fused_attn", "bias_cache", "fuse", "onednn_linear", "packed_weights", "channels_last", "all", "optimize"]


@pytest.fixture
def force_onednn(monkeypatch):
    """Use oneDNN for every product (the tiny fixture models are below the size threshold)."""
    monkeypatch.setattr(onednn, "MIN_MACS", 0)


@pytest.mark.parametrize("case", CASES)
def test_fast_paths_equal_plain_on_parity_fixtures(case, force_onednn):
    model, x, ref = fixture_model(case)
    base = plain(model)
    with torch.no_grad():
        expected = base(x)
    torch.testing.assert_close(expected, ref, atol=1e-4, rtol=1e-4)  # the plain path is the official function
    for path in PATHS:
        got = run(fast(base, path), x, path)
        diff = (got - expected).abs().max().item()
        assert diff <= ATOL, f"{case}: fast path {path} differs from the plain path by {diff:.2e}"


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (layer scales ~1, positive BN variances) so that every branch matters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "ls1.gamma", "ls2.gamma")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and ("norm" in name or "bn" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


SMALL = {
    "crossformer": ("crossformer_pp_small", dict(img_size=64, embed_dim=16, depths=(1, 2, 4, 1), num_heads=(2, 2, 4, 4),
                                                 group_size=(4, 4, 4, 4), interval=(4, 2, 1, 1), num_classes=5)),
    "fcaformer": ("fcaformer_l1", dict(img_size=64, embed_dim=(16, 32, 48, 64), depths=(1, 1, 3, 2),
                                       num_heads=(0, 0, 2, 4), num_classes=5)),
    "fcaformer_plain": ("fcaformer_l0", dict(img_size=64, embed_dim=32, depth=3, num_heads=2, num_classes=5)),
    "crossvit": ("crossvit_9_dagger_240", dict(img_size=48, img_scale=(1.0, 32 / 48), patch_size=(12, 16),
                                               embed_dim=(16, 32), num_heads=(2, 2), depth=((1, 1, 0), (1, 1, 0)),
                                               mlp_ratio=(2, 2, 1), num_classes=5)),
}


@pytest.mark.parametrize("family", sorted(SMALL))
@pytest.mark.parametrize("size", [(64, 64), (80, 48)])
def test_fast_paths_equal_plain_on_random_inputs(family, size, force_onednn):
    """Random weights and inputs at two sizes (the second is non-square and not a multiple of the group extents:
    padding masks in CrossFormer, resampled tables in FcaFormer), batch 2."""
    name, kwargs = SMALL[family]
    base = plain(_randomize(crossformers.create_model(name, **kwargs)))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = base(x)
    for path in PATHS:
        got = run(fast(base, path), x, path)
        diff = (got - expected).abs().max().item()
        assert diff <= ATOL, f"{family} {size}: fast path {path} differs from the plain path by {diff:.2e}"


def test_fuse_folds_conv_bn_and_layer_scales():
    from timm.layers import ConvNormAct, LayerScale

    model = _randomize(crossformers.create_model("fcaformer_l1", **SMALL["fcaformer"][1]))
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0
    model.train()
    fused = fuse(model)
    assert fused is model and not fused.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert not any(isinstance(m, LayerScale) for m in fused.modules())
    assert all(m.conv.bias is not None for m in fused.modules() if isinstance(m, ConvNormAct))
    copied = fuse(_randomize(crossformers.create_model("fcaformer_l1", **SMALL["fcaformer"][1])), inplace=False)
    assert copied is not None


def test_training_fast_paths_are_reversible_and_train_alike(force_onednn):
    """optimize_for_training (oneDNN linear: a class swap, same state dict; channels-last): forward and gradients
    equal the plain path's; the oneDNN switch goes back."""
    model = _randomize(crossformers.create_model("fcaformer_l1", **SMALL["fcaformer"][1])).train()
    ref = copy.deepcopy(model)
    keys = list(model.state_dict())
    optimize_for_training(model, onednn_linear=True)
    assert model.training and model.channels_last
    assert any(isinstance(m, OneDNNLinear) for m in model.modules())
    assert any(isinstance(m, OneDNNMlp) for m in model.modules())
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 64, 64)
    for m in (model, ref):
        m.zero_grad()
        m(x).square().sum().backward()
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-3, msg=n)
    set_onednn_linear(model, False)
    assert not any(isinstance(m, (OneDNNLinear, OneDNNMlp)) for m in model.modules())


def test_onednn_linear_skips_small_and_non_fp32_products():
    x = torch.randn(4, 8)
    w = torch.randn(3, 8)
    assert not onednn._use_onednn(x, w)  # 96 MACs: below the threshold
    big = torch.randn(512, 512)
    assert onednn._use_onednn(big, torch.randn(512, 512)) == onednn.onednn_available()
    assert not onednn._use_onednn(big.bfloat16(), torch.randn(512, 512).bfloat16())


def _uses(model: torch.nn.Module) -> bool:
    return any(isinstance(m, (OneDNNLinear, OneDNNMlp)) for m in model.modules())


@pytest.mark.skipif(not onednn.onednn_available(), reason="this PyTorch build has no oneDNN")
def test_create_model_switches_onednn_linear_by_default_with_opt_outs(monkeypatch):
    small = dict(SMALL["crossformer"][1])
    monkeypatch.delenv("CROSSFORMERS_ONEDNN_LINEAR", raising=False)
    expected = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert onednn.onednn_by_default() == expected
    assert _uses(crossformers.create_model("crossformer_tiny", **small)) == expected
    assert _uses(timm.create_model("crossformer_tiny", **small)) == expected  # timm's path builds through ours
    assert not _uses(crossformers.create_model("crossformer_tiny", onednn_linear=False, **small))
    assert _uses(crossformers.create_model("crossformer_tiny", onednn_linear=True, **small))
    monkeypatch.setenv("CROSSFORMERS_ONEDNN_LINEAR", "0")
    assert not _uses(crossformers.create_model("crossformer_tiny", **small))
    monkeypatch.setenv("CROSSFORMERS_ONEDNN_LINEAR", "1")
    model = crossformers.create_model("crossformer_tiny", **small)
    assert _uses(model)
    ref = crossformers.create_model("crossformer_tiny", onednn_linear=False, **small)
    assert list(model.state_dict()) == list(ref.state_dict())  # a class swap: same keys and shapes


def test_onednn_linear_steps_aside_while_exporting():
    big = torch.randn(512, 512)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(onednn._use_onednn(x, big))
            return x + 1

    torch.export.export(Probe(), (big,))
    assert seen and not any(seen)


def test_flop_counters_see_plain_linear_layers(force_onednn):
    """Under FlopCounterMode (a dispatch mode) the oneDNN path steps aside: raw counts equal the plain model's."""
    from torch.utils.flop_counter import FlopCounterMode

    name, kwargs = SMALL["crossformer"]
    fast_model = crossformers.create_model(name, onednn_linear=True, **kwargs).eval()
    plain_model = crossformers.create_model(name, onednn_linear=False, **kwargs).eval()
    plain_model.load_state_dict(fast_model.state_dict())
    counts = []
    for m in (fast_model, plain_model):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(torch.randn(1, 3, 64, 64))
        counts.append(fc.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.fixture
def calibration_file(monkeypatch, tmp_path) -> Path:
    """A fresh calibration record path for this test (CROSSFORMERS_LINEAR_CALIBRATION), no forced linear path; skips
    without oneDNN."""
    if not onednn.onednn_available():
        pytest.skip("no oneDNN in this build")
    path = tmp_path / "linear_kernel.json"
    monkeypatch.setenv("CROSSFORMERS_LINEAR_CALIBRATION", str(path))
    monkeypatch.delenv("CROSSFORMERS_ONEDNN_LINEAR", raising=False)
    return path


def test_a_recorded_calibration_decides_the_default_linear_path(monkeypatch, capsys, calibration_file,
                                                                 retain_memory_calls):
    """`profile --calibrate-linear` times whole models on MKL and oneDNN and records the faster paths for this
    machine and thread count; new models and optimize_for_inference then follow them (the environment variable still
    overrides); another machine's record is ignored."""
    import json

    from crossformers.cli import main
    from crossformers.inference import optimize_for_inference
    from crossformers.layers import linear_calibration as cal
    from crossformers.profiling import calibrate

    path = calibration_file
    rule = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert cal.calibrated_choice() is None and onednn.onednn_by_default() == rule  # nothing recorded: the rule
    assert onednn.onednn_for_inference() == rule and onednn.onednn_default_reason().startswith("AVX-512 rule")

    name, kw = SMALL["crossformer"]
    alternating = calibrate.time_alternating
    paired, paired_bounds = {}, {}

    def spy(calls, rounds, **kw_):  # records what the per-round ratios were
        times = alternating(calls, rounds, **kw_)
        for key, (num, den) in {"ratio": ("onednn", "mkl"), "packed_ratio": ("opt_onednn_packed", "opt_mkl"),
                                "train_ratio": ("train_onednn", "train_mkl")}.items():
            if num in times:
                per_round = [a / b for a, b in zip(times[num], times[den], strict=True)]
                paired[key], paired_bounds[key] = statistics.median(per_round), (min(per_round), max(per_round))
        return times

    monkeypatch.setattr(calibrate, "time_alternating", spy)
    r = calibrate.calibrate_linear(threads=1, rounds=3, models=(name,), model_kwargs={name: kw}, train_rounds=2,
                                   train_batch=2)
    monkeypatch.setattr(calibrate, "time_alternating", alternating)
    m = r["models"][name]
    assert r["threads"] == 1 and m["mkl_ms"] > 0 and m["onednn_ms"] > 0 and m["train_mkl_ms"] > 0
    for key in ("ratio", "packed_ratio", "train_ratio"):
        # paired over rounds, not a ratio of the medians: within the range of the rounds' ratios
        assert m[key] == pytest.approx(paired[key]) and paired_bounds[key][0] <= m[key] <= paired_bounds[key][1]
    assert (r["choice"] == "onednn") == (r["ratio"] < calibrate.MARGIN)
    assert (r["inference_choice"] == "onednn_packed") == (r["packed_ratio"] < calibrate.MARGIN)
    assert (r["train_choice"] == "onednn") == (r["train_ratio"] < calibrate.MARGIN)
    doc = json.loads(path.read_text())
    assert doc[cal.machine_key()]["1"]["choice"] == r["choice"]
    assert doc[cal.machine_key()]["1"]["train_choice"] == r["train_choice"]
    assert "train_choice" not in calibrate.calibrate_linear(threads=1, rounds=1, models=(name,), write=False,
                                                            model_kwargs={name: kw}, train_rounds=0)

    small = dict(kw)
    for choice in ("mkl", "onednn"):  # a recorded choice, whatever the measurement said
        doc[cal.machine_key()] = {str(torch.get_num_threads()): {
            "choice": choice, "inference_choice": "onednn_packed" if choice == "onednn" else "mkl"}}
        path.write_text(json.dumps(doc))
        assert onednn.onednn_by_default() == onednn.onednn_for_inference() == (choice == "onednn")
        assert onednn.onednn_default_reason() == f"calibrated for {torch.get_num_threads()} thread(s) in {path}"
        assert _uses(crossformers.create_model(name, **small)) == (choice == "onednn")
        fast = optimize_for_inference(crossformers.create_model(name, onednn_linear=False, **small))
        assert _uses(fast) == (choice == "onednn")  # the measured path, not oneDNN regardless
        assert onednn.onednn_for_training() == (choice == "onednn")  # no training record: the default's choice
        monkeypatch.setenv("CROSSFORMERS_ONEDNN_LINEAR", "1" if choice == "mkl" else "0")
        assert onednn.onednn_by_default() == onednn.onednn_for_inference() == (choice == "mkl")  # the variable wins
        assert onednn.onednn_for_training() == (choice == "mkl")
        assert onednn.onednn_default_reason().startswith("CROSSFORMERS_ONEDNN_LINEAR=")
        monkeypatch.delenv("CROSSFORMERS_ONEDNN_LINEAR")
    for train in ("mkl", "onednn"):  # training has its own record, which can differ from the inference choices
        doc[cal.machine_key()] = {str(torch.get_num_threads()): {
            "choice": "onednn", "inference_choice": "onednn_packed", "train_choice": train}}
        path.write_text(json.dumps(doc))
        assert onednn.onednn_by_default() and onednn.onednn_for_inference()
        assert onednn.onednn_for_training() == cal.calibrated_training_choice() == (train == "onednn")
        made = crossformers.create_model(name, **small)
        assert _uses(made) and _uses(optimize_for_training(made)) == (train == "onednn")  # switched either way
        assert _uses(optimize_for_training(made, onednn_linear=True))
    path.write_text(json.dumps({"another CPU | torch 0 | AVX2": {str(torch.get_num_threads()): {"choice": "mkl"}}}))
    assert cal.calibrated_choice() is None and onednn.onednn_by_default() == rule
    # a CPU of the same model name but another microarchitecture (a VM names a Zen 4 and a Zen 5 "AMD EPYC" alike)
    with monkeypatch.context() as other:
        here = cal.cpu_signature()  # one model number on from this CPU's, whatever CPU runs the test
        other.setattr(cal, "cpu_signature", lambda: f"{here.rsplit(' ', 1)[0]} {int(here.rsplit(' ', 1)[1]) + 1}"
                      if here else "AuthenticAMD family 26 model 2")
        path.write_text(json.dumps({cal.machine_key(): {str(torch.get_num_threads()): {"choice": "mkl"}}}))
    assert cal.calibrated_choice() is None
    path.write_text("not json")
    assert cal.calibrated_choice() is None and cal.calibrated_inference_choice() is None  # unreadable: none

    path.unlink()
    monkeypatch.setattr(calibrate, "CALIBRATION_MODELS", (name,))
    real = calibrate.calibrate_linear
    monkeypatch.setattr(calibrate, "calibrate_linear", lambda threads=None, compile_rounds=0: real(
        threads=threads, rounds=1, models=(name,), model_kwargs={name: kw}, train_rounds=1, train_batch=2,
        compile_rounds=compile_rounds))
    calls = len(retain_memory_calls)
    assert main(["profile", "--calibrate-linear", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"recorded in {path}" in out and "other modules use" in out and "training step of" in out
    assert f"models of {name}'s family: new models" in out  # each family's own choices
    assert retain_memory_calls[calls:] == [True]  # timed in the allocator setting the commands run in
    recorded = json.loads(path.read_text())[cal.machine_key()]["1"]
    assert recorded["inference_choice"] in ("mkl", "onednn_packed")
    assert isinstance(recorded["freed_memory_retained"], bool) and "; freed memory " in out
    assert main(["profile", "--calibrate-linear", "--threads", "1", "--no-retain-freed-memory"]) == 0
    assert retain_memory_calls[calls:] == [True]


def test_compile_for_inference_follows_its_own_calibrated_packing(monkeypatch, capsys, calibration_file):
    """Compiled models have their own calibration (`profile --calibrate-linear --compile`): inductor's packed products
    are other kernels than the eager ones, and their winner can differ (the AMD EPYC Zen 4 of docs/profiling.md).
    compile_for_inference packs for the family's recorded winner, a family not timed takes the combined compiled
    choice, a record without compiled times keeps the eager default, and the environment variable still wins."""
    import json

    from crossformers.cli import main
    from crossformers.inference import compile_for_inference
    from crossformers.layers import linear_calibration as cal
    from crossformers.profiling import calibrate

    path = calibration_file
    cf_name, cf_kw = SMALL["crossformer"]
    fca_name, fca_kw = SMALL["fcaformer"]
    cf = crossformers.create_model(cf_name, onednn_linear=False, **cf_kw)
    fca = crossformers.create_model(fca_name, onednn_linear=False, **fca_kw)

    def write(record):
        path.write_text(json.dumps({cal.machine_key(): {str(torch.get_num_threads()): record}}))

    eager_only = {"choice": "mkl", "inference_choice": "mkl", "models": {"crossformer_tiny": {"ratio": 1.1}}}
    write(eager_only)  # no compiled times: compile follows the eager choice, as before such records existed
    assert cal.calibrated_compile_choice() is None and not onednn.onednn_by_default(cf)
    assert not onednn.onednn_for_compile(cf) and not compile_for_inference(cf).onednn
    record = {**eager_only, "compile_choice": "mkl",
              "models": {"crossformer_tiny": {"ratio": 1.1, "compile_ratio": 0.76}}}
    write(record)  # eager MKL, compiled oneDNN: each path its own winner
    assert not onednn.onednn_by_default(cf) and onednn.onednn_for_compile(cf) and compile_for_inference(cf).onednn
    assert not onednn.onednn_for_compile(fca) and not compile_for_inference(fca).onednn  # not timed: combined
    write({**record, "compile_choice": "onednn_packed",
           "models": {"crossformer_tiny": {"ratio": 1.1, "compile_ratio": 0.98}}})  # a tie keeps MKL (MARGIN)
    assert onednn.onednn_for_compile(fca) and not onednn.onednn_for_compile(cf)
    assert compile_for_inference(cf, onednn=True).onednn  # an explicit choice wins
    monkeypatch.setenv("CROSSFORMERS_ONEDNN_LINEAR", "0")
    assert not onednn.onednn_for_compile(fca) and not compile_for_inference(fca).onednn
    monkeypatch.delenv("CROSSFORMERS_ONEDNN_LINEAR")

    # the measurement: each model compiled with both packings, then timed alternately (compile_for_inference is
    # stubbed here; tests/profiling/test_compile_inference.py compiles both packings for real)
    packings = []

    def fake_compile(model, onednn=None, **kw):
        packings.append(onednn)
        return model.eval()

    monkeypatch.setattr(calibrate, "compile_for_inference", fake_compile)
    r = calibrate.calibrate_linear(threads=1, rounds=1, models=(cf_name,), model_kwargs={cf_name: cf_kw},
                                   train_rounds=0, compile_rounds=2, write=False)
    m = r["models"][cf_name]
    assert sorted(packings) == [False, True]
    assert m["compile_mkl_ms"] > 0 and m["compile_onednn_packed_ms"] > 0 and m["compile_ratio"] > 0
    assert r["compile_ratio"] == pytest.approx(m["compile_ratio"])  # the geometric mean of one
    assert (r["compile_choice"] == "onednn_packed") == cal.onednn_wins(r["compile_ratio"])
    packings.clear()
    plain = calibrate.calibrate_linear(threads=1, rounds=1, models=(cf_name,), model_kwargs={cf_name: cf_kw},
                                       train_rounds=0, write=False)
    assert not packings and "compile_choice" not in plain and "compile_ratio" not in plain["models"][cf_name]

    real = calibrate.calibrate_linear
    monkeypatch.setattr(calibrate, "calibrate_linear", lambda threads=None, compile_rounds=0: real(
        threads=threads, rounds=1, models=(cf_name,), model_kwargs={cf_name: cf_kw}, train_rounds=1, train_batch=2,
        compile_rounds=min(compile_rounds, 2)))
    path.unlink()
    assert main(["profile", "--calibrate-linear", "--compile", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "compiled, batch 1: weights packed for MKL" in out and "compile_for_inference" in out
    recorded = json.loads(path.read_text())[cal.machine_key()]["1"]
    assert recorded["compile_choice"] in ("mkl", "onednn_packed") and "compile_ratio" in recorded["models"][cf_name]
    assert main(["profile", "--calibrate-linear", "--threads", "1"]) == 0  # without --compile: no compiled times
    assert "compiled, batch 1" not in capsys.readouterr().out
    assert "compile_choice" not in json.loads(path.read_text())[cal.machine_key()]["1"]


def test_large_variants_follow_their_familys_large_calibration(monkeypatch, calibration_file):
    """Each family is also timed on one large variant (`large_models`), as created and optimized; a new model and
    optimize_for_inference of a model nearer that variant in parameter count (log scale) follow its ratios, a smaller
    one the calibration model's; a record without the large variant, or without sizes, keeps the calibration model's
    ratios, and one without the large variant's as-created ratio (older records) keeps it for new models."""
    import json

    from crossformers.inference import optimize_for_inference
    from crossformers.layers import linear_calibration as cal
    from crossformers.profiling import calibrate

    path = calibration_file
    name, kw = SMALL["crossformer"]
    r = calibrate.calibrate_linear(threads=1, rounds=1, models=(name,), model_kwargs={name: kw}, train_rounds=0,
                                   large_models={name: name}, large_rounds=2)  # the test model stands in for both
    large = r["large_models"][name]
    params = sum(p.numel() for p in crossformers.create_model(name, **kw).parameters())
    assert large["model"] == name and large["params"] == params == r["models"][name]["params"]
    assert large["opt_mkl_ms"] > 0 and large["opt_onednn_packed_ms"] > 0 and large["packed_ratio"] > 0
    assert large["mkl_ms"] > 0 and large["onednn_ms"] > 0 and large["ratio"] > 0
    assert json.loads(path.read_text())[cal.machine_key()]["1"]["large_models"][name]["model"] == name
    assert "large_models" not in calibrate.calibrate_linear(threads=1, rounds=1, models=(name,), write=False,
                                                            model_kwargs={name: kw}, train_rounds=0, large_rounds=0)
    # by default the family's calibration model brings its own large variant (the protocol's
    # linear_calibration_large_model); another model of the family (the test model above) brings none
    assert "large_models" not in calibrate.calibrate_linear(threads=1, rounds=1, models=(name,), write=False,
                                                            model_kwargs={name: kw}, train_rounds=0)
    family_class = type(crossformers.create_model(name, **kw))
    monkeypatch.setattr(family_class, "linear_calibration_model", name)
    monkeypatch.setattr(family_class, "linear_calibration_large_model", name)
    r = calibrate.calibrate_linear(threads=1, rounds=1, models=(name,), model_kwargs={name: kw}, train_rounds=0,
                                   large_rounds=1, write=False)
    assert r["large_models"][name]["model"] == name

    family = onednn.calibration_model_of(crossformers.create_model(name, **kw))  # crossformer_tiny
    record = {"choice": "mkl", "inference_choice": "mkl",
              "models": {family: {"ratio": 1.0, "packed_ratio": 1.02, "params": 28_000_000}},
              "large_models": {family: {"model": "crossformer_base", "ratio": 0.88, "packed_ratio": 0.85,
                                        "params": 52_000_000}}}

    def write(rec):
        path.write_text(json.dumps({cal.machine_key(): {str(torch.get_num_threads()): rec}}))

    write(record)
    assert not cal.calibrated_inference_choice(model=family)  # no size given: the calibration model's ratio
    assert not cal.calibrated_inference_choice(model=family, params=30_000_000)
    assert cal.calibrated_inference_choice(model=family, params=45_000_000)  # nearer 52M than 28M
    assert not cal.calibrated_choice(model=family) and not cal.calibrated_choice(model=family, params=30_000_000)
    assert cal.calibrated_choice(model=family, params=45_000_000)  # new models too: the large variant's own ratio
    def fresh():
        return crossformers.create_model(name, onednn_linear=False, **kw)

    small = fresh()  # a few thousand parameters: MKL
    assert not onednn.onednn_for_inference(small) and not _uses(optimize_for_inference(fresh()))
    assert not onednn.onednn_by_default(small) and not _uses(crossformers.create_model(name, **kw))
    record["models"][family]["params"] = 10  # now the test model is nearer the "large" size
    record["large_models"][family]["params"] = params
    write(record)
    assert onednn.onednn_for_inference(small) and _uses(optimize_for_inference(fresh()))
    assert onednn.onednn_by_default(small) and _uses(crossformers.create_model(name, **kw))  # created on oneDNN
    assert not _uses(crossformers.create_model(name, onednn_linear=False, **kw))  # an explicit choice stays
    assert not onednn.onednn_for_inference(family)  # a name has no size: the calibration model's ratio
    assert not onednn.onednn_by_default(family) and not onednn.onednn_by_default(type(small))
    del record["large_models"][family]["ratio"]  # a record from before the as-created ratio was timed
    write(record)
    assert not _uses(crossformers.create_model(name, **kw)) and onednn.onednn_for_inference(small)
    del record["large_models"][family]["params"]  # an incomplete entry is ignored
    write(record)
    assert not onednn.onednn_for_inference(small)
    del record["large_models"]
    write(record)
    assert not onednn.onednn_for_inference(small)


def test_a_variant_timed_on_its_own_follows_its_own_ratio(monkeypatch, calibration_file, capsys):
    """`profile --calibrate-linear MODEL` times that variant on both paths (as created and optimized) and adds it to
    the machine's record by architecture name; models of that variant then follow its own ratios before the family's
    or its large variant's, other variants keep theirs, and a later family calibration keeps the variants. Timing a
    variant needs a family calibration first (the CLI runs one); the environment variable still wins."""
    import json

    from crossformers.cli import main
    from crossformers.inference import optimize_for_inference
    from crossformers.layers import linear_calibration as cal
    from crossformers.profiling import ProfilingError, calibrate

    path = calibration_file
    name, kw = SMALL["crossformer"]
    with pytest.raises(ProfilingError, match="--calibrate-linear --threads 1. first"):
        calibrate.calibrate_variants([name], threads=1, rounds=1, model_kwargs={name: kw})
    with pytest.raises(ValueError, match="calibrate-linear"):
        cal.record_variants(1, {"x": {"ratio": 0.5}})
    model = crossformers.create_model(name, onednn_linear=False, **kw)
    arch = model.pretrained_cfg["architecture"]
    measured = calibrate.calibrate_variants([name], threads=1, rounds=2, model_kwargs={name: kw}, write=False)
    v = measured["variants"][arch]
    assert v["model"] == name and v["params"] == sum(p.numel() for p in model.parameters())
    assert min(v["mkl_ms"], v["onednn_ms"], v["opt_mkl_ms"], v["opt_onednn_packed_ms"], v["ratio"],
               v["packed_ratio"]) > 0 and not path.exists()

    family = onednn.calibration_model_of(model)
    threads = str(torch.get_num_threads())
    record = {"choice": "mkl", "inference_choice": "mkl",
              "models": {family: {"ratio": 1.0, "packed_ratio": 1.02, "params": 10}},
              "large_models": {family: {"model": "crossformer_base", "ratio": 1.1, "packed_ratio": 1.1,
                                        "params": v["params"]}}}  # the test model is "large" here: MKL either way
    path.write_text(json.dumps({cal.machine_key(): {threads: record}}))
    assert not onednn.onednn_by_default(model) and not onednn.onednn_for_inference(model)
    cal.record_variants(int(threads), {arch: {"ratio": 0.8, "packed_ratio": 0.9}, "other_arch": {"ratio": 1.2}})
    assert cal.calibrated_variants() == {arch, "other_arch"}
    assert onednn.onednn_by_default(model) and onednn.onednn_for_inference(model)  # its own ratios decide
    assert _uses(crossformers.create_model(name, **kw)) and _uses(optimize_for_inference(model))
    assert not onednn.onednn_by_default(family)  # a name (no variant) keeps the family's ratio
    assert onednn.onednn_default_reason(model).endswith(f"as {arch} measured on its own")
    cal.record_variants(int(threads), {arch: {"ratio": 1.0, "packed_ratio": 0.9}})  # re-timed: a tie, MKL
    assert not onednn.onednn_by_default(model) and onednn.onednn_for_inference(model)
    assert cal.calibrated_variants() == {arch, "other_arch"}  # the other variant is kept
    cal.record_calibration(int(threads), record)  # a family calibration keeps the variants timed on their own
    assert cal.calibrated_variants() == {arch, "other_arch"}
    monkeypatch.setenv("CROSSFORMERS_ONEDNN_LINEAR", "1")
    assert onednn.onednn_by_default(model)
    monkeypatch.delenv("CROSSFORMERS_ONEDNN_LINEAR")

    # the command: without a record it times the families first (stubbed to the small model here), then the variant
    real_families, real_variants = calibrate.calibrate_linear, calibrate.calibrate_variants
    monkeypatch.setattr(calibrate, "calibrate_linear", lambda threads=None, compile_rounds=0: real_families(
        threads=threads, rounds=1, models=(name,), model_kwargs={name: kw}, train_rounds=1, train_batch=2,
        large_rounds=0))
    monkeypatch.setattr(calibrate, "calibrate_variants", lambda names, threads=None: real_variants(
        names, threads=threads, rounds=1, model_kwargs={n: kw for n in names}))
    path.unlink()
    assert main(["profile", "--calibrate-linear", name, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "timing the families first" in out and f"{name} " in out and "new models" in out
    recorded = json.loads(path.read_text())[cal.machine_key()]["1"]
    assert recorded["choice"] in ("mkl", "onednn") and recorded["variants"][arch]["model"] == name


def test_each_family_follows_its_own_calibrated_ratio(monkeypatch, calibration_file):
    """A CPU can favour oneDNN for one family and MKL for another (the AMD EPYC Zen 4 of docs/profiling.md): where
    the record holds the family's own calibration model, its ratios decide creation, optimize_for_inference and
    training; a module of no family, and a family whose model was not timed, take the combined choice."""
    import json

    from crossformers.inference import optimize_for_inference
    from crossformers.layers import linear_calibration as cal

    path = calibration_file
    fast, slow = {"ratio": 0.8, "packed_ratio": 0.9, "train_ratio": 0.85}, {"ratio": 1.1, "packed_ratio": 1.02,
                                                                            "train_ratio": 1.2}
    record = {"choice": "mkl", "inference_choice": "mkl", "train_choice": "mkl",  # combined: MKL everywhere
              "models": {"crossformer_tiny": fast, "crossvit_9_240": slow}}
    path.write_text(json.dumps({cal.machine_key(): {str(torch.get_num_threads()): record}}))
    assert cal.calibrated_models() == {"crossformer_tiny", "crossvit_9_240"}

    cf_name, cf_kw = SMALL["crossformer"]
    vit_name, vit_kw = SMALL["crossvit"]
    fca_name, fca_kw = SMALL["fcaformer"]
    cf = crossformers.create_model(cf_name, **cf_kw)  # CrossFormer++ follows crossformer_tiny's ratios
    assert onednn.calibration_model_of(cf) == "crossformer_tiny" and _uses(cf)
    assert onednn.onednn_for_inference(cf) and onednn.onednn_for_training(cf)
    assert _uses(optimize_for_inference(crossformers.create_model(cf_name, onednn_linear=False, **cf_kw)))
    assert _uses(optimize_for_training(crossformers.create_model(cf_name, onednn_linear=False, **cf_kw)))
    assert onednn.onednn_default_reason(cf).endswith("as crossformer_tiny measured")
    vit = crossformers.create_model(vit_name, **vit_kw)
    assert not _uses(vit) and not _uses(optimize_for_inference(vit)) and not onednn.onednn_for_training(vit)
    fca = crossformers.create_model(fca_name, **fca_kw)  # not timed: the combined choice
    assert onednn.calibration_model_of(fca) == "fcaformer_l1" and not _uses(fca)
    assert not onednn.onednn_by_default() and not onednn.onednn_by_default(torch.nn.Linear(4, 4))
    assert onednn.onednn_by_default(type(cf)) and onednn.onednn_by_default("crossformer_tiny")

    record["models"]["crossformer_tiny"] = {**fast, "train_ratio": 0.99}  # a tie in training keeps MKL (MARGIN)
    record["models"]["crossvit_9_240"] = {"ratio": 0.5}  # an older record without the training time
    path.write_text(json.dumps({cal.machine_key(): {str(torch.get_num_threads()): record}}))
    assert onednn.onednn_by_default(cf) and not onednn.onednn_for_training(cf)
    assert onednn.onednn_by_default(vit) and not onednn.onednn_for_inference(vit) and not onednn.onednn_for_training(vit)
    monkeypatch.setenv("CROSSFORMERS_ONEDNN_LINEAR", "0")  # the variable still wins over every family
    assert not onednn.onednn_by_default(cf) and not _uses(crossformers.create_model(cf_name, **cf_kw))


@pytest.mark.parametrize("small", ["crossvit_9_240", "crossformer_tiny", "fcaformer_l1"])
def test_each_family_names_a_larger_variant_of_its_own_for_the_calibration(small):
    """The family protocol's ``linear_calibration_large_model`` is a registered variant of the same family, with
    several times the calibration model's parameters (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = crossformers.create_model(small)
        large = crossformers.create_model(type(model).linear_calibration_large_model)
    assert type(model).linear_calibration_model == small and large.family == model.family
    assert sum(p.numel() for p in large.parameters()) > 1.5 * sum(p.numel() for p in model.parameters())


@pytest.mark.skipif(not onednn.onednn_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.slow  # 15-35 s each; test_profile.py's compiled profiles take the same path on AVX-512 CPUs
@pytest.mark.parametrize("family", ["crossformer", "crossvit", "fcaformer"])
def test_each_family_compiles_ahead_of_time_and_matches_eager(family):
    """compile_for_inference with oneDNN packing exports the model and compiles it with AOTInductor (one package per
    input shape): the family's graph (CrossFormer's position-bias tables, CrossViT's two branches, FcaFormer's
    channels-last stages) exports whole and gives the eager logits (shapes: test_compile_inference.py)."""
    import shutil

    from crossformers.inference import compile_for_inference

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("inductor on CPU needs a C++ compiler")
    name, kw = SMALL[family]
    model = _randomize(crossformers.create_model(name, **kw)).eval()
    side = kw["img_size"]
    compiled = compile_for_inference(model, onednn=True)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(compiled(x), expected, atol=1e-4, rtol=1e-4)
    assert compiled.ahead_of_time and [run is not None for run in compiled._packages.values()] == [True]
