"""``crossformers dense``: train, evaluate and predict with detectors and segmenters, and write the Fashion-MNIST scene
data set.

    crossformers dense fashion-scenes --output data/fashion-scenes
    crossformers dense train --task detection --model crossformer_tiny --data data/fashion-scenes --output runs/det
    crossformers dense train --resume runs/det --epochs 24
    crossformers dense eval runs/det                    # COCO AP on the val split -> runs/det/eval-val/metrics.json
    crossformers dense predict runs/det a.png b.png --output preds/   # predictions.json + drawn PNGs

The tasks come from the packages that own the heads (``crossformers.detection``, ``crossformers.segmentation``),
which the ``crossformers`` command imports before it calls :func:`add_subcommands`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli_types import add_command_group, add_retain_memory_flag, setup_logging
from ..engine.checkpoint_io import read_meta, resolve_checkpoint_dir
from ..engine.config_file import log_merge_notes, merge_train_options
from ..engine.errors import ConfigError
from ..engine.train import saved_run_options
from ..errors import CheckpointError
from ..inference.allocator import retain_freed_memory
from . import recipes as _recipes  # noqa: F401  (registers the dense recipes for --recipe and `recipes`)
from .fashion_scenes import write_fashion_scenes
from .tasks import list_tasks
from .train import SCHEDULES, DenseTrainConfig, dense_evaluate, dense_predict, dense_train

__all__ = ["add_subcommands", "dense_config_from_args", "DENSE_OPTIONS", "is_dense_run", "run_eval"]

# options of the classification trainer that mean nothing for dense tasks
_CLASSIFICATION_ONLY = {"mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "auto_augment", "re_prob", "aug_repeats",
                        "scale", "ratio", "color_jitter", "label_smoothing", "in_chans", "check_images",
                        "finetune_eval_mode", "crop_pct", "interpolation"}


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _none_or_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "off") else int(text)


#: dense options: (field, flag, argparse kwargs)
DENSE_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("task", "--task", dict(help="detection | instance-segmentation | semantic-segmentation (default detection)")),
    ("head", "--head", dict(help="retinanet | mask_rcnn (detection), mask_rcnn (instance-segmentation), upernet | "
                                 "fpn (semantic-segmentation); default the task's first")),
    ("sched", "--sched", dict(choices=SCHEDULES, help="learning-rate schedule after warmup (default cosine)")),
    ("decay_milestones", "--decay-milestones", dict(type=_float_list, metavar="F,F",
                                                    help="step schedule: fractions of training (default 0.667,0.917 "
                                                         "= mmdet 1x, epochs 8 and 11 of 12)")),
    ("decay_rate", "--decay-rate", dict(type=float, help="step schedule factor (default 0.1)")),
    ("poly_power", "--poly-power", dict(type=float, help="poly schedule power (default 1.0, mmseg)")),
    ("max_size", "--max-size", dict(type=_none_or_int, metavar="PX",
                                    help="detection: longer-side limit (default img_size * 1333 / 800)")),
    ("train_scales", "--train-scales", dict(type=_int_list, metavar="PX,PX,...",
                                            help="detection multi-scale training: shorter sides to draw from")),
    ("reduce_zero_label", "--reduce-zero-label", dict(action=argparse.BooleanOptionalAction,
                                                      help="segmentation: label 0 -> ignore 255, v -> v - 1 (ADE20K)")),
    ("eval_mode", "--eval-mode", dict(choices=("whole", "slide"), help="segmentation inference (default whole)")),
    ("slide_stride", "--slide-stride", dict(type=_none_or_int, metavar="PX", help="slide mode stride "
                                                                                  "(default 2/3 of img_size)")),
    ("fpn_channels", "--fpn-channels", dict(type=_none_or_int, help="FPN / decoder width (default the head's)")),
    ("detections_per_img", "--detections-per-img", dict(type=int, help="kept detections per image (default 100)")),
    ("head_width", "--head-width", dict(type=_none_or_int, metavar="N", help="Mask R-CNN box / mask head width "
                                                                            "(default torchvision's 1024 / 256)")),
    ("rois_per_image", "--rois-per-image", dict(type=int, help="Mask R-CNN RoIs sampled per image (default 512)")),
    ("iters", "--iters", dict(type=_none_or_int, metavar="N", help="train about N optimizer steps, rounded to whole "
                                                                  "epochs (mmseg's 160k / 80k schedules); overrides "
                                                                  "--epochs")),
]


def dense_config_from_args(args: argparse.Namespace, fields: Sequence[str]) -> DenseTrainConfig:
    """The :class:`DenseTrainConfig` of parsed ``dense train`` arguments: defaults (or, with ``--resume``, the run's
    saved options) < ``--recipe`` < ``--config FILE.yaml`` < explicit flags. Recipe values that will not be applied
    are logged (rank 0)."""
    given = {f: getattr(args, f) for f in fields if hasattr(args, f)}
    base = DenseTrainConfig()
    if given.get("resume"):
        saved, _ = saved_run_options(given["resume"], DenseTrainConfig)
        if "task" not in saved:
            raise CheckpointError(f"{given['resume']} is a classification run: resume it with `crossformers train "
                                  "--resume`")
        try:
            base = DenseTrainConfig.from_dict(saved)
        except ConfigError as e:
            raise ConfigError(f"the saved options of {given['resume']}: {e}") from None
    cfg, notes = merge_train_options(given, getattr(args, "config", None), getattr(args, "recipe", None), base=base,
                                     config_cls=DenseTrainConfig)
    log_merge_notes(notes)
    return cfg  # type: ignore[return-value]


def _cmd_train(args: argparse.Namespace, fields: Sequence[str]) -> int:
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(logging.INFO if rank == 0 else logging.WARNING)
    cfg = dense_config_from_args(args, fields)
    if args.retain_freed_memory:
        retain_freed_memory()
    result = dense_train(cfg, progress=args.progress)
    if rank == 0:
        out = Path(result["output"])
        if result.get("stopped_early"):
            print(f"stopped at step {result['step']} (max_steps); resume with: crossformers dense train --resume {out}")
        key = next((k for k in result if k.startswith("best_val_")), None)
        if key and result[key] is not None:
            print(f"best {key[9:]} {result[key]:.4f} at epoch {result['best_epoch']}; checkpoints: {out / 'best'}, "
                  f"{out / 'last'}")
    return 0


def is_dense_run(path: str | os.PathLike) -> bool:
    """True if ``path`` is a run or checkpoint directory of ``crossformers dense train``."""
    try:
        return "task" in read_meta(path)
    except CheckpointError:
        return False


def run_eval(args: argparse.Namespace, run: str) -> int:
    """``dense eval`` (also ``crossformers eval`` on a dense run): evaluate, write metrics.json, print."""
    output = args.output
    if output is None:
        output = resolve_checkpoint_dir(run).parent / f"eval-{args.split}{'-ema' if args.ema else ''}"
    result = dense_evaluate(run, data=args.data, split=args.split, use_ema=args.ema, limit=args.limit,
                            device=args.device, amp=args.amp, eval_mode=getattr(args, "eval_mode", None),
                            output=output)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['task']} {result['model']} ({result['source']}) on {result['data']} [{result['split']}], "
          f"{result['num_images']} images:")
    for k, v in result.items():
        if isinstance(v, float):
            print(f"  {k:<10} {v:.4f}")
    print(f"wrote {Path(output) / 'metrics.json'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    setup_logging()
    return run_eval(args, args.run)


def _cmd_predict(args: argparse.Namespace) -> int:
    setup_logging()
    rows = dense_predict(args.run, args.images, args.output, score_thresh=args.score_thresh, use_ema=args.ema,
                         device=args.device)
    for r in rows:
        what = (f"{len(r['detections'])} detection(s)" if "detections" in r
                else f"labels {sorted(r['pixel_fraction_by_label'])}")
        print(f"{r['image']}: {what}")
    print(f"wrote {Path(args.output) / 'predictions.json'} and one drawn PNG per image")
    return 0


def _cmd_scenes(args: argparse.Namespace) -> int:
    setup_logging()
    s = write_fashion_scenes(args.output, args.train_scenes, args.val_scenes, seed=args.seed,
                             fashion_root=args.fashion_root)
    print(f"wrote {s['output']}: {s['train']['scenes']} training scenes ({s['train']['garments']} garments, "
          f"Fashion-MNIST train split), {s['val']['scenes']} validation scenes ({s['val']['garments']} garments, "
          "test split)")
    return 0


def add_subcommands(sub: argparse._SubParsersAction,
                    train_options: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> None:
    """Register ``crossformers dense ...``; ``train_options`` are the classification trainer's flags
    (``crossformers.cli._TRAIN_OPTIONS``), of which those that apply to dense tasks are offered."""
    dsub = add_command_group(sub, "dense", dest="dense_command", metavar="COMMAND",
                             help="detection / instance / semantic segmentation: train, eval, predict, data",
                             description=__doc__.split("\n\n")[0])

    t = dsub.add_parser("train", help="train a detector or segmenter (the engine's loop: resume, EMA, bf16, ...)",
                        description="Train a dense model. --model is the backbone, --pretrained its classification "
                                    "checkpoint, --data the data set root (COCO layout for detection / instance "
                                    "segmentation, ADE20K layout for semantic segmentation), --img-size the "
                                    f"training size. Tasks: {', '.join(list_tasks()) or 'none registered'}.")
    fields = []
    for field, flag, kwargs in [*[o for o in train_options if o[0] not in _CLASSIFICATION_ONLY], *DENSE_OPTIONS]:
        t.add_argument(flag, dest=field, default=argparse.SUPPRESS, **kwargs)
        fields.append(field)
    t.add_argument("--config", metavar="FILE.yaml", help="options from a YAML file (keys as in RUN/config.yaml of a "
                                                         "dense run; flags given here override it)")
    t.add_argument("--recipe", metavar="NAME", help="a paper's detection / segmentation recipe (`crossformers "
                                                    "recipes` lists them); --config and flags override its values")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars")
    add_retain_memory_flag(t)
    t.set_defaults(func=lambda a: _cmd_train(a, fields))

    e = dsub.add_parser("eval", help="COCO AP or mIoU / mAcc / aAcc of a dense run on a split")
    e.add_argument("run", metavar="RUN", help="run or checkpoint directory of `crossformers dense train`")
    e.add_argument("--data", help="data set root (default: the run's)")
    e.add_argument("--split", default="val", help="split (default val)")
    e.add_argument("--ema", action="store_true", help="the EMA weights")
    e.add_argument("--limit", type=_none_or_int, default=None, metavar="N", help="the first N images")
    e.add_argument("--eval-mode", choices=("whole", "slide"), help="segmentation inference (default: the run's)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    e.add_argument("--output", metavar="DIR", help="folder for metrics.json (default RUN/eval-SPLIT)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=_cmd_eval)

    r = dsub.add_parser("predict", help="boxes / masks / label maps of image files: JSON + drawn PNGs")
    r.add_argument("run", metavar="RUN", help="run or checkpoint directory of `crossformers dense train`")
    r.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    r.add_argument("--output", required=True, metavar="DIR", help="new or empty folder for predictions.json + PNGs")
    r.add_argument("--score-thresh", type=float, default=0.5, help="drop detections below this score (default 0.5)")
    r.add_argument("--ema", action="store_true", help="the EMA weights")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.set_defaults(func=_cmd_predict)

    s = dsub.add_parser("fashion-scenes", help="write the Fashion-MNIST scene data set (COCO JSON + PNG masks)",
                        description="2-6 real Fashion-MNIST garments per 192-256 px scene; training scenes from the "
                                    "official train split, validation scenes from the test split.")
    s.add_argument("--output", required=True, metavar="DIR", help="new or empty folder")
    s.add_argument("--train-scenes", type=int, default=2000, help="training scenes (default 2000)")
    s.add_argument("--val-scenes", type=int, default=300, help="validation scenes (default 300)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--fashion-root", metavar="DIR", help="Fashion-MNIST folder (default: the installed one)")
    s.set_defaults(func=_cmd_scenes)
