"""The ``crossformers`` command line: ``train``, ``eval``, ``predict`` and ``models``.

Each subcommand is a thin layer over the Python API (:mod:`crossformers.engine`). Bad input (unknown model, missing
dataset, corrupt image, unusable checkpoint, NaN loss, ...) is reported as ONE line ``error: <message>`` on stderr
with exit code 2 and no traceback; nothing existing is overwritten in that case.

Examples::

    crossformers train --model fcaformer_nano --data fashion-mnist --epochs 10 --output runs/nano
    crossformers train --resume runs/nano --epochs 20          # continue (exactly) and extend
    torchrun --nproc_per_node 2 -m crossformers train ...     # data parallel; --batch-size is the global batch
    crossformers eval runs/nano --data fashion-mnist
    crossformers eval fcaformer_l2 --checkpoint fcaformer_l2.pth --data /data/imagenet
    crossformers predict runs/nano shoe.png shirt.jpg --topk 3
    crossformers models --pattern 'fcaformer*'
    crossformers convert runs/nano --output exported/nano      # timm / Hub folder: create_model("local-dir:...")
    crossformers dense train --task detection --model crossformer_small --data data/coco --output runs/det
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

import crossformers
from crossformers import __version__
from crossformers.cli_types import add_retain_memory_flag, json_object
from crossformers.cli_types import setup_logging as _setup_logging
from crossformers.data import DataError
from crossformers.dense import cli as dense_cli
from crossformers.engine import (
    ConfigError,
    PartialPredictionError,
    TrainConfig,
    predict,
    resolve_checkpoint_dir,
    train,
)
from crossformers.engine.config import INTERPOLATIONS, LR_SCHEDULE_UNITS
from crossformers.engine.config_file import log_merge_notes, merge_train_options
from crossformers.engine.convert import convert
from crossformers.engine.distributed import resolve_device
from crossformers.engine.evaluate import evaluate, write_eval_outputs
from crossformers.engine.loading import model_in_chans
from crossformers.engine.modeling import count_macs, count_params
from crossformers.engine.recipes import print_recipes
from crossformers.engine.train import saved_run_options
from crossformers.errors import CheckpointError, CrossformersError, UnknownModelError
from crossformers.hub import is_local_dir
from crossformers.inference.allocator import retain_freed_memory
from crossformers.inference.precision import PRECISIONS, check_precision, to_precision

__all__ = ["main", "build_parser"]

_EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one ``error:`` line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(_EXIT_BAD_INPUT)


# ------------------------------------------------------------------------------------------------ value parsers
def _none_or(cast):
    def parse(text: str):
        if text.strip().lower() in ("none", "null", "off"):
            return None
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r} (expected {cast.__name__} or 'none')") from None
    parse.__name__ = f"{cast.__name__} or none"
    return parse


# field name -> (flag, argparse kwargs); defaults are SUPPRESSed so only explicit flags override a base config
_TRAIN_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("model", "--model", dict(help="crossformers model name, or timm:<name> for any timm model (default fcaformer_nano)")),
    ("model_kwargs", "--model-kwargs", dict(type=json_object, metavar="JSON",
                                            help="extra model constructor arguments as a JSON object")),
    ("data", "--data", dict(help="'fashion-mnist' or an image-folder root with train/ and val/ (default fashion-mnist)")),
    ("output", "--output", dict(help="run directory (must be new or empty unless --resume; default runs/train)")),
    ("resume", "--resume", dict(metavar="DIR", help="continue a run exactly from RUN or RUN/last; flags given here "
                                                    "override the run's saved options (e.g. --epochs, --lr)")),
    ("pretrained", "--pretrained", dict(metavar="PATH", help="fine-tune from our checkpoint/run directory or an official "
                                                             ".pth/.safetensors file (new head if the class count differs)")),
    ("img_size", "--img-size", dict(type=_none_or(int), metavar="PX", help="input side in pixels (default: the model's)")),
    ("crop_pct", "--crop-pct", dict(type=_none_or(float), metavar="F", help="evaluation centre-crop fraction, e.g. "
                                                                       "0.875 (default: the model's)")),
    ("interpolation", "--interpolation", dict(type=_none_or(str), choices=(None, *INTERPOLATIONS),
                                              help="resize interpolation (default: the model's)")),
    ("in_chans", "--in-chans", dict(type=_none_or(int), help="input channels 1 or 3 (default: the dataset's)")),
    ("epochs", "--epochs", dict(type=int, help="epochs (default 10)")),
    ("batch_size", "--batch-size", dict(type=int, help="GLOBAL batch size: split over torchrun processes (default 128)")),
    ("lr", "--lr", dict(type=float, help="peak learning rate (default 1e-3)")),
    ("min_lr", "--min-lr", dict(type=float, help="final cosine learning rate (default 1e-6)")),
    ("warmup_lr", "--warmup-lr", dict(type=float, help="learning rate at the start of warmup (default 1e-6)")),
    ("warmup_epochs", "--warmup-epochs", dict(type=float, help="linear warmup in epochs (default 1)")),
    ("warmup_steps", "--warmup-steps", dict(type=_none_or(int), help="linear warmup in optimizer steps (overrides epochs)")),
    ("weight_decay", "--weight-decay", dict(type=float, help="AdamW weight decay (default 0.05)")),
    ("lr_schedule_unit", "--lr-schedule-unit", dict(choices=LR_SCHEDULE_UNITS, help="set the learning rate every "
                                                     "optimizer step (default) or once per epoch (DeiT / CrossViT)")),
    ("finetune_eval_mode", "--finetune-eval-mode", dict(action=argparse.BooleanOptionalAction, help="train with the "
                                                        "model in eval mode (CrossViT's --finetune; default off)")),
    ("layer_decay", "--layer-decay", dict(type=_none_or(float), help="layer-wise lr decay, e.g. 0.75 (default off)")),
    ("clip_grad", "--clip-grad", dict(type=_none_or(float), help="clip the gradient L2 norm to this value (default off)")),
    ("accum_steps", "--accum-steps", dict(type=int, help="gradient accumulation micro-batches per step (default 1)")),
    ("ema_decay", "--ema-decay", dict(type=float, help="EMA decay of the weights, e.g. 0.9998; 0 = off (default)")),
    ("amp", "--amp", dict(action=argparse.BooleanOptionalAction, help="bfloat16 autocast (default off)")),
    ("label_smoothing", "--label-smoothing", dict(type=float, help="label smoothing (default 0.1)")),
    ("drop_path_rate", "--drop-path-rate", dict(type=float, help="stochastic depth rate (default 0)")),
    ("mixup", "--mixup", dict(type=float, help="Mixup alpha, 0 = off (default)")),
    ("cutmix", "--cutmix", dict(type=float, help="CutMix alpha, 0 = off (default)")),
    ("mixup_prob", "--mixup-prob", dict(type=float, help="probability of mixing a batch (default 1)")),
    ("mixup_switch_prob", "--mixup-switch-prob", dict(type=float, help="CutMix instead of Mixup probability (0.5)")),
    ("auto_augment", "--auto-augment", dict(type=_none_or(str), metavar="POLICY",
                                            help="timm policy, e.g. rand-m9-mstd0.5-inc1 (default off)")),
    ("re_prob", "--re-prob", dict(type=float, help="RandomErasing probability (default 0)")),
    ("aug_repeats", "--aug-repeats", dict(type=int, metavar="N", help="repeated augmentation: each image N times "
                                                                     "per epoch, e.g. 3 (default 0 = off)")),
    ("hflip", "--hflip", dict(type=float, help="horizontal flip probability (default 0.5)")),
    ("scale", "--scale", dict(type=float, nargs=2, metavar=("LO", "HI"), help="RandomResizedCrop area range (0.08 1)")),
    ("ratio", "--ratio", dict(type=float, nargs=2, metavar=("LO", "HI"), help="RandomResizedCrop aspect range (0.75 1.33)")),
    ("color_jitter", "--color-jitter", dict(type=_none_or(float), help="colour jitter strength (default off)")),
    ("grad_checkpointing", "--grad-checkpointing", dict(action=argparse.BooleanOptionalAction,
                                                        help="recompute activations to save memory")),
    ("channels_last", "--channels-last", dict(action=argparse.BooleanOptionalAction,
                                              help="channels-last memory for the convolutions (default: on the CPU "
                                                   "for models measured faster with it, FcaFormer)")),
    ("seed", "--seed", dict(type=int, help="random seed (default 0)")),
    ("workers", "--workers", dict(type=int, help="data-loading worker processes per training process (default 0)")),
    ("limit_train", "--limit-train", dict(type=_none_or(int), metavar="N", help="train on a class-balanced subset of N")),
    ("limit_val", "--limit-val", dict(type=_none_or(int), metavar="N", help="validate on a class-balanced subset of N")),
    ("check_images", "--check-images", dict(action=argparse.BooleanOptionalAction,
                                            help="decode every image once first and list corrupt files")),
    ("log_interval", "--log-interval", dict(type=int, help="log every N optimizer steps (default 50)")),
    ("max_steps", "--max-steps", dict(type=_none_or(int), metavar="N",
                                      help="stop after N optimizer steps in total and save a checkpoint")),
    ("device", "--device", dict(help="auto | cpu | cuda | cuda:N (default auto)")),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``crossformers`` command."""
    parser = _Parser(prog="crossformers", description="Cross-attention vision transformers: train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"crossformers {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train or fine-tune a model", description=(
        "Train a model. --batch-size is the GLOBAL batch (divided over `torchrun` processes). Writes RUN/last, "
        "RUN/best, metrics.csv, metrics.jsonl, curves.png, config.json and config.yaml (all resolved options: "
        "`--config RUN/config.yaml` repeats the run) into --output."))
    p.add_argument("--config", metavar="YAML", help="options from a YAML (or JSON) file, keys = option names as in "
                                                   "RUN/config.yaml; flags given on the command line override it")
    p.add_argument("--recipe", metavar="NAME", help="a paper's ImageNet recipe (`crossformers recipes` lists them); "
                                                   "--config and flags override its values")
    for field, flag, kwargs in _TRAIN_OPTIONS:
        p.add_argument(flag, dest=field, default=argparse.SUPPRESS, **kwargs)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal)")
    add_retain_memory_flag(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint or model on a dataset split", description=(
        "Evaluate our checkpoint (run directory or checkpoint directory) or a model by name, optionally with an "
        "official checkpoint file. Preprocessing follows the checkpoint / the model's pretrained_cfg."))
    p.add_argument("model", metavar="CHECKPOINT_OR_MODEL", help="run/checkpoint directory, converted folder "
                                                                "(`crossformers convert`), or a model name")
    p.add_argument("--data", required=True, help="'fashion-mnist' or an image-folder root")
    p.add_argument("--split", default="val", choices=("val", "train", "test"), help="split (default val)")
    p.add_argument("--checkpoint", metavar="FILE", help="official or state-dict weights for a model given by name")
    p.add_argument("--pretrained", action="store_true", help="the authors' released weights for a model name")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of our checkpoint")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    p.add_argument("--limit", type=_none_or(int), default=None, metavar="N", help="class-balanced subset of N images")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    _add_precision(p)
    p.add_argument("--output", metavar="DIR", help="write metrics.json, confusion_matrix.{json,png} here (default: "
                                                   "RUN/eval-SPLIT for our checkpoints, nothing for model names)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    add_retain_memory_flag(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of image files", description=(
        "Classify image files with one of our checkpoints (preprocessing from its meta.json) or a converted folder "
        "(`crossformers convert`; preprocessing and label names from its config.json)."))
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run or checkpoint directory, or a converted folder")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_precision(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_retain_memory_flag(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("models", help="list registered models with params and GMACs", description=(
        "Registered crossformers models: parameters (millions) and GMACs (10^9 multiply-accumulates, FLOPs/2, "
        "explicit attention) for one image at the model's default input size."))
    p.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'fcaformer*'")
    p.add_argument("--no-macs", action="store_true", help="skip MAC counting (faster)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("recipes", help="the papers' ImageNet training recipes (for train --recipe)", description=(
        "List the papers' training recipes, or print one: every value with its source file and line in the "
        "authors' code."))
    p.add_argument("name", nargs="?", metavar="NAME", help="a recipe to print (default: list all)")
    p.add_argument("--model", help="also show the options `train --recipe NAME --model MODEL` resolves to")
    p.set_defaults(func=_cmd_recipes)

    p = sub.add_parser("convert", help="write weights as a timm / Hugging Face Hub folder others can load",
                       description=(
        "Convert an official checkpoint (with --model) or one of our runs into a folder with model.safetensors and "
        "timm's config.json (architecture, num_classes, label_names, pretrained_cfg). Load it with "
        "crossformers.create_model('local-dir:DIR') or timm.create_model('local-dir:DIR', pretrained=True)."))
    p.add_argument("source", metavar="SOURCE", help="official .pth/.safetensors file, or a run folder RUN, RUN/best "
                                                    "or RUN/last (RUN = RUN/best)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write (must be new or empty)")
    p.add_argument("--model", help="model name of an official checkpoint, e.g. crossformer_small")
    p.add_argument("--model-kwargs", type=json_object, metavar="JSON",
                   help="constructor arguments of an official checkpoint's model, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--ema", action="store_true", help="export the EMA weights of a run")
    p.add_argument("--label-names", metavar="FILE", help="class names, one per line in classifier order (default: "
                                                         "the run's classes; ImageNet-1k synsets for 1000 classes)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    p.set_defaults(func=_cmd_convert)
    _add_plugin_subcommands(sub)
    _add_dense_subcommands(sub)
    return parser


# packages that define their own subcommands next to their API: each has a ``cli`` module with
# ``add_subcommands(subparsers)`` registering parsers whose ``func(args) -> int`` runs the command
_PLUGIN_PACKAGES = ("profiling", "analysis", "export")


def _add_plugin_subcommands(sub: argparse._SubParsersAction) -> None:
    for package in _PLUGIN_PACKAGES:
        name = f"crossformers.{package}.cli"
        if importlib.util.find_spec(f"crossformers.{package}") is None or importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).add_subcommands(sub)


def _add_dense_subcommands(sub: argparse._SubParsersAction) -> None:
    """``crossformers dense ...`` (:mod:`crossformers.dense.cli`), with the tasks of the packages that own the heads."""
    importlib.import_module("crossformers.detection")  # registers detection / instance-segmentation
    if importlib.util.find_spec("segmentation_models_pytorch") is not None:
        importlib.import_module("crossformers.segmentation")  # registers semantic-segmentation
    dense_cli.add_subcommands(sub, _TRAIN_OPTIONS)


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help=(
        "numeric precision of inference (crossformers.inference.to_precision): fp32 (default); bf16 (weights cast, "
        "fast on CPUs with AVX512-BF16/AMX); int8 (dynamic PT2E quantization via torchao, compiled by inductor: "
        "x86 CPU, C++ compiler; the first batch compiles for tens of seconds)"))


def _precision_transform(args: argparse.Namespace):
    """None for fp32, else the model transform of ``--precision`` (checked against the device first)."""
    if args.precision == "fp32":
        return None
    if getattr(args, "amp", False):
        raise ConfigError(f"--amp and --precision {args.precision} both set the precision: drop --amp")
    check_precision(args.precision, resolve_device(args.device))
    return lambda model: to_precision(model, args.precision)


# ------------------------------------------------------------------------------------------------ subcommands
def train_config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` described by parsed ``train`` arguments: defaults < --recipe < --config file <
    explicit flags; without --recipe/--config a --resume run's saved options are the base. Recipe values that will
    not be applied are logged (rank 0)."""
    given = {field: getattr(args, field) for field, _, _ in _TRAIN_OPTIONS if hasattr(args, field)}
    if args.config or getattr(args, "recipe", None):
        cfg, notes = merge_train_options(given, args.config, getattr(args, "recipe", None))
        log_merge_notes(notes)
        return cfg
    if given.get("resume"):
        # the interruption point of the old run (max_steps) is not an option of the new one
        saved, _ = saved_run_options(given["resume"])
        try:
            base = TrainConfig.from_dict(saved)
        except ConfigError as e:
            raise ConfigError(f"the saved options of {given['resume']}: {e}") from None
    else:
        base = TrainConfig()
    for k in ("scale", "ratio"):
        if k in given:
            given[k] = tuple(given[k])
    return base.replace(**given)


def _cmd_train(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("RANK", "0"))
    _setup_logging(logging.INFO if rank == 0 else logging.WARNING)
    cfg = train_config_from_args(args)
    if args.retain_freed_memory:
        retain_freed_memory()
    result = train(cfg, progress=args.progress)
    if rank == 0:
        out = Path(result["output"])
        if result.get("stopped_early"):
            print(f"stopped at step {result['step']} (max_steps); resume with: crossformers train --resume {out}")
        if result.get("best_val_top1") is not None:
            print(f"best val top-1 {result['best_val_top1']:.2f}% at epoch {result['best_epoch']}; "
                  f"checkpoints: {out / 'best'}, {out / 'last'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    _setup_logging()
    if args.retain_freed_memory:
        retain_freed_memory()
    if Path(args.model).is_dir() and dense_cli.is_dense_run(args.model):  # a detector / segmenter: AP or mIoU
        return dense_cli.run_eval(args, args.model)
    transform = _precision_transform(args)
    result = evaluate(args.model, args.data, split=args.split, batch_size=args.batch_size, checkpoint=args.checkpoint,
                      pretrained=args.pretrained, use_ema=args.ema, workers=args.workers, limit=args.limit,
                      device=args.device, amp=args.amp, progress=args.progress, model_transform=transform)
    result["precision"] = args.precision
    output = args.output
    if output is None and args.checkpoint is None and not args.pretrained and Path(result["source"]).is_dir() \
            and not is_local_dir(result["source"]):  # a converted folder may be shared: write nothing into it
        # our checkpoint: RUN/eval-SPLIT next to RUN/best and RUN/last
        suffix = ("-ema" if args.ema else "") + ("" if args.precision == "fp32" else f"-{args.precision}")
        output = resolve_checkpoint_dir(result["source"]).parent / f"eval-{args.split}{suffix}"
    if output is not None:
        write_eval_outputs(result, output)
    if args.json:
        summary = {k: v for k, v in result.items() if k != "confusion_matrix"}
        summary["confusion_matrix"] = result["confusion_matrix"].tolist()
        print(json.dumps(summary, indent=2))
        return 0
    precision = "" if args.precision == "fp32" else f" in {args.precision}"
    print(f"{result['model']} ({result['source']}){precision} on {result['data']} [{result['split']}], "
          f"{result['num_images']} images:")
    print(f"  top-1 {result['top1']:.2f}%   top-5 {result['top5']:.2f}%   loss {result['loss']:.4f}   "
          f"{result['images_per_s']:.1f} images/s")
    width = max((len(c) for c in result["classes"]), default=5)
    for name, acc in result["per_class_accuracy"].items():
        print(f"  {name:<{width}}  {'-' if acc is None else f'{acc:6.2f}%'}")
    if output is not None:
        print(f"wrote {Path(output) / 'metrics.json'}, confusion_matrix.json, confusion_matrix.png")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    _setup_logging()
    if args.retain_freed_memory:
        retain_freed_memory()
    partial = None
    try:
        results = predict(args.checkpoint, args.images, topk=args.topk, use_ema=args.ema, device=args.device,
                          model_transform=_precision_transform(args))
    except PartialPredictionError as e:  # the readable images are printed, the bad ones reported, exit code 2
        partial, results = e, e.predictions
    reasons = dict(partial.failures) if partial is not None else {}
    if args.json:
        rows = [{"image": str(img), "predictions": [{"class": c, "probability": p} for c, p in preds]}
                if preds is not None else {"image": str(img), "error": reasons.get(str(img), "not classified")}
                for img, preds in zip(args.images, results, strict=True)]
        if any(preds is not None for preds in results):
            print(json.dumps(rows, indent=2))
    else:
        for img, preds in zip(args.images, results, strict=True):
            if preds is not None:
                print(f"{img}: " + ", ".join(f"{c} ({p:.3f})" for c, p in preds))
    if partial is not None:
        raise partial
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    return print_recipes(args.name, args.model)


def _cmd_convert(args: argparse.Namespace) -> int:
    labels = None
    if args.label_names is not None:
        path = Path(args.label_names)
        if not path.is_file():
            raise CheckpointError(f"--label-names {path} not found: pass a text file with one class name per line")
        labels = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = convert(args.source, args.output, model=args.model, model_kwargs=args.model_kwargs, use_ema=args.ema,
                  label_names=labels, overwrite=args.overwrite)
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}; load with "
          f"crossformers.create_model('local-dir:{out}')")
    return 0


def model_table(pattern: str = "*", macs: bool = True) -> list[dict[str, Any]]:
    """Rows ``name``, ``params_m`` (millions), ``gmacs`` (10^9 MACs for one image), ``input_size`` for every
    registered model matching ``pattern``; each model is instantiated once on the CPU."""
    rows = []
    for name in crossformers.list_models(pattern):
        with torch.device("cpu"):
            model = crossformers.create_model(name)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = tuple(cfg.get("input_size") or (3, 224, 224))
        size = (model_in_chans(model), int(size[1]), int(size[2]))
        row = {"name": name, "params_m": count_params(model) / 1e6, "gmacs": None, "input_size": list(size)}
        if macs:
            row["gmacs"] = count_macs(model, size) / 1e9
        rows.append(row)
        del model
    return rows


def _cmd_models(args: argparse.Namespace) -> int:
    rows = model_table(args.pattern, macs=not args.no_macs)
    if not rows:
        raise UnknownModelError(f"no registered model matches {args.pattern!r}: run `crossformers models` for all")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len("model"), *(len(r["name"]) for r in rows))
    print(f"{'model':<{width}}  {'params (M)':>10}  {'GMACs':>8}  input")
    for r in rows:
        gmacs = "-" if r["gmacs"] is None else f"{r['gmacs']:.3f}"
        size = "x".join(str(s) for s in r["input_size"])
        print(f"{r['name']:<{width}}  {r['params_m']:>10.2f}  {gmacs:>8}  {size}")
    return 0


# ------------------------------------------------------------------------------------------------ entry point
_TRACEBACK_LAST = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): ")


def _one_line(err: BaseException) -> str:
    """A one-line message for ``err`` (DataLoader worker tracebacks are reduced to their final message)."""
    text = str(err).strip()
    if isinstance(err, OSError) and err.filename and err.strerror and not text.startswith(("Cannot", "image")):
        text = f"{err.strerror}: {err.filename}"
    if "Original Traceback" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        text = _TRACEBACK_LAST.sub("", lines[-1]) if lines else text
    if not text:
        text = type(err).__name__
    return " ".join(text.split())


def _known_errors() -> tuple[type[BaseException], ...]:
    return (CrossformersError, DataError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``crossformers`` command; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except _known_errors() as e:
        sys.stderr.write(f"error: {_one_line(e)}\n")
        return _EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

