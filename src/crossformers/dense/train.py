"""Training, evaluation and prediction of dense models: :func:`dense_train`, :func:`dense_evaluate`,
:func:`dense_predict`.

The training loop is the classification engine's (:mod:`crossformers.engine.train`): :class:`DenseTrainer` replaces
only what differs through the engine's hooks — data and model (a :class:`~crossformers.dense.tasks.DenseTask`), the
loss of a micro-batch, validation and the learning-rate schedule (``step`` / ``poly`` besides ``cosine``). Everything
else is shared: AdamW without weight decay on 1-D parameters, layer-wise lr decay of the backbone, linear warmup,
bfloat16 autocast, gradient accumulation, clipping, EMA, ``torchrun`` data parallelism, the locked and journaled run
folder (``last/``, ``best/`` by the task's validation metric, ``metrics.csv`` / ``.jsonl``, ``curves.png``,
``config.json`` / ``config.yaml``), exact resume, progress bars and the NaN checks.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Subset
from torchvision.transforms.v2 import functional as TF

from ..data import load_image
from ..engine.checkpoint_io import load_weights, read_meta, resolve_checkpoint_dir
from ..engine.config import TrainConfig
from ..engine.distributed import all_gather_objects, check_amp, resolve_device
from ..engine.errors import ConfigError, OutputExistsError
from ..engine.train import _Trainer, run_trainer
from ..errors import CheckpointError
from ..fileio import atomic_write_bytes, atomic_write_text
from .data import collate_lists
from .tasks import DenseTask, get_task

__all__ = ["DenseTrainConfig", "DenseTrainer", "dense_train", "load_dense_run", "dense_evaluate", "dense_predict",
           "SCHEDULES", "unwrap_dataset"]

log = logging.getLogger("crossformers.train")

SCHEDULES = ("cosine", "step", "poly")


@dataclass
class DenseTrainConfig(TrainConfig):
    """Options of :func:`dense_train`: every :class:`~crossformers.engine.TrainConfig` option plus the dense ones.

    Inherited options keep their meaning, with these readings: ``model`` is the backbone (a crossformers model name;
    ``pretrained`` its classification checkpoint, or one of our classification runs of it), ``data`` the data set
    root, ``img_size`` the training size (detection: shorter side the detector resizes to, default 800;
    segmentation: the square training crop, a multiple of 32, default 512). Classification-only options (Mixup,
    CutMix, AutoAugment, repeated augmentation, RandomResizedCrop ``scale`` / ``ratio``, label smoothing) are unused
    and must stay at their defaults (label smoothing is ignored).

    Dense options:
        task: ``detection`` | ``instance-segmentation`` | ``semantic-segmentation``.
        head: ``retinanet`` (detection), ``mask_rcnn`` (instance segmentation), ``upernet`` or ``fpn`` (semantic
            segmentation); ``None`` = the task's first.
        sched: ``cosine`` (to ``min_lr``), ``step`` (multiply by ``decay_rate`` at the ``decay_milestones``,
            fractions of the training steps: mmdet's 1x = epochs 8 and 11 of 12) or ``poly`` (``(1 - t/T) **
            poly_power`` down to ``min_lr``: mmseg's schedule); all after ``warmup_*`` linear warmup.
        max_size: detection: the longer side limit of the detector's resize (default ``img_size * 1333 / 800``).
        train_scales: detection multi-scale training: shorter sides to draw from (e.g. 480..800 step 32).
        reduce_zero_label: semantic segmentation: ADE20K's label 0 ("other") becomes the ignore index 255.
        eval_mode: semantic segmentation: ``whole`` image or ``slide`` (windows of ``img_size``,
            stride ``slide_stride``, default 2/3 of the window as mmseg's 512/341).
        fpn_channels: channels of the detectors' FPN / segmentation decoder width (``None`` = the head's default).
        detections_per_img: detections kept per image (COCO evaluation: 100).
        head_width: Mask R-CNN: width of the box head's two fully connected layers and of the mask head's four
            convolutions (``None`` = torchvision's 1024 / 256; small values make CPU training much faster).
        rois_per_image: Mask R-CNN: RoIs sampled per image for the box / mask losses (torchvision's default 512).
        iters: train for about this many optimizer steps instead of ``epochs`` (mmseg's iteration-based schedules,
            e.g. 160k): ``epochs = max(1, round(iters / steps_per_epoch))`` on the data at hand, so validation and
            checkpoints stay at epoch ends; the run logs and saves the epochs it chose (``None`` = use ``epochs``).
    """

    task: str = "detection"
    head: str | None = None
    sched: str = "cosine"
    decay_milestones: list[float] = field(default_factory=lambda: [8 / 12, 11 / 12])
    decay_rate: float = 0.1
    poly_power: float = 1.0
    max_size: int | None = None
    train_scales: list[int] = field(default_factory=list)
    reduce_zero_label: bool = False
    eval_mode: str = "whole"
    slide_stride: int | None = None
    fpn_channels: int | None = None
    detections_per_img: int = 100
    head_width: int | None = None
    rois_per_image: int = 512
    iters: int | None = None

    def validate(self) -> DenseTrainConfig:
        """Check every option (:meth:`TrainConfig.validate` and the dense ones); returns ``self``.

        Raises:
            ConfigError: the first invalid option.
        """
        super().validate()
        task = get_task(self.task)
        if self.head is not None and self.head not in task.heads:
            raise ConfigError(f"head {self.head!r} does not fit task {self.task}: choose one of {', '.join(task.heads)}")
        if self.sched not in SCHEDULES:
            raise ConfigError(f"sched must be one of {', '.join(SCHEDULES)}, got {self.sched!r}")
        if self.finetune_eval_mode:
            raise ConfigError("finetune_eval_mode is for classifiers: torchvision detectors and the segmenters "
                              "compute their training losses in train mode only")
        if self.sched != "cosine" and self.lr_schedule_unit != "step":
            raise ConfigError(f"sched {self.sched!r} updates the learning rate every step (as mmdet / mmseg): "
                              "lr_schedule_unit='epoch' is for the cosine schedule only")
        if not (isinstance(self.decay_milestones, (list, tuple)) and all(
                isinstance(m, (int, float)) and 0 < m < 1 for m in self.decay_milestones)):
            raise ConfigError(f"decay_milestones must be fractions of training in (0, 1), e.g. [0.667, 0.917], got "
                              f"{self.decay_milestones!r}")
        if not (0 < self.decay_rate <= 1) or not (self.poly_power > 0):
            raise ConfigError("decay_rate must be in (0, 1] and poly_power > 0")
        if self.eval_mode not in ("whole", "slide"):
            raise ConfigError(f"eval_mode must be whole or slide, got {self.eval_mode!r}")
        if self.task == "semantic-segmentation" and self.img_size is not None and self.img_size % 32:
            raise ConfigError(f"img_size (the training crop) must be a multiple of 32 for segmentation, got "
                              f"{self.img_size}")
        if self.head_width is not None and self.head_width < 1 or self.rois_per_image < 1:
            raise ConfigError("head_width and rois_per_image must be >= 1")
        if self.iters is not None and not (isinstance(self.iters, int) and not isinstance(self.iters, bool)
                                           and self.iters >= 1):
            raise ConfigError(f"iters must be an int >= 1 (optimizer steps) or None, got {self.iters!r}")
        if any(not (isinstance(s, int) and s > 0) for s in self.train_scales):
            raise ConfigError(f"train_scales must be positive ints (pixels), got {self.train_scales!r}")
        unused = [name for name, default in (("mixup", 0.0), ("cutmix", 0.0), ("auto_augment", None),
                                             ("aug_repeats", 0), ("re_prob", 0.0), ("color_jitter", None),
                                             ("crop_pct", None), ("interpolation", None))
                  if getattr(self, name) != default]
        if unused:
            raise ConfigError(f"{', '.join(unused)}: classification augmentation / preprocessing, not available for "
                              "dense tasks")
        return self

    @property
    def resolved_head(self) -> str:
        """``head`` or the task's default head."""
        return self.head or get_task(self.task).heads[0]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DenseTrainConfig:
        cfg = super().from_dict(values)
        cfg.decay_milestones = list(cfg.decay_milestones)
        cfg.train_scales = list(cfg.train_scales)
        return cfg  # type: ignore[return-value]


def unwrap_dataset(ds: Any) -> Any:
    """The dataset under any ``torch.utils.data.Subset`` wrappers."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def _limit(ds: Any, n: int | None) -> Any:
    return ds if n is None or n >= len(ds) else Subset(ds, range(n))


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


class DenseTrainer(_Trainer):
    """The engine's trainer for a :class:`~crossformers.dense.tasks.DenseTask` (see the module docs)."""

    train_accuracy = False
    collate_fn = staticmethod(collate_lists)
    loss_label = "loss (sum of the task's losses)"

    def __init__(self, cfg: DenseTrainConfig, info, progress: bool | None) -> None:
        super().__init__(cfg, info, progress)
        self.task: DenseTask = get_task(cfg.task)
        self.best_key = f"val_{self.task.best_key}"
        need, why = self.task.min_batch_per_process(cfg)
        per_process = cfg.batch_size // info.world_size
        if per_process < need:
            raise ConfigError(f"--batch-size {cfg.batch_size} gives {per_process} image(s) per process "
                              f"({info.world_size} process(es)); {why}: use --batch-size {need * info.world_size} or "
                              "more")

    def _default_channels_last(self, model) -> bool:
        """Off unless ``--channels-last`` asks for it: not measured for detectors and segmenters."""
        return False

    def _build_model_and_data(self):
        cfg = self.cfg
        train_ds, val_ds, classes = self.task.datasets(cfg)
        train_ds, val_ds = _limit(train_ds, cfg.limit_train), _limit(val_ds, cfg.limit_val)
        self.classes = list(classes)
        pretrained = None if self.resume_dir else self._pretrained_file()
        model = self.task.build_model(cfg, self.classes, pretrained)
        self.pre = self.task.preprocessing(model, cfg)
        self.model_kwargs = {**cfg.model_kwargs, "num_classes": len(self.classes), "in_chans": 3}
        return model, train_ds, val_ds, len(self.classes)

    def _planned_epochs(self) -> int:
        cfg = self.cfg
        if cfg.iters is None:
            return cfg.epochs
        epochs = max(1, round(cfg.iters / self.steps_per_epoch))
        if self.info.is_main and epochs * self.steps_per_epoch != cfg.iters:
            log.info("iters=%d at %d steps per epoch: %d epochs (%d steps)", cfg.iters, self.steps_per_epoch, epochs,
                     epochs * self.steps_per_epoch)
        return epochs

    def _build_scheduler(self, warmup: int):
        cfg = self.cfg
        common = dict(warmup_t=warmup, warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=False)
        if cfg.sched == "step":
            from timm.scheduler import MultiStepLRScheduler

            # a milestone at step M (counted from the start of training, as mmdet's) is timm's decay_t M - warmup + 1:
            # timm applies milestone m at index m - 1 after the warmup prefix
            t = sorted(max(1, round(m * self.total_steps) - warmup + 1) for m in cfg.decay_milestones)
            return MultiStepLRScheduler(self.optimizer, decay_t=t, decay_rate=cfg.decay_rate, **common)
        if cfg.sched == "poly":
            from timm.scheduler import PolyLRScheduler

            return PolyLRScheduler(self.optimizer, t_initial=max(1, self.total_steps - warmup), power=cfg.poly_power,
                                   lr_min=cfg.min_lr, **common)
        return super()._build_scheduler(warmup)

    def _build_criterion(self, num_classes: int) -> None:
        self.mixup = None  # the task computes its own loss
        self.criterion = None

    def _forward_loss(self, batch: Any) -> tuple[torch.Tensor, int, float]:
        images, targets = batch
        images, targets = _to_device(list(images), self.device), _to_device(list(targets), self.device)
        with self._autocast():
            loss = self.task.loss(self.net, images, targets)
        return loss.float(), len(images), 0.0

    @torch.no_grad()
    def _validate(self, model: nn.Module) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        try:
            metrics = self.task.evaluate(model, self.val_loader, self.device, self._autocast,
                                         lambda obj: all_gather_objects(obj, self.info), self.cfg)
        finally:
            model.train(was_training)
        # metrics.csv holds numbers; per-class lists are for `crossformers dense eval`
        return {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float))}

    def _meta(self, epoch_done: int, batch_in_epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        meta = super()._meta(epoch_done, batch_in_epoch, metrics)
        meta.update(task=self.cfg.task, head=self.cfg.resolved_head)
        return meta

    def _log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        scores = ", ".join(f"{k[4:]} {v:.4f}" for k, v in row.items()
                           if k.startswith("val_") and isinstance(v, float) and not k.endswith(("_ema",)))
        log.info("epoch %d/%d: train loss %.4f, %s (best %s %.4f at epoch %d), %.1f s", epoch + 1, self.cfg.epochs,
                 row["train_loss"], scores, self.best_key[4:], self.best_top1, self.best_epoch, self.epoch_time)


def dense_train(config: DenseTrainConfig | dict[str, Any], progress: bool | None = None) -> dict[str, Any]:
    """Train a detector or segmenter as ``config`` describes (see :class:`DenseTrainConfig`).

    Returns:
        The last epoch's metrics row (``train_loss``, the task's ``val_*`` metrics), ``step``, ``epoch``,
        ``best_val_<metric>`` / ``best_epoch``, ``stopped_early`` and ``output``.

    Raises:
        ConfigError, OutputExistsError, RunLockedError, CheckpointError, DataError, NonFiniteLossError: as
        :func:`crossformers.engine.train`.
    """
    cfg = config if isinstance(config, DenseTrainConfig) else DenseTrainConfig.from_dict(dict(config))
    return run_trainer(DenseTrainer, cfg, progress)


def load_dense_run(path: str | os.PathLike, use_ema: bool = False, prefer: str = "best"
                   ) -> tuple[nn.Module, DenseTrainConfig, dict[str, Any], DenseTask]:
    """A trained dense model from one of our run / checkpoint directories.

    Returns:
        ``(model in eval mode on the CPU, its DenseTrainConfig, meta.json, task)``.

    Raises:
        CheckpointError: not a checkpoint, a classification checkpoint, or weights that do not fit.
    """
    ckpt = resolve_checkpoint_dir(path, prefer=prefer)
    meta = read_meta(ckpt)
    if "task" not in meta:
        raise CheckpointError(f"{ckpt} is a classification checkpoint ({meta['model']}): use `crossformers eval` / "
                              "`predict`, or pass a run of `crossformers dense train`")
    cfg = DenseTrainConfig.from_dict(dict(meta["config"]))
    task = get_task(meta["task"])
    model = task.build_model(cfg, list(meta["classes"]), None)
    load_weights(model, ckpt, use_ema=use_ema)
    return model.eval(), cfg, meta, task


def dense_evaluate(path: str | os.PathLike, data: str | None = None, split: str = "val", use_ema: bool = False,
                   limit: int | None = None, device: str = "auto", amp: bool = False,
                   eval_mode: str | None = None, output: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate a dense run on a split (COCO AP for detection / instance segmentation, mIoU / mAcc / aAcc for
    semantic segmentation); writes ``metrics.json`` into ``output`` when given (atomically).

    Args:
        path: the run or checkpoint directory (``best/`` preferred).
        data: data set root (default: the run's ``data``). split: ``val``, ``train``, ...
        limit: the first N images only. eval_mode: ``whole`` / ``slide`` (segmentation; default the run's).

    Returns:
        The task's metrics (``val_`` prefix removed), plus ``num_images``, ``source``, ``data``, ``split``.
    """
    dev = resolve_device(device)
    check_amp(amp, dev)  # before the run is loaded
    model, cfg, meta, task = load_dense_run(path, use_ema=use_ema)
    if eval_mode is not None:
        cfg = dataclasses.replace(cfg, eval_mode=eval_mode).validate()
    model.to(dev)
    ds = _limit(task.eval_dataset(cfg, data or cfg.data, split), limit)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False, collate_fn=collate_lists)

    def autocast():
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp)

    with torch.no_grad():
        metrics = task.evaluate(model, loader, dev, autocast, lambda obj: [obj], cfg)
    result = {k[4:] if k.startswith("val_") else k: v for k, v in metrics.items()}
    result.update(num_images=len(ds), source=str(resolve_checkpoint_dir(path)), data=str(data or cfg.data),
                  split=split, task=meta["task"], model=meta["model"], ema=use_ema)
    if output is not None:
        atomic_write_text(Path(output) / "metrics.json", json.dumps(result, indent=2) + "\n")
    return result


def _png(image: torch.Tensor) -> bytes:
    """PNG bytes of a (C, H, W) uint8 image (C = 1 or 3)."""
    arr = image.cpu().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def dense_predict(path: str | os.PathLike, images: list[str | os.PathLike], output: str | os.PathLike,
                  score_thresh: float = 0.5, use_ema: bool = False, device: str = "auto") -> list[dict[str, Any]]:
    """Predict boxes / masks / label maps for image files; writes ``OUTPUT/predictions.json`` and one drawn PNG per
    image (``OUTPUT/<stem>.png``: boxes with class and score, instance masks, or the label map as coloured
    regions; semantic segmentation also writes ``<stem>_labels.png``, the index map).

    Args:
        path: run or checkpoint directory. images: image files. output: a new or empty folder.
        score_thresh: detections below this score are dropped (detection / instance segmentation).

    Returns:
        The JSON entries (one per image: ``image``, and ``detections`` or ``classes_present``).

    Raises:
        OutputExistsError: ``output`` exists and is not empty (nothing is overwritten). DataError: unreadable image
            (before anything is written). CheckpointError: not a dense run.
    """
    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"prediction output {out} exists and is not empty: choose a new --output folder")
    stems = [Path(p).stem for p in images]
    if len(set(stems)) != len(stems):
        raise ConfigError("two images share a file name stem; their drawings would overwrite each other: rename one")
    pixels = [TF.pil_to_tensor(load_image(p).convert("RGB")) for p in images]  # all read before anything is written
    model, cfg, meta, task = load_dense_run(path, use_ema=use_ema)
    dev = resolve_device(device)
    model.to(dev)
    classes = list(meta["classes"])
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for p, img in zip(images, pixels, strict=True):
        x = TF.to_dtype(img, torch.float32, scale=True).to(dev)
        with torch.no_grad():
            pred = task.predict(model, [x], cfg, score_thresh)[0]
        draw = pred.pop("_draw", {})
        atomic_write_bytes(out / f"{Path(p).stem}.png", _png(task.draw(img, draw, classes)))
        if "label_map" in draw:
            atomic_write_bytes(out / f"{Path(p).stem}_labels.png", _png(draw["label_map"].to(torch.uint8)[None]))
        rows.append({"image": str(p), **pred})
    atomic_write_text(out / "predictions.json", json.dumps(rows, indent=2) + "\n")
    return rows
