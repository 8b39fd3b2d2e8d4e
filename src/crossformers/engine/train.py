"""The training loop: :func:`train`.

One function runs everything a :class:`~crossformers.engine.TrainConfig` describes: data (timm transforms), model,
AdamW (no weight decay on 1-D parameters and ``model.no_weight_decay()``, optional layer-wise lr decay), a cosine
schedule with linear warmup updated every optimizer step, label smoothing or Mixup/CutMix soft targets, EMA of the
weights, gradient clipping, bfloat16 autocast, gradient accumulation, and multi-process data parallelism under
``torchrun`` (see :mod:`crossformers.engine.distributed`).

Every epoch it evaluates on the validation split, writes ``metrics.csv`` / ``metrics.jsonl`` / ``curves.png`` and the
checkpoints ``last/`` and ``best/`` (by val top-1 of the raw, non-EMA weights), committed as one unit; the run folder is
locked against a second writer, and what a killed run left is completed or discarded when training starts on the
folder again (:mod:`crossformers.engine.run_dir`). ``resume`` continues a run exactly:
model, optimizer, EMA, RNG states of every process and the position inside the epoch are restored, so an interrupted
and resumed run ends with bit-identical weights to an uninterrupted one (same config and process count; with
``workers=0``, or with any ``workers`` when the run was stopped at an epoch boundary: worker processes are seeded per
epoch, so after a mid-epoch stop their augmentation streams restart instead of continuing). The learning-rate schedule is rebuilt from the config, so a
resumed run may change ``lr`` / ``min_lr`` (e.g. after a NaN loss).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import (
    DataError,
    batches_per_epoch,
    build_dataset,
    build_loader,
    build_mixup,
    build_transform,
    canonical_dataset_name,
    dataset_defaults,
    set_epoch,
    verify_images,
)
from ..errors import CheckpointError, CrossformersError
from ..layers.linear import onednn_for_training
from ..models._base import prefers_channels_last, set_channels_last
from .checkpoint_io import (
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    atomic_write_text,
    capture_rng_state,
    load_train_state,
    load_weights,
    read_meta,
    resolve_checkpoint_dir,
    restore_rng_state,
    save_checkpoint,
)
from .config import TrainConfig
from .config_file import CONFIG_YAML, config_to_yaml
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    check_amp,
    cleanup_distributed,
    init_distributed,
    maybe_sync_batchnorm,
)
from .errors import ConfigError, NonFiniteLossError, OutputExistsError, TrainingError
from .metrics import MetricHistory, plot_curves, topk_correct
from .modeling import build_model, check_model_input, model_preprocessing
from .run_dir import COMMIT_DIR, JOURNAL_FILE, LOCK_FILE, RunFolder, fault_point

__all__ = ["train", "seed_everything"]

log = logging.getLogger("crossformers.train")


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, numpy and torch (all devices) with ``seed``."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fused_adamw_kwargs(model: nn.Module) -> dict[str, bool]:
    """``{"fused": True}`` where PyTorch's fused AdamW kernel can update every trainable parameter of ``model``, else
    ``{}`` (the default implementation).

    The fused kernel updates each parameter tensor in one pass instead of a chain of element-wise ops per tensor: on the
    2-core AMD EPYC Zen 4 of ``docs/profiling.md`` an AdamW step took 16.0 instead of 43.8 ms for CrossFormer-T, 5.6
    instead of 16.8 ms for CrossViT-9 and 1.9 instead of 7.8 ms for the demo's fcaformer_nano. It needs floating-point
    parameters on a device with fused kernels (the CPU, CUDA and others; ``torch.optim.AdamW(fused=True)`` raises
    otherwise). The optimizer state is the same as the default implementation's; a resumed run keeps the choice saved
    in its checkpoint's parameter groups, so a run started before this default resumes as it began (bit-exact).
    """
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a PyTorch without this helper: the two devices fused AdamW has had longest
        devices = {"cpu", "cuda"}
    params = [p for p in model.parameters() if p.requires_grad]
    if params and all(p.is_floating_point() and p.device.type in devices for p in params):
        return {"fused": True}
    return {}


def compute_loss(criterion: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Training loss (mean over the batch, float32). A module-level function so tests can inject a NaN."""
    return criterion(logits.float(), target)


def train(config: TrainConfig | dict[str, Any], progress: bool | None = None) -> dict[str, Any]:
    """Train a model as described by ``config`` (see :class:`TrainConfig` for every option).

    Args:
        config: the options (a dict is converted with :meth:`TrainConfig.from_dict`).
        progress: show tqdm progress bars: ``None`` = only on a terminal, ``True``/``False`` force; always off on
            ranks other than 0.

    Returns:
        Final metrics: ``epoch`` (completed epochs), ``step`` (optimizer steps), the last epoch's ``train_loss``,
        ``val_loss``, ``val_top1``/``val_top5`` (%), EMA metrics when enabled, ``best_val_top1`` and ``best_epoch``,
        ``stopped_early`` (``max_steps`` reached before the last epoch ended) and ``output`` (run directory).

    Raises:
        ConfigError: invalid options. OutputExistsError: non-empty output without ``resume``, or an output path
            that is a file. RunLockedError: another process is training in the output directory.
        CheckpointError: unusable ``resume`` / ``pretrained`` checkpoint. DataError: dataset problems.
        InputSizeError: the model cannot take the configured input. NonFiniteLossError: the loss became NaN/inf
            (the last good checkpoint is kept).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    return run_trainer(_Trainer, cfg, progress)


def run_trainer(trainer_cls: type, cfg: TrainConfig, progress: bool | None) -> dict[str, Any]:
    """Validate ``cfg``, join the process group (under ``torchrun``) and run ``trainer_cls(cfg, info, progress)``
    (the engine's trainer or a subclass, e.g. the dense one); the group is left again whatever happens."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return trainer_cls(cfg, info, progress).run()
    finally:
        cleanup_distributed(info)


def never_checkpointed(run_dir: str | os.PathLike, with_config: bool = True) -> bool:
    """True if ``run_dir`` is a run folder that stopped before its first checkpoint: it holds ``config.json`` and ``config.yaml`` (or,
    with ``with_config=False``, not even that) and nothing else but the lock file, an uncommitted staging area or
    temporary files of atomic writes."""
    p = Path(run_dir).expanduser()
    if not p.is_dir() or (p / "config.json").is_file() != with_config or (p / COMMIT_DIR / JOURNAL_FILE).exists():
        return False
    for entry in p.iterdir():
        name = entry.name
        if name in ("config.json", CONFIG_YAML, LOCK_FILE, COMMIT_DIR):
            continue
        if name.startswith((".last.tmp-", ".best.tmp-")) or (name.startswith(".") and name.endswith(".tmp")):
            continue
        return False
    return True


def saved_run_options(resume: str | os.PathLike, config_cls: type = TrainConfig) -> tuple[dict[str, Any], Path]:
    """The options a run to ``resume`` was started with, and its run directory: from the ``meta.json`` of its
    ``last/`` (or ``best/``) checkpoint, or, for a run killed before its first checkpoint, from its ``config.json``
    (checked with ``config_cls.from_json``). ``max_steps`` (where the old run was stopped) is dropped, ``output`` is
    the run directory.

    Raises:
        CheckpointError: no run there, a run killed before it saved its options, or options that are no JSON object.
    """
    run = Path(resume).expanduser()
    try:
        ckpt = resolve_checkpoint_dir(run, prefer="last")
    except CheckpointError:
        # a run killed before its first checkpoint (or in its first commit, which training completes): only its
        # config.json tells what to run
        if never_checkpointed(run, with_config=False):
            raise CheckpointError(no_run_yet_message(resume)) from None
        if not (run.is_dir() and (run / "config.json").is_file()):
            raise
        saved: Any = config_cls.from_json(run / "config.json").to_dict()
        output = run
    else:
        saved = read_meta(ckpt).get("config") or {}
        output = ckpt.parent
    if not isinstance(saved, dict):
        raise CheckpointError(f"the saved options of {resume} are not a JSON object: resume from a run directory "
                              "written by crossformers train")
    return {**saved, "max_steps": None, "output": str(output)}, output


def no_run_yet_message(run_dir: str | os.PathLike) -> str:
    """Why ``--resume`` cannot continue a run folder killed before it even wrote ``config.json``, and what to do."""
    return (f"cannot resume {run_dir}: the run stopped while starting, before it saved its options (config.json) or a "
            "checkpoint; run the original train command again (without --resume), it can use the same --output")


class _Accum:
    """Running sums of the training loss / accuracy of one epoch on one process."""

    def __init__(self, values: dict[str, float] | None = None) -> None:
        v = values or {}
        self.loss_sum = float(v.get("loss_sum", 0.0))
        self.correct = float(v.get("correct", 0.0))
        self.count = float(v.get("count", 0.0))

    def as_dict(self) -> dict[str, float]:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "count": self.count}


class _Trainer:
    #: the validation metric that selects ``best/`` (higher is better); ``collate_fn`` of both loaders
    best_key = "val_top1"
    collate_fn = None
    #: report the training top-1 accuracy (classification) in metrics.csv
    train_accuracy = True
    #: y-axis label of the loss panel of curves.png
    loss_label = "loss (cross-entropy)"

    def __init__(self, cfg: TrainConfig, info: DistInfo, progress: bool | None) -> None:
        self.cfg = cfg
        self.info = info
        self.progress = progress
        self.out = Path(cfg.output).expanduser()
        self.device = info.device
        self.run_folder = RunFolder(self.out)
        self.wrote_config = False
        self.wrote_yaml = False

    # ------------------------------------------------------------------------------------------------ setup
    def _lock_output(self) -> None:
        """Take the run folder's lock (main process) and repair what an interrupted run left, before anything reads
        the folder; every process fails if the main one cannot."""
        failure: Exception | None = None
        if self.info.is_main:
            try:
                self.run_folder.lock()
                repaired = self.run_folder.recover()
                if repaired:
                    log.warning("%s was interrupted while saving: %s", self.out, repaired)
            except (CrossformersError, OSError) as e:  # e.g. no permission to create the folder
                failure = e
        status = all_gather_objects(None if failure is None else str(failure), self.info)
        if failure is not None:
            raise failure
        if status[0] is not None:
            raise TrainingError(status[0])

    def _prepare_output(self) -> Path | None:
        cfg = self.cfg
        resume_dir = None
        if cfg.resume:
            try:
                resume_dir = resolve_checkpoint_dir(cfg.resume, prefer="last")
            except CheckpointError:
                if self.run_folder.created_dirs and Path(cfg.resume).expanduser() == self.out:
                    raise CheckpointError(f"checkpoint not found: {self.out} does not exist (pass the run directory "
                                          "of the run to continue)") from None
                if never_checkpointed(cfg.resume, with_config=False):
                    raise CheckpointError(no_run_yet_message(cfg.resume)) from None
                if not never_checkpointed(cfg.resume):
                    raise
                log.info("%s stopped before its first checkpoint: training starts from the beginning",
                         Path(cfg.resume).expanduser())
                return None
            if not (resume_dir / STATE_FILE).is_file():
                raise CheckpointError(
                    f"cannot resume from {resume_dir}: it has no {STATE_FILE} (only last/ checkpoints keep the "
                    f"training state); pass the run directory or its last/ checkpoint")
        elif self.out.exists() and not self.out.is_dir():
            raise OutputExistsError(f"output path {self.out} is a file, not a directory: choose a new --output "
                                    "(a directory path)")
        elif self.out.exists() and any(p.name != LOCK_FILE for p in self.out.iterdir()):
            if never_checkpointed(self.out):
                log.info("%s holds a run that stopped before its first checkpoint: starting it again", self.out)
                return None
            raise OutputExistsError(
                f"output directory {self.out} already exists and is not empty: pass --resume {self.out} to continue "
                "that run, or choose a new --output")
        return resume_dir

    def _pretrained_file(self) -> Path | None:
        p = self.cfg.pretrained
        if not p:
            return None
        path = Path(p).expanduser()
        if path.is_dir() or path.name == META_FILE:
            ckpt = resolve_checkpoint_dir(path, prefer="best")
            meta = read_meta(ckpt)
            if meta["model"] != self.cfg.model:
                raise CheckpointError(
                    f"--pretrained {p} is a checkpoint of model {meta['model']}, not {self.cfg.model}: fine-tune with "
                    f"--model {meta['model']} or pass a checkpoint of {self.cfg.model}")
            return ckpt / MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"pretrained checkpoint not found: {path} (pass one of our checkpoint directories "
                                  "or an official .pth / .safetensors file)")
        return path

    def _setup(self) -> None:
        cfg, info = self.cfg, self.info
        check_amp(cfg.amp, self.device)  # before the output folder is touched
        self._lock_output()
        self.resume_dir = self._prepare_output()
        seed_everything(cfg.seed)
        if self.device.type == "cpu":
            # layer scales start at 1e-6: their products and gradients fall into float32's denormal range, which
            # x86 CPUs process ~10x slower (measured: 2.1 s vs 0.2 s per fcaformer_nano step); flushing them to zero
            # changes nothing measurable in training
            torch.set_flush_denormal(True)

        model, train_ds, val_ds, num_classes = self._build_model_and_data()
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the "
                              f"number of processes ({info.world_size})")
        self.batch = cfg.batch_size // info.world_size
        self.train_loader = build_loader(train_ds, self.batch, True, num_workers=cfg.workers,
                                         distributed=info.distributed, seed=cfg.seed,
                                         pin_memory=self.device.type == "cuda", aug_repeats=cfg.aug_repeats,
                                         collate_fn=self.collate_fn)
        self.n_batches = batches_per_epoch(self.train_loader)
        if self.n_batches == 0:
            raise ConfigError(
                f"the training set ({len(train_ds)} images) gives no full batch of {self.batch} per process: lower "
                "--batch-size or use more data (--limit-train)")
        if info.distributed:
            val_ds = torch.utils.data.Subset(val_ds, range(info.rank, len(val_ds), info.world_size))
        self.val_loader = build_loader(val_ds, self.batch, False, num_workers=cfg.workers,
                                       pin_memory=self.device.type == "cuda", collate_fn=self.collate_fn)
        self.steps_per_epoch = math.ceil(self.n_batches / cfg.accum_steps)
        epochs = self._planned_epochs()
        if epochs != cfg.epochs:
            self.cfg = cfg = cfg.replace(epochs=epochs)
        self.total_steps = cfg.epochs * self.steps_per_epoch

        # model on device, optimizer, schedule, EMA
        model.to(self.device)
        if self.device.type == "cpu" and hasattr(model, "linear_kernel"):
            # the linear path measured faster for training steps here (calibration), which can differ from the
            # inference choice new models get; fp32 CPU products only, so AMP and CUDA are unaffected
            model.linear_kernel = "onednn" if onednn_for_training(model) else "native"
        self.channels_last = (self._default_channels_last(model) if cfg.channels_last is None
                              else cfg.channels_last)
        if self.channels_last:
            set_channels_last(model, True)
        if cfg.grad_checkpointing:
            if not callable(getattr(model, "set_grad_checkpointing", None)):
                raise ConfigError(f"model {cfg.model} does not support --grad-checkpointing")
            model.set_grad_checkpointing(True)
        model = maybe_sync_batchnorm(model, info)
        self.model = model
        from timm.optim import create_optimizer_v2

        try:
            self.optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                 layer_decay=cfg.layer_decay, **fused_adamw_kwargs(model))
        except (AttributeError, NotImplementedError) as e:
            raise ConfigError(f"--layer-decay needs a model with timm's group_matcher(); {cfg.model} has none ({e})"
                              ) from None
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * self.steps_per_epoch)
        warmup = max(0, min(int(warmup), self.total_steps - 1))
        self.scheduler = self._build_scheduler(warmup)
        self.ema = None
        if cfg.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.ema_decay)

        self._build_criterion(num_classes)

        # state
        self.epoch, self.start_batch, self.step = 0, 0, 0
        self.best_top1: float | None = None
        self.best_epoch: int | None = None
        self.accum = _Accum()
        self.rng_to_restore: dict[str, Any] | None = None
        if self.resume_dir is not None:
            self._load_resume_state()
        self._update_lr()

        self.net: nn.Module = model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids)
        self.history = MetricHistory(self.out)
        # everything is validated: only now write into the run directory
        barrier(info)
        if info.is_main:
            if self.resume_dir:
                self.history.load(keep_before_epoch=self.epoch + 1)
            self.wrote_config = not (self.out / "config.json").exists()
            atomic_write_text(self.out / "config.json", cfg.to_json() + "\n")
            self.wrote_yaml = not (self.out / CONFIG_YAML).exists()
            atomic_write_text(self.out / CONFIG_YAML, config_to_yaml(cfg))

    def _planned_epochs(self) -> int:
        """The number of epochs to train, once ``steps_per_epoch`` is known: ``cfg.epochs`` here; the dense trainer
        turns an iteration count (mmseg's schedules) into whole epochs."""
        return self.cfg.epochs

    def _build_model_and_data(self) -> tuple[nn.Module, Any, Any, int]:
        """The model (pretrained weights loaded, on the CPU), the training and validation datasets and the class
        count; sets ``classes``, ``model_kwargs`` and ``pre`` (preprocessing). The dense trainer overrides it."""
        cfg = self.cfg
        defaults = dataset_defaults(cfg.data)
        self.classes: list[str] = list(defaults["classes"])
        num_classes = int(defaults["num_classes"])
        in_chans = int(cfg.in_chans or defaults["in_chans"])
        kwargs: dict[str, Any] = dict(cfg.model_kwargs)
        kwargs.update(num_classes=num_classes, in_chans=in_chans)
        if cfg.img_size:
            kwargs["img_size"] = cfg.img_size
        if cfg.drop_path_rate > 0:
            kwargs["drop_path_rate"] = cfg.drop_path_rate
        self.model_kwargs = kwargs
        pretrained = None if self.resume_dir else self._pretrained_file()
        model = build_model(cfg.model, checkpoint_path=pretrained, **kwargs)

        builtin = canonical_dataset_name(cfg.data) is not None
        overrides = ({k: defaults[k] for k in ("mean", "std", "crop_pct")} if builtin else {})
        overrides.update({k: getattr(cfg, k) for k in ("crop_pct", "interpolation") if getattr(cfg, k) is not None})
        self.pre = model_preprocessing(model, in_chans, cfg.img_size, overrides)
        check_model_input(model, self.pre["input_size"], cfg.model)

        # data
        pre = self.pre
        train_tf = build_transform(
            True, tuple(pre["input_size"]), pre["mean"], pre["std"], interpolation=pre["interpolation"],
            auto_augment=cfg.auto_augment, re_prob=cfg.re_prob, hflip=cfg.hflip, scale=tuple(cfg.scale),
            ratio=tuple(cfg.ratio), color_jitter=cfg.color_jitter)
        val_tf = build_transform(False, tuple(pre["input_size"]), pre["mean"], pre["std"],
                                 interpolation=pre["interpolation"], crop_pct=pre["crop_pct"])
        train_ds = build_dataset(cfg.data, "train", transform=train_tf, limit=cfg.limit_train,
                                 stratified=cfg.limit_train is not None)
        val_ds = build_dataset(cfg.data, "val", transform=val_tf, limit=cfg.limit_val,
                               stratified=cfg.limit_val is not None)
        if cfg.check_images:
            bad = verify_images(train_ds) + verify_images(val_ds)
            if bad:
                raise DataError(f"{len(bad)} corrupt or unreadable image file(s): {', '.join(bad[:10])}"
                                f"{' ...' if len(bad) > 10 else ''}; remove or replace them")
        return model, train_ds, val_ds, num_classes

    def _build_scheduler(self, warmup: int):
        """timm's cosine schedule over ``total_steps`` optimizer steps after ``warmup`` linear warmup steps; with
        ``lr_schedule_unit='epoch'``, over ``epochs`` after ``round(warmup_epochs)`` warmup epochs (t_in_epochs)."""
        from timm.scheduler import CosineLRScheduler

        cfg = self.cfg
        if cfg.lr_schedule_unit == "epoch":
            warmup_epochs = 0 if cfg.warmup_steps == 0 else max(0, min(round(cfg.warmup_epochs), cfg.epochs - 1))
            return CosineLRScheduler(
                self.optimizer, t_initial=max(1, cfg.epochs - warmup_epochs), lr_min=cfg.min_lr,
                warmup_t=warmup_epochs, warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=True)
        return CosineLRScheduler(
            self.optimizer, t_initial=max(1, self.total_steps - warmup), lr_min=cfg.min_lr, warmup_t=warmup,
            warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=False)

    def _update_lr(self) -> None:
        """Set the learning rate for the next optimizer step (``self.step`` steps done): per step, or held for the
        whole epoch that step falls in (``lr_schedule_unit='epoch'``). Derived from the step count alone, so a
        resumed run continues the same schedule."""
        if self.scheduler.t_in_epochs:
            self.scheduler.step(self.step // self.steps_per_epoch)
        else:
            self.scheduler.step_update(self.step)

    def _build_criterion(self, num_classes: int) -> None:
        """Sets ``mixup`` (or None) and ``criterion``: soft-target, label-smoothing or plain cross-entropy."""
        cfg = self.cfg
        mixup = build_mixup(cfg.mixup, cfg.cutmix, cfg.label_smoothing, num_classes, prob=cfg.mixup_prob,
                            switch_prob=cfg.mixup_switch_prob)
        self.mixup = mixup
        if mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif cfg.label_smoothing > 0:
            from timm.loss import LabelSmoothingCrossEntropy

            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def _load_resume_state(self) -> None:
        cfg, ckpt = self.cfg, self.resume_dir
        assert ckpt is not None
        meta = read_meta(ckpt)
        if meta["model"] != cfg.model or int(meta["model_kwargs"].get("num_classes", -1)) != len(self.classes):
            raise CheckpointError(
                f"cannot resume from {ckpt}: it holds model {meta['model']} with "
                f"{meta['model_kwargs'].get('num_classes')} classes, but this run builds {cfg.model} with "
                f"{len(self.classes)} classes; resume with the run's own options or start a new --output")
        state = load_train_state(ckpt)
        load_weights(self.model, ckpt)
        if self.ema is not None:
            if (Path(ckpt) / "model_ema.safetensors").is_file():
                load_weights(self.ema.module, ckpt, use_ema=True)
            else:
                self.ema.set(self.model)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"the optimizer state in {ckpt} does not fit this run ({e}): resume with the same "
                                  "--layer-decay / --weight-decay options as the original run") from None
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_values, strict=True):
            group["initial_lr"] = base
        pos = state["position"]
        self.epoch, self.start_batch, self.step = int(pos["epoch"]), int(pos["batch_in_epoch"]), int(pos["step"])
        best = state.get("best") or {}
        self.best_top1, self.best_epoch = best.get("top1"), best.get("epoch")
        ranks = state.get("ranks") or []
        same_layout = (int(state.get("world_size", 1)) == self.info.world_size
                       and int(state.get("per_rank_batch", self.batch)) == self.batch
                       and int(state.get("accum_steps", cfg.accum_steps)) == cfg.accum_steps)
        if self.start_batch and not same_layout:
            raise ConfigError(
                f"{ckpt} was saved in the middle of an epoch with {state.get('world_size')} process(es), "
                f"{state.get('per_rank_batch')} images per process and accum_steps {state.get('accum_steps')}: resume "
                "with the same --batch-size, --accum-steps and process count")
        if same_layout and len(ranks) == self.info.world_size:
            mine = ranks[self.info.rank]
            self.rng_to_restore = mine["rng"]
            self.accum = _Accum(mine.get("accum"))
        else:
            log.warning("resuming with a different process count or batch: random streams are re-seeded, the run "
                        "continues correctly but not bit-identically")
            seed_everything(cfg.seed + self.info.rank + 1000 * self.step)
        if self.start_batch > self.n_batches:
            raise ConfigError(f"{ckpt} stopped at batch {self.start_batch} of an epoch that now has only "
                              f"{self.n_batches} batches: resume with the same data and --batch-size")
        log.info("resumed from %s at epoch %d, batch %d, step %d", ckpt, self.epoch + 1, self.start_batch, self.step)

    # ------------------------------------------------------------------------------------------------ helpers
    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def _last_good(self) -> str:
        last = self.out / "last"
        return (f"the last good checkpoint is kept at {last}" if (last / META_FILE).is_file()
                else "no checkpoint had been saved yet")

    def _check_finite_loss(self, loss: torch.Tensor, epoch: int, batch: int) -> None:
        bad = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
        all_reduce_sum(bad, self.info)
        if bad.item() > 0:
            what = "NaN" if torch.isnan(loss.detach()).item() or not self.info.is_main else "inf"
            raise NonFiniteLossError(
                f"loss became {what} at epoch {epoch + 1} step {self.step + 1} (batch {batch + 1}): lower --lr or "
                f"enable --clip-grad; {self._last_good()}")

    def _check_finite_weights(self, epoch: int) -> None:
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteLossError(
                    f"weights became NaN/inf at epoch {epoch + 1} step {self.step} (parameter {name}): lower --lr or "
                    f"enable --clip-grad; {self._last_good()}")

    def _meta(self, epoch_done: int, batch_in_epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        import crossformers

        return {
            "model": self.cfg.model,
            "model_kwargs": self.model_kwargs,
            "num_classes": len(self.classes),
            "in_chans": self.pre["input_size"][0],
            "classes": self.classes,
            "preprocessing": self.pre,
            "dataset": self.cfg.data,
            "epoch": epoch_done,
            "step": self.step,
            "batch_in_epoch": batch_in_epoch,
            "metrics": metrics,
            "config": self.cfg.to_dict(),
            "crossformers_version": getattr(crossformers, "__version__", "unknown"),
            "torch_version": torch.__version__,
        }

    def _save(self, epoch_next: int, batch_in_epoch: int, metrics: dict[str, Any], save_best: bool,
              epoch_end: bool = False) -> None:
        """Commit ``last`` (and ``best``; at an epoch end also ``metrics`` as the epoch's row of the metric files and
        the curves) as one unit (see :mod:`crossformers.engine.run_dir`); the position is where training continues
        (epoch index, batch index)."""
        rank_state = {"rng": capture_rng_state(), "accum": self.accum.as_dict()}
        ranks = all_gather_objects(rank_state, self.info)
        if self.info.is_main:
            train_state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "position": {"epoch": epoch_next, "batch_in_epoch": batch_in_epoch, "step": self.step},
                "best": {"top1": self.best_top1, "epoch": self.best_epoch},
                "ranks": ranks,
                "world_size": self.info.world_size,
                "per_rank_batch": self.batch,
                "accum_steps": self.cfg.accum_steps,
            }
            # epoch_next = completed epochs (also mid-epoch: the current one is not complete)
            meta = self._meta(epoch_next, batch_in_epoch, metrics)
            ema = self.ema.module if self.ema is not None else None
            label = epoch_next if batch_in_epoch == 0 else epoch_next + 1  # the epoch being committed, 1-based
            staged = self.run_folder.begin()
            save_checkpoint(staged / "last", self.model, meta, ema_model=ema, train_state=train_state)
            fault_point("stage-last", label)
            items = ["last"]
            if save_best:
                save_checkpoint(staged / "best", self.model, meta, ema_model=ema)
                items.append("best")
                fault_point("stage-best", label)
            if epoch_end:
                self.history.rows.append(dict(metrics))
                self.history.save(staged)
                items += ["metrics.jsonl", "metrics.csv"]
                try:
                    plot_curves(self.history.rows, staged / "curves.png",
                                title=f"{self.cfg.model} on {self.cfg.data}", loss_label=self.loss_label)
                    items.append("curves.png")
                except Exception as e:  # noqa: BLE001 - a plotting failure must not stop training
                    log.warning("could not draw curves.png: %s", e)
                fault_point("stage-metrics", label)
            self.run_folder.commit(items, label)
        barrier(self.info)

    def _layout_note(self) -> str:
        """`` (native linear layers, channels-last)`` for the start-up log line: the linear path and memory format."""
        parts = [f"{self.model.linear_kernel} linear layers"] if hasattr(self.model, "linear_kernel") else []
        parts += ["channels-last"] if self.channels_last else []
        return f" ({', '.join(parts)})" if parts else ""

    def _default_channels_last(self, model: nn.Module) -> bool:
        """``channels_last=None``: on the CPU, channels-last memory for models that declare it faster
        (``prefers_channels_last``, the family protocol: FcaFormer). Measured on a 2-core Intel Xeon: training steps
        0.93x (fcaformer_nano, batch 128 at 56 px, fp32 and bf16 autocast) and 0.83-0.88x (FcaFormer-L1, batch 32)
        of the default layout's time. Elsewhere (CUDA, other families) not measured: off."""
        return self.device.type == "cpu" and prefers_channels_last(model)

    @torch.no_grad()
    def _validate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss_sum, top1, top5, count
        for x, y in self.val_loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = model(x)
            logits = logits.float()
            c1, c5 = topk_correct(logits, y, (1, 5))
            sums += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), c1, c5, len(y)],
                                 dtype=torch.float64, device=self.device)
        all_reduce_sum(sums, self.info)
        model.train(was_training)
        n = max(sums[3].item(), 1.0)
        return {"val_loss": sums[0].item() / n, "val_top1": 100.0 * sums[1].item() / n,
                "val_top5": 100.0 * sums[2].item() / n}

    # ------------------------------------------------------------------------------------------------ loop
    def _clean_failed_start(self) -> None:
        """After a failure: complete or discard an interrupted commit; before the first checkpoint, also remove what
        this call created (so the same --output can be used again). Never touches the folder of another process
        (without the lock it does nothing)."""
        if not self.info.is_main or not self.run_folder.locked:
            return
        with contextlib.suppress(Exception):
            self.run_folder.recover()
        if self.cfg.resume or (self.out / "last").exists():
            return
        if self.wrote_config:
            (self.out / "config.json").unlink(missing_ok=True)
        if self.wrote_yaml:
            (self.out / CONFIG_YAML).unlink(missing_ok=True)

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except BaseException:
            self._clean_failed_start()
            raise
        finally:
            if self.run_folder.locked:
                self.run_folder.unlock()
                self.run_folder.remove_created_dirs()  # only those still empty: after a failed start

    def _run(self) -> dict[str, Any]:
        self._setup()
        cfg, info = self.cfg, self.info
        if info.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info("model %s (%.2f M params), %d classes, input %s; %d steps/epoch x %d epochs; %d process(es), "
                     "%d images per process per step; device %s%s; output %s", cfg.model, n_params / 1e6,
                     len(self.classes), tuple(self.pre["input_size"]), self.steps_per_epoch, cfg.epochs,
                     info.world_size, self.batch, self.device,
                     self._layout_note(), self.out)
        if self.rng_to_restore is not None and self.start_batch == 0:
            restore_rng_state(self.rng_to_restore)
        last_row: dict[str, Any] = dict(self.history.rows[-1]) if self.history.rows else {}
        stopped_early = False
        done = cfg.max_steps is not None and self.step >= cfg.max_steps
        for epoch in range(self.epoch, cfg.epochs):
            if done:
                break
            first = epoch == self.epoch
            start = self.start_batch if first else 0
            if not first:
                self.accum = _Accum()
            set_epoch(self.train_loader, epoch, start_batch=start)
            self.net.train(not cfg.finetune_eval_mode)  # CrossViT's fine-tuning trains in eval mode
            batches = iter(self.train_loader)
            if first and start > 0 and self.rng_to_restore is not None:
                restore_rng_state(self.rng_to_restore)
            finished = self._train_epoch(epoch, start, batches)
            if not finished:  # max_steps reached inside the epoch
                stopped_early = True
                break
            last_row = self._end_epoch(epoch)
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                stopped_early = epoch + 1 < cfg.epochs
                break
        result = {k: v for k, v in last_row.items()}
        result.update({f"best_{self.best_key}": self.best_top1})
        result.update(step=self.step,
                      best_epoch=self.best_epoch, stopped_early=stopped_early, output=str(self.out))
        result.setdefault("epoch", self.epoch)
        return result

    def _train_epoch(self, epoch: int, start: int, batches) -> bool:
        """Run batches ``start..n_batches-1`` of ``epoch``; False if ``max_steps`` stopped it before the end."""
        cfg, info = self.cfg, self.info
        accum_steps = cfg.accum_steps
        disable = True if not info.is_main else (None if self.progress is None else not self.progress)
        bar = tqdm(total=self.n_batches, initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=disable, dynamic_ncols=True, leave=False)
        t0 = time.perf_counter()
        seen = 0
        try:
            for b in range(start, self.n_batches):
                batch = next(batches)
                group_start = (b // accum_steps) * accum_steps
                group_size = min(accum_steps, self.n_batches - group_start)
                last_in_group = b - group_start == group_size - 1
                sync = contextlib.nullcontext()
                if info.distributed and not last_in_group:
                    sync = self.net.no_sync()
                with sync:
                    loss, n, correct = self._forward_loss(batch)
                    self._check_finite_loss(loss, epoch, b)
                    (loss / group_size).backward()
                seen += n
                self.accum.loss_sum += loss.item() * n
                self.accum.count += n
                self.accum.correct += correct
                if last_in_group:
                    if cfg.clip_grad is not None:
                        from timm.utils import dispatch_clip_grad

                        dispatch_clip_grad(self.model.parameters(), cfg.clip_grad, mode="norm")
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    self._update_lr()
                    if self.ema is not None:
                        self.ema.update(self.model, step=self.step)
                    if self.step % cfg.log_interval == 0:
                        lr = self.optimizer.param_groups[0]["lr"]
                        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", step=self.step)
                        if bar.disable and info.is_main:
                            log.info("epoch %d batch %d/%d step %d: loss %.4f, lr %.3e", epoch + 1, b + 1,
                                     self.n_batches, self.step, loss.item(), lr)
                    if cfg.max_steps is not None and self.step >= cfg.max_steps and b + 1 < self.n_batches:
                        bar.update(1)
                        self._check_finite_weights(epoch)
                        self._save(epoch, b + 1, {"train_loss_partial": self._train_loss()}, save_best=False)
                        if info.is_main:
                            log.info("stopped at max_steps=%d (epoch %d, batch %d/%d); checkpoint %s",
                                     cfg.max_steps, epoch + 1, b + 1, self.n_batches, self.out / "last")
                        return False
                bar.update(1)
        finally:
            bar.close()
        self.epoch_time = time.perf_counter() - t0
        self.epoch_images = seen
        return True

    def _forward_loss(self, batch: Any) -> tuple[torch.Tensor, int, float]:
        """One micro-batch: (mean loss as a float32 scalar with its graph, images in it, correctly classified
        images); Mixup/CutMix applied when configured. The dense trainer overrides it."""
        x, y = batch
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        with self._autocast():
            logits = self.net(x)
        loss = compute_loss(self.criterion, logits, target)
        correct = 0.0 if self.mixup is not None else float((logits.detach().argmax(dim=-1) == y).sum().item())
        return loss, int(y.shape[0]), correct

    def _train_loss(self) -> float | None:
        return self.accum.loss_sum / self.accum.count if self.accum.count else None

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        info = self.info
        sums = torch.tensor([self.accum.loss_sum, self.accum.correct, self.accum.count], dtype=torch.float64,
                            device=self.device)
        all_reduce_sum(sums, info)
        images = torch.tensor([float(self.epoch_images)], dtype=torch.float64, device=self.device)
        all_reduce_sum(images, info)
        count = max(sums[2].item(), 1.0)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": sums[0].item() / count,
            "train_top1": None if self.mixup is not None or not self.train_accuracy else 100.0 * sums[1].item() / count,
        }
        row.update(self._validate(self.model))
        if self.ema is not None:
            row.update({f"{k}_ema": v for k, v in self._validate(self.ema.module).items()})
        row["epoch_time_s"] = self.epoch_time
        row["train_images_per_s"] = images.item() / self.epoch_time if self.epoch_time > 0 else None
        self._check_finite_weights(epoch)
        improved = self.best_top1 is None or row[self.best_key] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = row[self.best_key], epoch + 1
        row[f"best_{self.best_key}"] = self.best_top1
        self.accum = _Accum()  # the checkpoint continues at batch 0 of the next epoch
        self._save(epoch + 1, 0, row, save_best=improved, epoch_end=True)
        if info.is_main:
            self._log_epoch(epoch, row)
        return row

    def _log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """The log line of a finished epoch (main process)."""
        ema_txt = f", EMA top-1 {row['val_top1_ema']:.2f}%" if "val_top1_ema" in row else ""
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val top-1 %.2f%%, top-5 %.2f%%%s (best %.2f%% at "
                 "epoch %d), %.1f s", epoch + 1, self.cfg.epochs, row["train_loss"], row["val_loss"], row["val_top1"],
                 row["val_top5"], ema_txt, self.best_top1, self.best_epoch, self.epoch_time)
