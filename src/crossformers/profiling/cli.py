"""``crossformers profile``: the profiler on the command line (plugged into ``crossformers.cli``).

Examples::

    crossformers profile fcaformer_l1 crossformer_tiny --threads 2 --batch-size 32
    crossformers profile crossvit_9_240 --img-size 224 --breakdown --json out/cv9.json --csv out/cv9.csv
    crossformers profile fcaformer_l2 --optimize                 # fused BN, oneDNN linear, channels-last
    crossformers profile fcaformer_l2 --fuse --channels-last --compile
    crossformers profile crossformer_tiny --precision int8      # PT2E int8 (torchao), compiled by inductor
    crossformers profile --plot docs/accuracy_vs_cost.png --threads 2        # every model with published accuracy
    crossformers profile --plot fig.png --from-json out/all.json              # re-plot saved results
"""
from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys

import timm

import crossformers
from crossformers.cli_types import add_retain_memory_flag, json_object, non_negative_int, positive_int
from crossformers.engine.config import TIMM_PREFIX
from crossformers.errors import UnknownModelError
from crossformers.factory import timm_name
from crossformers.fileio import atomic_write_text
from crossformers.inference.allocator import retain_freed_memory

from .errors import ProfilingError
from .plot import plot_accuracy
from .profile import profile_model
from .published import PUBLISHED
from .report import format_breakdown, format_markdown, format_table, read_json, write_csv, write_json

__all__ = ["add_subcommands", "run"]


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``profile`` subcommand on the ``crossformers`` parser."""
    p = subparsers.add_parser("profile", help="params, MACs, latency, throughput, memory, FLOP rate of models",
                              description=(
        "Profile models: parameters, MACs (FLOPs/2, explicit attention, per image), batch-1 latency (median and p90 "
        "after warm-up, ms), throughput at batch N (img/s), peak memory (MiB: peak RSS of inference in a fresh "
        "process minus its RSS after imports on CPU; max allocated on CUDA), achieved GFLOP/s and its fraction of the "
        "measured matmul peak (2048x2048 product, same threads; fp32 on the CPU: the faster of MKL and oneDNN). Timings on a shared machine are noisy: compare "
        "models side by side (benchmarks/)."))
    p.add_argument("models", metavar="MODEL", nargs="*",
                   help="crossformers model names (or timm:<name>); shell patterns such as 'fcaformer_l*' expand")
    p.add_argument("--img-size", type=positive_int, nargs="+", metavar=("H", "W"),
                   help="input height and width in pixels (one value = square; default: each model's own)")
    p.add_argument("--batch-size", type=non_negative_int, default=32, metavar="N",
                   help="batch for the throughput measurement (default 32; 0 skips it)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="T",
                   help="CPU intra-op threads (default: torch's default)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="weights and inputs dtype (default fp32)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"), help=(
        "inference precision through crossformers.inference.to_precision: bf16 (folded, weights cast), int8 "
        "(dynamic PT2E quantization via torchao, compiled; x86 + C++ compiler); default fp32"))
    p.add_argument("--compile", action="store_true", help=(
        "torch.compile (inductor) before timing: frozen weights, packed for oneDNN or MKL as --calibrate-linear "
        "--compile measured (else as the model's linear layers); with --calibrate-linear: also time compiled models "
        "with both packings (a few minutes more)"))
    p.add_argument("--fuse", action="store_true", help="fold BatchNorms and layer scales into the layers before them")
    p.add_argument("--channels-last", action="store_true", help="run convolutions channels-last")
    p.add_argument("--onednn-linear", action=argparse.BooleanOptionalAction, default=None, help=(
        "force linear layers through oneDNN (--onednn-linear) or MKL (--no-onednn-linear); default: as created "
        "(this machine's --calibrate-linear choice, else oneDNN on AVX-512 CPUs; see CROSSFORMERS_ONEDNN_LINEAR)"))
    p.add_argument("--optimize", action="store_true", help=(
        "every fast path: --fuse, --onednn-linear with packed weights (MKL instead where --calibrate-linear "
        "measured it faster on this machine), and --channels-last where it helps (FcaFormer)"))
    p.add_argument("--warmup", type=non_negative_int, default=5, help="untimed batch-1 calls first (default 5)")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed batch-1 calls (default 20)")
    p.add_argument("--throughput-repeats", type=positive_int, default=3, help="timed batches of N (default 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--macs-only", action="store_true", help="params and MACs only (no timing, no memory)")
    p.add_argument("--breakdown", action="store_true", help="print the MACs of every module (see --breakdown-depth)")
    p.add_argument("--breakdown-depth", type=positive_int, default=2, metavar="D",
                   help="module name levels in the breakdown (default 2)")
    p.add_argument("--calibrate-linear", action="store_true", help=(
        "time MKL against oneDNN on whole models (batch-1 inference as created and optimized, and a training step) "
        "with --threads threads and record the faster paths as this machine's defaults for new models, "
        "optimize_for_inference (also on one large variant per family) and training (about 90 s; run it on a quiet "
        "machine; no MODEL needed); add "
        "--compile to calibrate compile_for_inference's weight packing too. With MODEL names: time those variants "
        "on their own too (as created and optimized), and their models follow their own measurement"))
    p.add_argument("--onnx", action="append", metavar="FILE", help=(
        "also time this ONNX export of the MODEL in onnxruntime (CPU, same threads), alternately with ours, and "
        "report the paired ratio; once per MODEL, in their order (write it with `crossformers export MODEL --output "
        "FILE`)"))
    p.add_argument("--model-kwargs", type=json_object, metavar="JSON", help="extra constructor arguments (JSON)")
    p.add_argument("--json", metavar="PATH", help="write the results (and machine info) as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the results as CSV")
    p.add_argument("--markdown", metavar="PATH", help="write the results table as Markdown")
    p.add_argument("--plot", metavar="PATH", help=(
        "plot published top-1 against MACs and against measured latency for every registered model with a published "
        "accuracy (matching --plot-models); models not profiled above are timed quickly (latency only)"))
    p.add_argument("--plot-models", default="*", metavar="PATTERN",
                   help="restrict the --plot models (shell pattern, default all)")
    p.add_argument("--from-json", metavar="PATH", help="load results written by --json instead of measuring")
    add_retain_memory_flag(p)
    p.set_defaults(func=run)


def _expand(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if any(c in name for c in "*?[") and not name.startswith("timm:"):
            hits = crossformers.list_models(name)
            if not hits:
                raise UnknownModelError(f"no registered model matches {name!r}: see `crossformers models`")
            out += hits
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def _validate(names: list[str]) -> None:
    """Fail before any measurement if a name is unknown (the error suggests close names)."""
    for name in names:
        if name.startswith(TIMM_PREFIX):
            if not timm.is_model(name[len(TIMM_PREFIX):]):
                raise UnknownModelError(f"unknown timm model '{name[len(TIMM_PREFIX):]}': see timm.list_models()")
        else:
            timm_name(name)


#: alternating rounds of the two compiled forms per model in ``--calibrate-linear --compile``
CALIBRATE_COMPILE_ROUNDS = 15


def _eager_times(m: dict) -> str:
    """One calibration entry's four eager forms in words: batch-1 medians (ms) and the oneDNN / MKL ratios."""
    return (f"batch 1: MKL {m['mkl_ms']:6.1f} ms, oneDNN {m['onednn_ms']:6.1f} ms ({m['ratio']:.2f}); optimized: "
            f"MKL {m['opt_mkl_ms']:6.1f} ms, packed oneDNN {m['opt_onednn_packed_ms']:6.1f} ms ({m['packed_ratio']:.2f})")


def _calibrate(threads: int | None, compiled: bool = False) -> int:
    """``profile --calibrate-linear [--compile]``: measure, record, print each model and the choices."""
    from ..layers.linear_calibration import (
        calibrated_choice,
        calibrated_compile_choice,
        calibrated_inference_choice,
        calibrated_training_choice,
    )
    from .calibrate import TRAIN_BATCH, calibrate_linear

    r = calibrate_linear(threads=threads, compile_rounds=CALIBRATE_COMPILE_ROUNDS if compiled else 0)
    for name, m in r["models"].items():
        print(f"{name:<18} {_eager_times(m)}")
        print(f"{'':<18} training step of {TRAIN_BATCH}: MKL {m['train_mkl_ms']:6.0f} ms, oneDNN "
              f"{m['train_onednn_ms']:6.0f} ms ({m['train_ratio']:.2f})")
        if "compile_ratio" in m:
            print(f"{'':<18} compiled, batch 1: weights packed for MKL {m['compile_mkl_ms']:6.1f} ms, for oneDNN "
                  f"{m['compile_onednn_packed_ms']:6.1f} ms ({m['compile_ratio']:.2f})")
    for family, m in r.get("large_models", {}).items():
        print(f"{m['model']:<18} {_eager_times(m)}: new models and optimize_for_inference of {family}'s family "
              "follow these ratios for models nearer this one in size")
    name = {"onednn": "oneDNN", "onednn_packed": "packed oneDNN", "mkl": "MKL"}
    compiled_mean = f", {r['compile_ratio']:.2f} compiled" if "compile_ratio" in r else ""
    compiled_choice = f", compile_for_inference {name[r['compile_choice']]}" if "compile_choice" in r else ""
    print(f"geometric means oneDNN / MKL: {r['ratio']:.2f} as created, {r['packed_ratio']:.2f} optimized, "
          f"{r['train_ratio']:.2f} training{compiled_mean}, with {r['threads']} thread(s): other modules use "
          f"{name[r['choice']]} linear layers, optimize_for_inference {name[r['inference_choice']]}, training "
          f"{name[r['train_choice']]}{compiled_choice}, on this machine ({r['machine']}; freed memory "
          f"{'retained' if r['freed_memory_retained'] else 'returned to the system (glibc defaults)'})")
    for family in r["models"]:  # what each family now takes: the recorded decision, as the library reads it
        new, packed, train, comp = (choose(r["threads"], model=family) for choose in
                                    (calibrated_choice, calibrated_inference_choice, calibrated_training_choice,
                                     calibrated_compile_choice))
        print(f"models of {family}'s family: new models {'oneDNN' if new else 'MKL'}, optimize_for_inference "
              f"{'packed oneDNN' if packed else 'MKL'}, training {'oneDNN' if train else 'MKL'}"
              + ("" if comp is None else f", compile_for_inference {'packed oneDNN' if comp else 'MKL'}"))
        large = r.get("large_models", {}).get(family)
        if large:  # models nearer the large variant in size
            new, packed = (choose(r["threads"], model=family, params=large["params"]) for choose in
                           (calibrated_choice, calibrated_inference_choice))
            print(f"{'':<18} nearer {large['model']} in size: new models {'oneDNN' if new else 'MKL'}, "
                  f"optimize_for_inference {'packed oneDNN' if packed else 'MKL'}")
    print(f"recorded in {r['path']} (CROSSFORMERS_ONEDNN_LINEAR=0/1 still overrides it)")
    return 0


def _calibrate_variants(names: list[str], threads: int | None, compiled: bool = False) -> int:
    """``profile --calibrate-linear MODEL ...``: time each variant on its own (after the family calibration, if this
    machine has none yet) and print the paths its models now take."""
    from ..layers.linear_calibration import calibrated_choice, calibrated_inference_choice, calibration_record
    from .calibrate import calibrate_variants

    if calibration_record(threads) is None:
        print("no calibration for this machine and thread count yet: timing the families first")
        _calibrate(threads, compiled=compiled)
    r = calibrate_variants(names, threads=threads)
    for arch, m in r["variants"].items():
        new, packed = (choose(r["threads"], variant=arch) for choose in (calibrated_choice,
                                                                         calibrated_inference_choice))
        print(f"{m['model']:<22} {_eager_times(m)}: new models {'oneDNN' if new else 'MKL'}, "
              f"optimize_for_inference {'packed oneDNN' if packed else 'MKL'}")
    print(f"recorded in {r['path']} for {r['threads']} thread(s) (CROSSFORMERS_ONEDNN_LINEAR=0/1 still overrides it)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``crossformers profile`` for parsed ``args``; returns the exit code."""
    if not args.calibrate_linear and not args.models and not args.plot and not args.from_json:
        raise ProfilingError("name at least one MODEL (see `crossformers models`), or use --plot / --from-json")
    if args.retain_freed_memory:  # as eval, predict and train run models (timed calls reuse freed memory); the
        retain_freed_memory()  # calibration too, so that it chooses for the setting the commands run in
    if args.calibrate_linear:
        if args.models:
            return _calibrate_variants(_expand(args.models), args.threads, compiled=args.compile)
        return _calibrate(args.threads, compiled=args.compile)
    if args.img_size is not None and len(args.img_size) > 2:
        raise ProfilingError(f"--img-size takes H W (or one value for a square), got {len(args.img_size)} values")
    if args.precision != "fp32" and args.dtype != "fp32":
        raise ProfilingError(f"--dtype {args.dtype} and --precision {args.precision} both set the precision: drop "
                             "--dtype")
    size = None if args.img_size is None else tuple(args.img_size) if len(args.img_size) == 2 else args.img_size[0]
    common = dict(img_size=size, threads=args.threads, device=args.device, compile=args.compile, dtype=args.dtype,
                  fuse=args.fuse, channels_last=args.channels_last, onednn_linear=args.onednn_linear,
                  optimize=args.optimize, warmup=args.warmup,
                  model_kwargs=args.model_kwargs, precision=args.precision)

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    names = _expand(args.models)
    _validate(names)
    onnx_files = args.onnx or []
    if onnx_files and len(onnx_files) != len(names):
        raise ProfilingError(f"--onnx given {len(onnx_files)} time(s) for {len(names)} model(s): give one ONNX file per "
                             "MODEL, in the same order")
    results = read_json(args.from_json) if args.from_json else []
    for i, name in enumerate(names):
        log(f"profiling {name} ...")
        results.append(profile_model(
            name, batch_size=args.batch_size, repeats=args.repeats, throughput_repeats=args.throughput_repeats,
            latency=not args.macs_only, memory=not (args.no_memory or args.macs_only), breakdown=args.breakdown,
            onnx=onnx_files[i] if onnx_files else None, **common))
    if args.plot and not args.from_json:
        done = {r.model for r in results}
        for name in [n for n in sorted(PUBLISHED) if fnmatch.fnmatch(n, args.plot_models) and n not in done]:
            log(f"timing {name} for the plot ...")
            results.append(profile_model(name, batch_size=0, repeats=max(3, args.repeats // 4), memory=False,
                                         **{**common, "warmup": min(args.warmup, 2)}))
    if results:
        print(format_table(results))
    if args.breakdown:
        for r in results:
            print()
            print(format_breakdown(r, depth=args.breakdown_depth))
    if args.plot:
        path = plot_accuracy([r for r in results if fnmatch.fnmatch(r.model, args.plot_models)], args.plot)
        log(f"wrote {path}")
    command = ("crossformers " + " ".join(shlex.quote(a) for a in sys.argv[1:])
               if sys.argv[1:2] == ["profile"] else None)
    if args.json:
        log(f"wrote {write_json(results, args.json, extra={'command': command})}")
    if args.csv:
        log(f"wrote {write_csv(results, args.csv)}")
    if args.markdown:
        atomic_write_text(args.markdown, format_markdown(results))
        log(f"wrote {args.markdown}")
    return 0
