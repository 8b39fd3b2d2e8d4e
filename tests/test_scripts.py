"""The helper scripts' own logic (not their training runs): the ablation verdicts and the precision recorder."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str, folder: Path = SCRIPTS):
    """The script ``folder/name.py`` as a module; its folder is importable while it loads (the benchmarks import
    their sibling helpers, ``_processes``)."""
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def test_ablation_verdict_compares_the_mean_difference_with_twice_its_standard_error():
    ab = _load("seeded_ablation")
    diff, se, verdict = ab._verdict([70.0, 71.0, 72.0], [74.0, 75.0, 76.0])
    assert diff == pytest.approx(4.0) and se == pytest.approx(math.sqrt(2 / 3)) and verdict == "holds"
    assert ab._verdict([74.0, 75.0, 76.0], [70.0, 71.0, 72.0])[2] == "reversed"
    assert ab._verdict([70.0, 72.0, 74.0], [71.0, 73.0, 75.0])[2] == "within noise"  # 1 < 2 * 1.63
    assert ab._verdict([70.0], [75.0])[2] == "one seed: no noise estimate"


def test_every_ablation_configuration_is_a_model_that_builds():
    import crossformers

    ab = _load("seeded_ablation")
    for spec in ab.ABLATIONS.values():
        slugs = {ab._slug(switch) for _, switch in spec["configs"]}
        assert len(slugs) == len(spec["configs"])  # one run folder per configuration
        assert all(0 <= i < len(spec["configs"]) for pair in spec["orderings"] for i in pair)
        for _, switch in spec["configs"]:
            crossformers.create_model(spec["model"], **{**spec["arch"], **switch}, in_chans=1, num_classes=10,
                                      device="meta")


def test_precision_recorder_keeps_every_output_and_passes_it_on():
    pa = _load("precision_accuracy")
    rec = pa._Recording(torch.nn.Linear(3, 2))
    outs = [rec(torch.randn(4, 3)), rec(torch.randn(1, 3))]
    assert [o.shape for o in rec.outputs] == [(4, 2), (1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(rec.outputs, outs, strict=True))


def test_precision_drift_covers_the_full_size_classifiers_and_measures_bf16():
    pd = _load("precision_drift")
    names = pd.full_size_models(["*"])
    assert "crossformer_pp_huge" in names and "fcaformer_l0" in names and "crossvit_18_dagger_408" in names
    assert not [n for n in names if n.endswith(("_nano", "_dense")) or n == "fcaformer_sh_l2"]
    from crossformers.inference import precision_support

    if precision_support("bf16") is not None:
        pytest.skip(f"bf16: {precision_support('bf16')}")
    (row,) = pd.drift("crossvit_tiny_240", ["bf16"], batch=2)
    assert row["precision"] == "bf16" and row["input"] == [3, 240, 240]
    assert 0 < row["rel_drift"] < 5e-2 and row["max_abs_fp32"] > 0.1  # order-one logits, bf16-sized drift
    assert 0 <= row["clear_agree"] <= row["clear"] <= 2


BENCHMARKS = SCRIPTS.parent / "benchmarks"


def test_onednn_primitive_flops_follow_the_verbose_problem_descriptors():
    mod = _load("onednn_primitives", BENCHMARKS)
    assert mod.problem_flops("inner_product", "mb197ic256oc768") == 2 * 197 * 256 * 768
    assert mod.problem_flops("inner_product", "mb2ic64ih7iw7oc10") == 2 * 2 * 64 * 7 * 7 * 10  # spatial input
    # depthwise: each output channel sees ic / g = 1 input channel
    assert mod.problem_flops("convolution", "g64mb1_ic64oc64_ih56oh56kh7sh1dh0ph3_iw56ow56kw7sw1dw0pw3") == \
        2 * 64 * 56 * 56 * 7 * 7
    assert mod.problem_flops("convolution", "mb2_ic3oc32_ih224oh112kh3sh2dh0ph1_iw224ow112kw3sw2dw0pw1") == \
        2 * 2 * 32 * 112 * 112 * 3 * 9
    assert mod.problem_flops("matmul", "4x197x64:4x64x197") == 2 * 4 * 197 * 64 * 197
    assert mod.problem_flops("reorder", "256x3x16x16") is None


def test_onednn_verbose_lines_are_aggregated_per_problem_and_post_op():
    mod = _load("onednn_primitives", BENCHMARKS)
    head = "onednn_verbose,v1,primitive,exec,cpu,inner_product,brg_matmul:avx512_core,forward_inference,"
    mds = "src:f32::blocked:ab::f0 wei:f32::blocked:AB16b64a::f0 dst:f32::blocked:ab::f0,"
    lines = [
        "onednn_verbose,v1,info,oneDNN v3.12.0",
        head + mds + "attr-scratchpad:user,,mb197ic256oc768,0.5\n",
        head + mds + "attr-scratchpad:user,,mb197ic256oc768,0.3\n",
        head + mds + "attr-scratchpad:user attr-post-ops:eltwise_gelu_erf,,mb197ic256oc768,0.4\n",
        "onednn_verbose,v1,primitive,create:cache_hit,cpu,inner_product,brg_matmul:avx512_core,forward_inference,"
        + mds + "attr-scratchpad:user,,mb197ic256oc768,0.01\n",
    ]
    rows = mod.parse_verbose(lines, calls=2)
    by_detail = {r["detail"]: r for r in rows}
    assert set(by_detail) == {"avx512_core", "eltwise_gelu_erf"}  # creation lines are not executions
    plain = by_detail["avx512_core"]
    assert plain["per_call"] == 1 and abs(plain["ms_per_call"] - 0.4) < 1e-12 and abs(plain["us_each"] - 400) < 1e-9
    assert abs(plain["gflops"] - 2 * 197 * 256 * 768 / 0.4e-3 / 1e9) < 1e-6
    assert rows[0] is plain  # sorted by time per forward call


def test_freed_memory_benchmark_times_inference_calls_of_each_path():
    mod = _load("bench_freed_memory", BENCHMARKS)
    spec = {"model": "fcaformer_nano", "batch": 1, "side": 56, "steps": 3}
    times, faults = mod._inference_calls({**spec, "inference": "created"})
    assert len(times) == 3 and all(t > 0 for t in times) and faults >= 0
    times, _ = mod._inference_calls({**spec, "inference": "optimize"})
    assert len(times) == 3
    with pytest.raises(KeyError):
        mod._inference_calls({**spec, "inference": "fastest"})


def test_machine_suite_prints_its_usage_and_runs_only_the_steps_asked_for(tmp_path):
    suite = BENCHMARKS / "machine_suite.sh"
    usage = subprocess.run(["bash", str(suite)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash benchmarks/machine_suite.sh LABEL" in usage.stdout
    assert "set -euo" not in usage.stdout
    out = tmp_path / "out"
    env = {**os.environ, "STEPS": "none", "PYTHON": "false"}  # no step chosen: nothing may run (false would fail)
    done = subprocess.run(["bash", str(suite), "m", "a", "b", "c", str(out)], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0 and out.is_dir() and not list(out.iterdir())
    env["STEPS"] = "7"  # the goal table from the reports present in OUT (none here: nothing is written)
    assert subprocess.run(["bash", str(suite), "m", "a", "b", "c", str(out)], capture_output=True, text=True,
                          env=env).returncode == 0 and not list(out.iterdir())
    (out / "m_onnxruntime.json").write_text('{"machine": {}, "rows": [{"model": "x", "ratio_paired": {"compile": 0.9}}]}')
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(suite), "m", "a", "b", "c", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "| 5 | our best path / onnxruntime" in (out / "m_goals.md").read_text()
    env["STEPS"], env["PYTHON"] = "6", "false"  # a chosen step runs its command: the failing PYTHON stops the suite
    assert subprocess.run(["bash", str(suite), "m", "a", "b", "c", str(out)], capture_output=True, text=True,
                          env=env).returncode != 0


def _stats(**ratios: float) -> dict:
    """A bench_vs_reference stats block: each side's paired ratio (and a median time of ratio seconds)."""
    return {side: {"median_s": r, "min_s": r, "ratio": r, "paired_ratio": r} for side, r in {"reference": 1.0,
                                                                                             **ratios}.items()}


def test_goal_summary_reads_every_report_kind_and_counts_the_runs_that_meet_each_goal(tmp_path, capsys):
    import json

    gs = _load("goal_summary", BENCHMARKS)
    machine = {"cpu": "Test CPU", "cpu_signature": "GenuineTest family 6 model 1", "logical_cpus": 2}
    latency = {"machine": machine, "cpu_flags": ["avx512f"], "latency": [
        {"variant": "a", "stats": _stats(ours=0.85, ours_fast=0.80, ours_compiled=0.60, ours_bf16=0.5,
                                         ours_int8=0.19),
         "throughput": {"batch": 32, "stats": _stats(ours_bf16=0.25)}},
        {"variant": "b", "stats": _stats(ours=1.02, ours_fast=1.10, ours_int8_static=0.25)}], "train": []}
    second = {"machine": machine, "latency": [{"variant": "a", "stats": _stats(ours=0.95, ours_fast=0.9)}],
              "train": [{"variant": "a", "batch": 32, "stats": _stats(ours=0.9, ours_fast=0.79)}]}
    ort = {"machine": {**machine, "cpu_flags": ["amx_tile"]}, "rows": [
        {"model": "a", "ratio_paired": {"compile": 0.9, "optimize": 1.2}}]}
    amp = {"machine": machine, "bf16_flags": [], "rows": [
        {"model": "a", "side": 56, "batch": 8, "amp_ms": 1.0, "paired_ratio": 1.1}]}
    paths = []
    for name, doc in {"lat": latency, "second": second, "ort": ort, "amp": amp}.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(doc))
    got: dict = {}
    for doc in (latency, second, ort, amp):
        for goal, name, x, how in gs.measures(doc):
            got.setdefault((goal, name), []).append((x, how))
    assert got[(gs.ONE_CALL, "a")] == [(0.60, "compiled"), (0.9, "fast")]  # per report, the better one-call path
    assert got[(gs.TRAIN, "a")] == [(0.79, "optimize_for_training, batch 32")]
    assert got[(gs.BF16_THROUGHPUT, "a")] == [(4.0, "bf16, batch 32")]  # reference time / ours: 1.0 / 0.25
    assert got[(gs.FAST_VS_PLAIN, "b")][0][0] == pytest.approx(1.10 / 1.02)
    assert got[(gs.ONNXRUNTIME, "a")] == [(0.9, "compile")]
    assert got[(gs.INT8, "b")] == [(0.25, "int8_static")]  # every precision side bench_vs_reference.py knows
    assert gs.INT8.value == 0.20 and gs.BF16.value == 0.30 and gs.ONE_CALL.value == 0.67  # issue 15's numbers
    text = gs.summary(paths)
    rows = {tuple(c.strip() for c in line.split("|")[2:5:2]): line for line in text.splitlines()
            if line.startswith("| ")}
    assert "✓ 1/2" not in rows[(gs.AS_CREATED[1], "a")] and "~ 1/2" in rows[(gs.AS_CREATED[1], "a")]
    assert "✗ 0/1" in rows[(gs.AS_CREATED[1], "b")] and "slower than the authors in 1" in rows[(gs.AS_CREATED[1], "b")]
    assert "✗ 0/1" in rows[(gs.FAST_VS_PLAIN[1], "b")]  # the fast path lost: a failed goal, not noise
    assert "✓ 1/1" in rows[(gs.INT8[1], "a")] and "✗ 0/1" in rows[(gs.AMP[1], "a (56 px)")]
    assert "(no AMX)" not in text and "goal set for AMX" not in text  # one report recorded amx_tile
    assert "GenuineTest family 6 model 1" in text
    # a file of another kind: one error line naming it, exit code 2
    (tmp_path / "other.json").write_text(json.dumps({"rows": [{"x": 1}]}))
    assert gs.main([str(paths[0]), str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.json" in err and "bench_vs_reference.py" in err
    assert gs.main([str(tmp_path / "missing.json")]) == 2 and "no such report" in capsys.readouterr().err
    out = tmp_path / "goals.md"
    assert gs.main([*map(str, paths), "--out", str(out)]) == 0 and out.read_text() == text


def test_bench_vs_reference_names_each_variants_own_linear_path():
    """A variant's size can choose another linear path than its family's calibration model (linear_calibration's
    large variants), so the latency table names each row's path, as the report recorded it."""
    bench = _load("bench_vs_reference", BENCHMARKS)
    doc = {"machine": {"cpu": "Test CPU", "logical_cpus": 2, "torch": "2", "timm": "1", "python": "3"},
           "date": "today", "command": "bench", "threads": 2, "load_before": [0], "load_after": [0], "rounds": 3,
           "latency": [
               {"variant": v, "reference": "authors", "input": 224, "max_abs_diff": 1e-6,
                "stats": _stats(ours=0.9, ours_fast=0.8), "linear_path": {
                    "reference": bench.linear_path("reference"), "ours": path,
                    "ours_fast": fast}}
               for v, path, fast in (("small", "aten.linear fp32 (MKL sgemm)", "aten.linear fp32 (MKL sgemm)"),
                                     ("large", "oneDNN fp32 (OneDNNLinear)", "oneDNN fp32 (OneDNNLinear, packed "
                                                                             "weights)"))],
           "train": [], "skipped": []}
    rows = {line.split("|")[1].strip(): line for line in bench.markdown(doc).splitlines() if line.startswith("| ")}
    assert "| MKL / MKL |" in rows["small"] and "| oneDNN / packed oneDNN |" in rows["large"]
    del doc["latency"][0]["linear_path"]  # reports from before the paths were recorded
    assert "| ? / ? |" in bench.markdown(doc)


def test_attention_kernels_capture_each_models_calls_and_time_them_against_the_fused_kernel():
    """The attention benchmark sees every attention call of a forward pass (CrossFormer: one per block, with the
    block's groups, heads and position bias), groups equal calls, and every implementation it times computes the
    fused kernel's result."""
    import crossformers

    att = _load("attention_kernels", BENCHMARKS)
    model = crossformers.create_model("crossformer_tiny", embed_dim=16, depths=(1, 1, 3, 1), num_heads=(1, 2, 4, 8),
                                      img_size=64, num_classes=3).eval()
    calls = att.capture_attention_calls(model, torch.randn(1, 3, 64, 64))
    # one call per block, stage by stage; stage 3's map (4 x 4) is one SDA group in each of its three blocks, so
    # their calls are equal and counted together
    assert [(c["q"].shape[-3], c["count"]) for c in calls] == [(1, 1), (2, 1), (4, 3), (8, 1)]
    assert all(c["bias"] is not None and c["bias"].shape[-3] == c["q"].shape[-3] for c in calls)
    rows = [att.time_call(c, ("fused", "explicit"), rounds=2) for c in calls]
    for row in rows:
        fused, explicit = row["results"]["fused"], row["results"]["explicit"]
        assert fused["paired_vs_fused"] == 1.0 and fused["max_abs_diff"] == 0.0
        assert explicit["max_abs_diff"] < 1e-5 and explicit["median_ms"] > 0 and explicit["gflops"] > 0
    totals = att.model_totals(rows)
    assert set(totals) == {"fused", "explicit"}
    assert totals["fused"] == pytest.approx(sum(r["count"] * r["results"]["fused"]["median_ms"] for r in rows))
    with pytest.raises(ValueError, match="unknown attention implementation"):
        att.implementations(*(calls[0][n] for n in ("q", "k", "v", "bias")), names=("cuda_only",))
    with pytest.raises(ValueError, match="no ScaledDotProduct module"):
        att.capture_attention_calls(torch.nn.Linear(3, 3), torch.randn(1, 3))
    # "fused" is the kernel even for these small groups (which the library writes out by default)
    from crossformers.layers import attention

    kernel_calls = []
    real = attention.F.scaled_dot_product_attention
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **k: kernel_calls.append(1) or real(*a, **k))
        att.implementations(*(calls[0][n] for n in ("q", "k", "v", "bias")), names=("fused",))["fused"]()
    assert kernel_calls == [1] and attention.EXPLICIT_MAX_KEYS > 0
    whole = att.whole_model(model, torch.randn(1, 3, 64, 64), rounds=2)
    assert whole["max_abs_diff"] < 1e-4 and whole["explicit_max_keys"] == attention.EXPLICIT_MAX_KEYS  # restored
    assert all(whole[f"{k}_ms"] > 0 for k in ("kernel", "default", "explicit"))
    assert whole["paired_default_vs_kernel"] > 0 and whole["paired_explicit_vs_kernel"] > 0


def test_onnxruntime_op_profile_puts_both_runtimes_ops_in_the_same_classes(tmp_path):
    """profile_ops_vs_onnxruntime.py: onnxruntime's nodes and PyTorch's ops of one model land in the same classes,
    with one count per node or op and call (a small CrossFormer: 4 stem and 3 x 2 merge convolutions, 6 blocks)."""
    pytest.importorskip("onnxruntime")
    import crossformers
    from crossformers.export import export_model

    prof = _load("profile_ops_vs_onnxruntime", BENCHMARKS)
    assert prof.ort_class("MatMul", [[1, 2, 49, 32], [1, 2, 32, 49]]) == "attention"
    assert prof.ort_class("FusedMatMul", [[49, 64], [64, 64]]) == "products"
    assert prof.ort_class("ReorderInput", [[1, 3, 8, 8]]) == "convolutions"
    assert prof.ort_class("LayerNormalization", [[49, 64]]) == "other ops"
    model = crossformers.create_model("crossformer_tiny", embed_dim=16, depths=(1, 1, 3, 1), num_heads=(1, 2, 4, 8),
                                      img_size=64, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    export_model(model, output=tmp_path / "m.onnx", verify=False)
    ort_rows = prof.profile_onnxruntime(tmp_path / "m.onnx", x.numpy(), 1, 4, tmp_path)
    torch_rows = prof.profile_torch(model, x, 2)
    for rows, conv_ops in ((ort_rows, ("Conv", "FusedConv")),
                           (torch_rows, ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
                                         "mkldnn::_convolution_pointwise"))):  # the merges' packed weights
        assert {"products", "attention", "convolutions"} <= {r[1] for r in rows}
        assert all(r[0] >= 0 and r[4] >= 1 for r in rows)
        assert sum(r[4] for r in rows if r[2] in conv_ops) == 10


def test_conv_layouts_times_each_layout_switch_and_restores_them():
    """conv_layouts.py: the default and each layout choice turned off give the same logits, each is timed with its
    paired ratio, and the module switches are back afterwards (also checks that each switch takes effect)."""
    import crossformers
    from crossformers.layers import embed

    bench = _load("conv_layouts", BENCHMARKS)
    model = crossformers.create_model("crossformer_tiny", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                                      img_size=64, num_classes=3).eval()
    seen = []
    model.patch_embed.projs[0].register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last) and not a[0].is_contiguous()))
    r = bench.layouts(model, torch.randn(1, 3, 64, 64), rounds=2)
    assert r["max_abs_diff"] <= 1e-5 and all(r[f"{k}_ms"] > 0 for k in bench.SETTINGS)
    assert r["paired_stem_as_given_vs_default"] > 0 and r["paired_merges_channels_last_copy_vs_default"] > 0
    assert True in seen and False in seen  # the stem switch was honoured by some calls and not others
    assert embed.STEM_CHANNELS_LAST is True and embed.PACK_MERGE_WEIGHTS is True
    merge = model.stages[1].downsample.projs[0]
    with torch.no_grad():
        embed.PACK_MERGE_WEIGHTS = False
        try:
            merge.weight_cache.clear()
            model(torch.randn(1, 3, 64, 64))
            assert all(v.layout == torch.strided for v in merge.weight_cache._store.values())
        finally:
            embed.PACK_MERGE_WEIGHTS = True
