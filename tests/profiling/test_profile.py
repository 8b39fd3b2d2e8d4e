"""profile_model, its reports (table, JSON, CSV, plot) and the ``crossformers profile`` command on small models."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
from profiling_cases import one_thread  # noqa: F401  (autouse fixture)

import crossformers
from crossformers.cli import main
from crossformers.inference import precision_support
from crossformers.profiling import (
    PUBLISHED,
    ProfileResult,
    ProfilingError,
    count_macs,
    format_breakdown,
    format_table,
    plot_accuracy,
    profile_model,
    read_json,
    write_csv,
    write_json,
)

FAST = dict(threads=1, warmup=1, repeats=3, throughput_repeats=1)


def test_profile_fields_of_a_small_model():
    r = profile_model("fcaformer_nano", img_size=32, batch_size=2, breakdown=True, **FAST)
    model = crossformers.create_model("fcaformer_nano")
    assert r.model == "fcaformer_nano" and r.family == "FcaFormer"
    assert r.img_size == (32, 32) and r.in_chans == 1 and r.batch_size == 2 and r.threads == 1
    assert (r.device, r.dtype, r.compiled, r.fused, r.channels_last) == ("cpu", "fp32", False, False, False)
    assert r.params == sum(p.numel() for p in model.parameters())
    assert r.macs == count_macs(model, (1, 32, 32))[0] > 0
    assert 0 < r.latency_min_ms <= r.latency_ms <= r.latency_p90_ms
    assert len(r.latency_samples_ms) >= 3
    assert r.throughput_img_s > 0
    assert r.peak_mem_mib > 0 and r.peak_mem_batch_mib >= r.peak_mem_mib * 0.9 and "subprocess" in r.mem_method
    assert r.achieved_gflops == pytest.approx(2 * r.macs / (r.latency_ms / 1e3) / 1e9)
    assert r.matmul_peak_gflops > 0 and r.peak_fraction == pytest.approx(r.achieved_gflops / r.matmul_peak_gflops)
    assert r.matmul_peak_kernel in ("native", "onednn")
    assert r.published_top1 is None  # no published accuracy for the nano variant
    assert r.breakdown[""] == r.macs and "stages.2" in r.breakdown
    text = format_breakdown(r, depth=2)
    assert "stages.2" in text and "stem" in text
    assert "fcaformer_nano" in format_table([r])


def test_table_footer_names_options_that_differ_by_row():
    """Each family can take its own calibrated linear path: the footer lists what all rows share and names the rows
    of an option only some have."""
    import dataclasses

    r = profile_model("fcaformer_nano", img_size=32, batch_size=0, memory=False, **FAST)
    a = dataclasses.replace(r, model="a", fused=True, onednn_linear=True, packed_weights=True)
    b = dataclasses.replace(r, model="b", fused=True, onednn_linear=False, packed_weights=False)
    footer = format_table([a, b]).splitlines()[-1]
    assert "fused" in footer and "oneDNN linear for a" in footer and "packed weights for a" in footer
    assert "oneDNN linear for" not in format_table([a, a]).splitlines()[-1]


def test_profile_a_module_with_options():
    model = crossformers.create_model("fcaformer_nano").train()
    r = profile_model(model, img_size=(40, 32), batch_size=0, fuse=True, channels_last=True, memory=True,
                      matmul_peak=False, **FAST)
    assert model.training  # the caller's model is untouched (a fused copy was profiled)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert r.fused and r.channels_last and r.img_size == (40, 32)
    assert r.throughput_img_s is None and r.peak_fraction is None
    assert r.peak_mem_mib is None or r.peak_mem_mib >= 0


def test_bf16_and_compile_options(monkeypatch):
    """dtype bf16; compile with a named backend is plain ``torch.compile`` with that backend (inductor alone goes
    through compile_for_inference, which must not be reached here: it compiles C++ ahead of time)."""
    from crossformers.profiling import profile as profile_module

    r = profile_model("fcaformer_nano", img_size=32, batch_size=0, dtype="bf16", memory=False, matmul_peak=False,
                      **FAST)
    assert r.dtype == "bf16" and r.latency_ms > 0
    torch._dynamo.reset()

    def not_inductor(*args, **kwargs):
        raise AssertionError("compile='aot_eager' went to inductor's compile_for_inference")

    monkeypatch.setattr(profile_module, "compile_for_inference", not_inductor)
    r = profile_model("crossvit_9_240", img_size=48, batch_size=0, compile="aot_eager", memory=False,
                      matmul_peak=False, model_kwargs=dict(img_size=48, img_scale=(1.0, 32 / 48), embed_dim=(16, 32),
                                                           num_heads=(2, 2), num_classes=3), **FAST)
    torch._dynamo.reset()
    assert r.compiled and r.compile_s > 0 and r.latency_ms > 0


@pytest.mark.skipif(precision_support("bf16") is not None, reason="this CPU has no oneDNN bf16 support")
def test_precision_option_profiles_the_reduced_model():
    r = profile_model("fcaformer_nano", img_size=32, batch_size=2, precision="bf16", matmul_peak=False, **FAST)
    assert r.dtype == "bf16" and r.latency_ms > 0 and r.throughput_img_s > 0
    assert r.peak_mem_mib is None and "not measured" in r.mem_method and not r.onednn_linear
    assert r.macs > 0  # counted on the fp32 model


def test_bad_options_raise_profiling_errors():
    with pytest.raises(ProfilingError, match="dtype"):
        profile_model("fcaformer_nano", dtype="fp8")
    with pytest.raises(ProfilingError, match="img_size"):
        profile_model("fcaformer_nano", img_size=(1, 2, 3), latency=False, memory=False)
    if not torch.cuda.is_available():
        with pytest.raises(ProfilingError, match="CUDA"):
            profile_model("fcaformer_nano", device="cuda")
    with pytest.raises(crossformers.UnknownModelError):
        profile_model("fcaformer_l11")


def _synthetic(name: str, latency: float) -> ProfileResult:
    pub = PUBLISHED[name]
    return ProfileResult(model=name, family=pub.family, img_size=(pub.img_size,) * 2, in_chans=3, batch_size=0,
                         threads=2, device="cpu", dtype="fp32", compiled=False, fused=False, channels_last=False,
                         params=int(pub.params_m * 1e6), macs=int((pub.gmacs or 1.0) * 1e9), latency_ms=latency,
                         published_top1=pub.top1)


def test_json_csv_and_plot_round_trip(tmp_path):
    results = [_synthetic("fcaformer_l1", 40.0), _synthetic("fcaformer_l2", 90.0),
               _synthetic("crossformer_tiny", 80.0), _synthetic("crossvit_9_240", 45.0)]
    js = write_json(results, tmp_path / "r.json", extra={"command": "test"})
    doc = json.loads(js.read_text())
    assert doc["command"] == "test" and "cpu" in doc["machine"] and len(doc["results"]) == 4
    assert read_json(js)[1].latency_ms == 90.0 and read_json(js)[0].img_size == (224, 224)
    rows = list(csv.DictReader(write_csv(results, tmp_path / "r.csv").open()))
    assert rows[2]["model"] == "crossformer_tiny" and float(rows[2]["latency_ms"]) == 80.0 and "gmacs" in rows[0]
    png = plot_accuracy(results, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ProfilingError, match="published"):
        plot_accuracy([_synthetic("fcaformer_l1", 1.0).__class__(**{**_synthetic("fcaformer_l1", 1.0).__dict__,
                                                                     "published_top1": None})], tmp_path / "x.png")


def test_cli_profile(tmp_path, capsys):
    js, cs, md = tmp_path / "out.json", tmp_path / "out.csv", tmp_path / "out.md"
    code = main(["profile", "fcaformer_nano", "--img-size", "32", "--batch-size", "2", "--threads", "1",
                 "--repeats", "2", "--warmup", "1", "--throughput-repeats", "1", "--no-memory", "--breakdown",
                 "--json", str(js), "--csv", str(cs), "--markdown", str(md)])
    out = capsys.readouterr()
    assert code == 0
    assert "fcaformer_nano" in out.out and "GMACs" in out.out and "stages.2" in out.out
    assert json.loads(js.read_text())["results"][0]["model"] == "fcaformer_nano"
    assert cs.read_text().startswith("model,")
    table = md.read_text().splitlines()
    assert table[0].startswith("| model | input | params (M) | GMACs |") and table[1].startswith("|---|")
    assert table[2].startswith("| fcaformer_nano | 32x32 |") and table[2].count("|") == table[0].count("|")
    assert "1 thread(s)" in table[-1] and "throughput at N=2" in table[-1]
    assert "freed memory retained" not in table[-1]  # conftest records the call instead of making it


def test_cli_profile_keeps_freed_memory_and_says_so(tmp_path, capsys, monkeypatch, retain_memory_calls):
    """profile times as eval / predict / train run (retain_freed_memory() first, --no-retain-freed-memory not), and
    its settings line says whether freed memory was retained while timing."""
    monkeypatch.setattr("crossformers.profiling.profile.freed_memory_retained", lambda: True)
    args = ["profile", "fcaformer_nano", "--img-size", "32", "--batch-size", "0", "--threads", "1", "--repeats", "2",
            "--warmup", "1", "--no-memory"]
    before = len(retain_memory_calls)
    assert main(args) == 0
    assert retain_memory_calls[before:] == [True]
    assert "freed memory retained" in capsys.readouterr().out
    assert main([*args, "--no-retain-freed-memory"]) == 0
    assert retain_memory_calls[before:] == [True]


def test_cli_profile_plot_from_json(tmp_path):
    png = tmp_path / "plot.png"
    write_json([_synthetic("fcaformer_l1", 40.0), _synthetic("crossformer_small", 120.0)], tmp_path / "saved.json")
    assert main(["profile", "--from-json", str(tmp_path / "saved.json"), "--plot", str(png)]) == 0
    assert png.is_file()


@pytest.mark.parametrize("argv, message", [
    (["profile", "fcaformer_l11", "--macs-only"], "unknown model"),
    (["profile"], "MODEL"),
    (["profile", "fcaformer_nano", "--img-size", "1", "2", "3"], "--img-size"),
    (["profile", "nomatch*"], "matches"),
    (["profile", "fcaformer_nano", "--dtype", "bf16", "--precision", "int8"], "drop --dtype"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_cli_rejects_bad_flag_values(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "fcaformer_nano", "--threads", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error:")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_subprocess_memory_does_not_inherit_the_parent_size():
    """Linux carries a forking parent's RSS into the child's ru_maxrss across exec: a child spawned by a large
    process must still report only its own peak."""
    from crossformers.profiling.measure import rss_peak_subprocess

    ballast = torch.ones(512 * 2**20)  # 2 GiB resident in this (parent) process
    spec = dict(model="fcaformer_nano", model_kwargs={}, img_size=[32, 32], in_chans=1, batch_sizes=[1], threads=1,
                dtype="fp32")
    mem = rss_peak_subprocess(spec)
    assert ballast.sum().item() == ballast.numel()
    assert 0 < mem["increase_mib"][1] < 200  # a 1.6 M-parameter model at 32x32
    assert mem["peak_mib"][1] < 1536  # imports (~0.7 GiB) + the model, below the parent's 2 GiB of ballast alone


TINY_CROSSVIT = dict(img_size=48, img_scale=(1.0, 32 / 48), embed_dim=(16, 32), num_heads=(2, 2), num_classes=3)


def test_optimize_packs_onednn_weights_and_inductor_compiles_frozen():
    """--optimize adds packed oneDNN weights (where oneDNN is the linear path); --compile with inductor goes through
    compile_for_inference and matches the eager model."""
    from crossformers.layers.linear import OneDNNLinear, onednn_for_inference

    r = profile_model("crossvit_9_240", img_size=48, batch_size=0, optimize=True, memory=False, matmul_peak=False,
                      model_kwargs=TINY_CROSSVIT, **FAST)
    # optimize_for_inference's linear path (calibrated separately from the as-created one)
    assert r.fused and r.onednn_linear == onednn_for_inference()
    assert r.packed_weights == r.onednn_linear
    model = crossformers.create_model("crossvit_9_240", **TINY_CROSSVIT).eval()
    from crossformers.profiling.profile import prepare_model

    torch._dynamo.reset()
    try:
        run = prepare_model(model, torch.device("cpu"), torch.float32, compile=True, pack_weights=True)
        x = torch.randn(2, 3, 48, 48)
        with torch.inference_mode():
            out = run(x)
        torch._dynamo.reset()
        assert type(run).__name__ == "CompiledForInference" and run.module is model
        assert all(m.pack_weights for m in model.modules() if isinstance(m, OneDNNLinear))
        with torch.inference_mode():
            torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    finally:
        torch._dynamo.reset()


def test_compiled_rows_name_the_packing_they_use(monkeypatch):
    """--compile: the products are inductor's, with the weights packed for oneDNN or MKL as onednn_for_compile chose
    (its own calibration, which can differ from the eager choice); the result's onednn_linear names that packing,
    not the kernel of the eager modules. (compile_for_inference is replaced by a wrapper of the eager model here;
    tests/profiling/test_compile_inference.py compiles both packings for real.)"""
    from crossformers.inference.compile import CompiledForInference
    from crossformers.profiling import profile as profile_module

    monkeypatch.setattr(profile_module, "_check_compiler", lambda: None)
    for packed in (True, False):
        monkeypatch.setattr(profile_module, "compile_for_inference",
                            lambda model, packed=packed, **kw: CompiledForInference(model, model, packed))
        r = profile_model("crossvit_9_240", img_size=48, batch_size=0, compile=True, memory=False, matmul_peak=False,
                          onednn_linear=not packed, model_kwargs=TINY_CROSSVIT, **FAST)
        assert r.compiled and r.onednn_linear is packed and not r.packed_weights
        assert ("oneDNN linear" in format_table([r])) is packed


def test_profile_records_and_keeps_a_given_models_packed_weights():
    """A module profiled as given is measured as it is: packing switched on by its owner stays on and is recorded."""
    from crossformers.layers.linear import OneDNNLinear, set_onednn_linear, set_packed_weights

    model = set_packed_weights(set_onednn_linear(crossformers.create_model("crossvit_9_240", **TINY_CROSSVIT)))
    r = profile_model(model, img_size=48, batch_size=0, memory=False, matmul_peak=False, **FAST)
    assert r.onednn_linear and r.packed_weights
    assert all(m.pack_weights for m in model.modules() if isinstance(m, OneDNNLinear))
    plain = profile_model(crossformers.create_model("crossvit_9_240", **TINY_CROSSVIT), img_size=48, batch_size=0,
                          memory=False, matmul_peak=False, **FAST)
    assert not plain.packed_weights


def test_cpu_flags_are_the_kernel_relevant_ones_this_cpu_reports():
    """cpu_flags: the CPU_FLAGS the machine has, in CPU_FLAGS order, as /proc/cpuinfo lists them (every published
    timing names them)."""
    from pathlib import Path

    from crossformers.profiling.measure import CPU_FLAGS, cpu_flags

    flags = cpu_flags()
    assert flags == [f for f in CPU_FLAGS if f in flags]
    info = Path("/proc/cpuinfo")
    if info.is_file():
        listed = set(next(ln for ln in info.read_text().splitlines() if ln.startswith("flags")).split(":", 1)[1].split())
        assert flags == [f for f in CPU_FLAGS if f in listed]


def test_every_table_names_the_machine_it_was_measured_on():
    """The CPU's model name can be generic on a VM ("AMD EPYC"), so results also carry the vendor, family and model
    numbers and the kernel-relevant flags (machine_label); the table's settings line names the machine, and rows
    from other machines (or from files written before results named it) are told apart."""
    import dataclasses
    import re
    from pathlib import Path

    from crossformers.profiling.measure import cpu_flags, cpu_name, machine_info, machine_label
    from crossformers.utils.cpu import cpu_signature

    signature = cpu_signature()
    info = Path("/proc/cpuinfo")
    if info.is_file() and "cpu family" in info.read_text():
        text = info.read_text()
        family = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M).group(1)
        model = re.search(r"^model\s*:\s*(\d+)", text, re.M).group(1)
        assert signature.endswith(f"family {family} model {model}")
    label = machine_label()
    assert label.startswith(cpu_name()) and (not signature or f"[{signature}]" in label)
    assert all(flag in label for flag in cpu_flags())
    assert machine_info()["cpu_signature"] == signature and machine_info()["cpu_flags"] == cpu_flags()

    r = profile_model("fcaformer_nano", img_size=32, batch_size=0, memory=False, **FAST)
    assert r.machine == label and format_table([r]).splitlines()[-1].endswith(f"on {label})")
    assert ProfileResult.from_dict(r.to_dict()).machine == label
    other = dataclasses.replace(r, model="b", machine="Intel Xeon [GenuineIntel family 6 model 143] (amx_bf16)")
    old = ProfileResult.from_dict({k: v for k, v in r.to_dict().items() if k != "machine"} | {"model": "c"})
    assert old.machine == ""  # files written before results named their machine still load
    footer = format_table([r, other, old]).splitlines()[-1]
    assert f"{label} (fcaformer_nano)" in footer and "(amx_bf16) (b)" in footer and "(c)" not in footer
    assert "on " not in format_table([old]).splitlines()[-1].split(";")[-1]


def test_profile_times_an_onnx_export_beside_ours(tmp_path, capsys, monkeypatch):
    """`profile MODEL --onnx FILE`: the exported file is timed in onnxruntime with the same input and threads,
    alternately with ours, and the table gains the ORT median and the paired ours / ORT ratio (the median of the
    per-round ratios); a file of another size is refused before anything is timed."""
    pytest.importorskip("onnxruntime")
    from crossformers.export import export_model
    from crossformers.profiling import profile as profile_module

    path = tmp_path / "nano.onnx"
    export_model("fcaformer_nano", output=path, img_size=(32, 32))
    seen = {}
    alternating = profile_module.time_alternating

    def spy(calls, rounds, **kw):
        seen.update(names=sorted(calls), rounds=rounds, kw=kw, times=alternating(calls, rounds, **kw))
        return seen["times"]

    monkeypatch.setattr(profile_module, "ONNX_PAUSE_S", 0.01)
    monkeypatch.setattr(profile_module, "time_alternating", spy)
    r = profile_model("fcaformer_nano", img_size=32, batch_size=0, memory=False, onnx=path, **dict(FAST, repeats=7))
    # 7 timed calls of each, rounded up to whole blocks: 2 rounds of ONNX_BLOCK, each after a pause
    block = profile_module.ONNX_BLOCK
    assert seen["names"] == ["onnx", "ours"] and seen["rounds"] == -(-7 // block)
    assert seen["kw"]["block"] == block and seen["kw"]["pause_s"] == 0.01
    ours, ort = seen["times"]["ours"], seen["times"]["onnx"]
    assert len(ours) == len(ort) == seen["rounds"] * block
    assert r.latency_samples_ms == ours and r.latency_ms == statistics.median(ours)
    assert r.onnx_file == str(path) and r.onnx_latency_ms == statistics.median(ort) <= r.onnx_latency_p90_ms
    per_round = [statistics.median(ours[i:i + block]) / statistics.median(ort[i:i + block])
                 for i in range(0, len(ours), block)]
    assert r.onnx_ratio_paired == pytest.approx(statistics.median(per_round))
    table = format_table([r])
    assert "ORT b1 med (ms)" in table and "ours / ORT (paired)" in table
    assert f"{r.onnx_ratio_paired:.2f}" in table
    old = ProfileResult.from_dict({**r.to_dict(), "onnx_ratio_paired": None})  # a result written before pairing
    assert f"{old.latency_ms / old.onnx_latency_ms:.2f}" in format_table([old])
    seen.clear()
    assert "ORT" not in format_table([profile_model("fcaformer_nano", img_size=32, batch_size=0, memory=False, **FAST)])
    with pytest.raises(ProfilingError, match=r"takes input \[1, 1, 32, 32\], not \[1, 1, 48, 48\]"):
        profile_model("fcaformer_nano", img_size=48, batch_size=0, memory=False, onnx=path, **FAST)
    assert not seen  # refused before any timing
    with pytest.raises(ProfilingError, match="ONNX file not found"):
        profile_model("fcaformer_nano", img_size=32, batch_size=0, memory=False, onnx=tmp_path / "no.onnx", **FAST)
    assert main(["profile", "fcaformer_nano", "crossformer_tiny", "--onnx", str(path)]) == 2
    assert "--onnx given 1 time(s) for 2 model(s)" in capsys.readouterr().err


def test_time_alternating_blocks_pauses_and_the_paired_ratio(monkeypatch):
    """Blocks of timed calls per round, each after a pause and one untimed settling call, in a shuffled order; the
    paired ratio is the median over rounds of the block medians' ratio."""
    from crossformers.profiling import measure

    counts = {"a": 0, "b": 0}
    log = []
    monkeypatch.setattr(measure.time, "sleep", lambda s: log.append(("pause", s)))

    def call(name):
        def fn():
            counts[name] += 1
            log.append(name)
        return fn

    times = measure.time_alternating({"a": call("a"), "b": call("b")}, rounds=3, warmup=1, block=4, pause_s=0.25)
    assert [len(t) for t in times.values()] == [12, 12]
    assert counts == {"a": 1 + 3 * 5, "b": 1 + 3 * 5}  # warm-up, then per round 1 settling + 4 timed calls
    rounds = log[2:]  # after the two warm-up calls: pause, 5 calls of one, pause, 5 calls of the other, ...
    assert len(rounds) == 3 * 2 * 6
    for i in range(0, len(rounds), 6):
        assert rounds[i] == ("pause", 0.25) and len(set(rounds[i + 1:i + 6])) == 1
    log.clear()
    plain = measure.time_alternating({"a": call("a"), "b": call("b")}, rounds=2, warmup=0)  # block 1, no pause
    assert [len(t) for t in plain.values()] == [2, 2] and sorted(log) == ["a", "a", "b", "b"]
    a = [2.0, 2.0, 9.0, 4.0, 4.0, 4.0]
    b = [1.0, 1.0, 1.0, 4.0, 4.0, 0.1]
    assert measure.paired_ratio(a, b, block=3) == pytest.approx(statistics.median([2.0 / 1.0, 4.0 / 4.0]))
    assert measure.paired_ratio([3.0, 1.0], [1.0, 2.0]) == pytest.approx(statistics.median([3.0, 0.5]))
    with pytest.raises(ValueError, match="whole rounds of 4"):
        measure.paired_ratio(a, b, block=4)
    with pytest.raises(ValueError, match="got 6 and 2"):
        measure.paired_ratio(a, b[:2])


def test_compare_alternating_checks_outputs_against_the_reference_then_times_them_side_by_side():
    from crossformers.profiling import measure

    x = torch.randn(8, 8)
    calls = {"plain": lambda: x @ x, "transposed": lambda: (x.t() @ x.t()).t()}
    r = measure.compare_alternating(calls, "plain", rounds=3, what="the products")
    assert set(r) == {"plain_ms", "transposed_ms", "paired_transposed_vs_plain", "max_abs_diff"}
    assert r["max_abs_diff"] < 1e-5 and r["paired_transposed_vs_plain"] > 0
    seen = []
    measure.compare_alternating({"a": lambda: seen.append(torch.is_inference_mode_enabled()) or x, "b": lambda: x},
                                "a", rounds=1, what="x")
    assert seen and all(seen)
    with pytest.raises(AssertionError, match="the products disagree by"):
        measure.compare_alternating({"plain": lambda: x, "off": lambda: x + 1}, "plain", rounds=1, what="the products")


@pytest.mark.parametrize("native_ms,onednn_ms,winner", [(2.0, 1.0, "onednn"), (1.0, 4.0, "native")])
def test_matmul_peak_takes_the_faster_library(monkeypatch, native_ms, onednn_ms, winner):
    from crossformers.layers.linear import onednn_available
    from crossformers.profiling import measure

    if not onednn_available():
        pytest.skip("this PyTorch build has no oneDNN")
    times = iter([[native_ms], [onednn_ms]])  # matmul_peak times torch.mm first, then oneDNN's product
    monkeypatch.setattr(measure, "time_calls", lambda fn, device, warmup, repeats: (fn(), next(times))[1])
    monkeypatch.setattr(measure, "_PEAK_CACHE", {})
    gflops, kernel = measure.matmul_peak(1, n=100)
    assert kernel == winner and gflops == pytest.approx(2 * 100 ** 3 / (min(native_ms, onednn_ms) / 1e3) / 1e9)


def test_matmul_peak_kernels_and_errors():
    from crossformers.layers.linear import onednn_available
    from crossformers.profiling.measure import matmul_peak

    native, k_native = matmul_peak(1, n=256, repeats=3, kernel="native")
    assert native > 0 and k_native == "native"
    if onednn_available():
        onednn, k_onednn = matmul_peak(1, n=256, repeats=3, kernel="onednn")
        assert onednn > 0 and k_onednn == "onednn"
    assert matmul_peak(1, dtype=torch.bfloat16, n=256, repeats=2)[1] == "native"  # oneDNN's peak is fp32 only
    with pytest.raises(ProfilingError, match="use one of best, native, onednn"):
        matmul_peak(1, n=64, kernel="mkl")
    with pytest.raises(ProfilingError, match="use kernel='native'"):
        matmul_peak(1, dtype=torch.bfloat16, n=64, kernel="onednn")
