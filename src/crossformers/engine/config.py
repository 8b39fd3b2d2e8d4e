"""Training options: :class:`TrainConfig`, a JSON-serialisable dataclass.

Every field has a default; the command line (``crossformers train``) exposes each one as ``--field-name``. The
saved ``config.json`` of a run is the exact :meth:`TrainConfig.to_dict` of the options it ran with.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["TrainConfig", "TIMM_PREFIX", "LR_SCHEDULE_UNITS", "INTERPOLATIONS"]

#: Model names starting with this prefix are built with ``timm.create_model`` (any timm architecture).
TIMM_PREFIX = "timm:"
#: values of ``TrainConfig.lr_schedule_unit`` and ``TrainConfig.interpolation`` (also the CLI's choices)
LR_SCHEDULE_UNITS = ("step", "epoch")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass
class TrainConfig:
    """All options of :func:`crossformers.engine.train`.

    Model:
        model: a crossformers model name (``crossformers.list_models()``), or ``timm:<name>`` for any timm model.
        model_kwargs: extra keyword arguments for the model constructor (e.g. ``{"patch_size": 4}``).
        img_size: input side in pixels given to the model and the transforms; ``None`` = the model's default
            input size (its ``pretrained_cfg['input_size']``), not passed to the constructor.
        crop_pct: evaluation centre-crop fraction (resize the shorter side to ``img_size / crop_pct``, crop
            ``img_size``); ``None`` = the model's ``pretrained_cfg`` (or Fashion-MNIST's own, 1.0).
        interpolation: resize interpolation of the training and evaluation transforms (``'bicubic'``,
            ``'bilinear'``, ``'nearest'``); ``None`` = the model's ``pretrained_cfg``.
        in_chans: input channels; ``None`` = the dataset's (1 for Fashion-MNIST, 3 for image folders).
        drop_path_rate: stochastic-depth rate (0 = off; only passed to the model when > 0).
        pretrained: fine-tune from a checkpoint: one of our checkpoint/run directories, or an official / state-dict
            file (``.pth``, ``.safetensors``). A classifier of another class count is replaced by a new head.
        grad_checkpointing: recompute activations in the backward pass (saves memory, costs time).
        channels_last: channels-last memory for the convolutions (True / False); ``None`` = where measured faster:
            on the CPU, for models that declare ``prefers_channels_last`` (FcaFormer: training steps 0.83-0.93x).

    Data:
        data: ``'fashion-mnist'`` or an image-folder root with ``train/`` and ``val/``.
        limit_train, limit_val: use a class-balanced subset of this many images (``None`` = all).
        workers: DataLoader worker processes per training process (0 = load in the main process).
        check_images: decode every image file once before training and list the corrupt ones.

    Augmentation / regularisation:
        auto_augment: timm policy such as ``'rand-m9-mstd0.5-inc1'`` (``None`` = off).
        re_prob: RandomErasing probability. hflip: horizontal-flip probability.
        scale, ratio: RandomResizedCrop area fraction and aspect-ratio ranges.
        color_jitter: colour-jitter strength (``None`` = off).
        mixup, cutmix: Beta alphas (0 = off). mixup_prob: probability of mixing a batch.
        mixup_switch_prob: probability of CutMix instead of Mixup when both are on.
        label_smoothing: label-smoothing epsilon in [0, 1).
        aug_repeats: repeated augmentation: each training image this many times per epoch, the copies differently
            augmented, with the epoch length unchanged (timm's ``RepeatAugSampler``; DeiT / CrossViT use 3);
            0 = off.

    Optimisation (AdamW, cosine schedule with linear warmup, updated every optimizer step):
        epochs: passes over the training set.
        batch_size: GLOBAL batch size in images per optimizer micro-step: under ``torchrun`` each of the
            ``world_size`` processes gets ``batch_size / world_size`` images. With ``accum_steps`` > 1 the
            effective batch per optimizer step is ``batch_size * accum_steps``.
        lr: peak learning rate (no automatic scaling with the batch size).
        min_lr: learning rate at the end of the cosine decay.
        warmup_lr: learning rate at step 0 of the warmup.
        warmup_epochs: linear warmup length in epochs (may be fractional); ``warmup_steps`` overrides it.
        warmup_steps: linear warmup length in optimizer steps (``None`` = use ``warmup_epochs``).
        weight_decay: AdamW decoupled weight decay; not applied to 1-D parameters (norms, biases) and to
            ``model.no_weight_decay()``.
        layer_decay: layer-wise lr decay factor (e.g. 0.75) for fine-tuning; ``None`` = off.
        lr_schedule_unit: ``"step"``: the learning rate follows the schedule at every optimizer step; ``"epoch"``:
            it is set once at the start of each epoch and held through it (timm's ``t_in_epochs`` schedules, as
            DeiT / CrossViT's ``lr_scheduler.step(epoch)``), warmup counted in whole epochs (``warmup_epochs``
            rounded; ``warmup_steps`` may then only be 0 = no warmup).
        finetune_eval_mode: train with the model in eval mode (dropout, drop path and BatchNorm statistics off,
            gradients as usual), as CrossViT's ``--finetune`` (``model.train(not finetune)``).
        clip_grad: clip the global gradient L2 norm to this value (``None`` = off).
        accum_steps: gradient-accumulation micro-batches per optimizer step.
        ema_decay: decay of an exponential moving average of the weights (e.g. 0.9998); 0 = no EMA.
        amp: bfloat16 autocast for the forward pass.

    Run control:
        output: run directory (checkpoints ``last/`` and ``best/``, ``metrics.csv``/``.jsonl``, ``curves.png``,
            ``config.json``). It must be new or empty unless ``resume`` is set (or hold only the ``config.json`` of a
            run stopped before its first checkpoint); training locks it against a second writer.
        resume: continue a run from its checkpoint directory (``RUN/last``) or run directory ``RUN``.
        seed: base random seed (process ``r`` of a distributed run uses ``seed + r`` for augmentation).
        device: ``'auto'`` (CUDA if available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        log_interval: update the progress bar / log every this many optimizer steps.
        max_steps: stop after this many optimizer steps in total (counting steps before a resume) and save a
            checkpoint there (``None`` = run all epochs).
    """

    # model
    model: str = "fcaformer_nano"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    in_chans: int | None = None
    drop_path_rate: float = 0.0
    pretrained: str | None = None
    grad_checkpointing: bool = False
    channels_last: bool | None = None
    # data
    data: str = "fashion-mnist"
    limit_train: int | None = None
    limit_val: int | None = None
    workers: int = 0
    check_images: bool = False
    # augmentation / regularisation
    auto_augment: str | None = None
    re_prob: float = 0.0
    hflip: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    aug_repeats: int = 0
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None
    weight_decay: float = 0.05
    layer_decay: float | None = None
    lr_schedule_unit: str = "step"
    finetune_eval_mode: bool = False
    clip_grad: float | None = None
    accum_steps: int = 1
    ema_decay: float = 0.0
    amp: bool = False
    # run control
    output: str = "runs/train"
    resume: str | None = None
    seed: int = 0
    device: str = "auto"
    log_interval: int = 50
    max_steps: int | None = None

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Serialise to JSON text; also write it to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict (e.g. a loaded ``config.json``).

        Raises:
            ConfigError: an unknown key (close names suggested) or a value of the wrong type.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = [f"{k} (did you mean {', '.join(difflib.get_close_matches(k, sorted(names), n=2))}?)"
                     if difflib.get_close_matches(k, sorted(names), n=2) else k for k in unknown]
            raise ConfigError(f"unknown training option(s): {', '.join(hints)}")
        kwargs = dict(values)
        for k in ("scale", "ratio"):
            if isinstance(kwargs.get(k), list):
                kwargs[k] = tuple(kwargs[k])
        cfg = cls(**kwargs)
        return cfg

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> TrainConfig:
        """Read a config from a JSON file path or JSON text.

        Every field is checked (:meth:`validate`): a JSON file is one that a person may have edited.

        Raises:
            ConfigError: unreadable file, invalid JSON, unknown keys, or an invalid value (the message names the
                file and the field).
        """
        text = str(path_or_text)
        is_text = text.lstrip().startswith("{")
        if not is_text:
            try:
                text = Path(path_or_text).read_text()
            except OSError as e:
                raise ConfigError(f"cannot read config file {path_or_text}: {e.strerror or e}") from None
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config {path_or_text} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config {path_or_text} must hold a JSON object of options")
        try:
            return cls.from_dict(values).validate()
        except ConfigError as e:
            raise ConfigError(f"{'config' if is_text else f'config {path_or_text}'}: {e}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation
    def validate(self) -> TrainConfig:
        """Check every option; returns ``self``.

        Raises:
            ConfigError: the first invalid option, with a valid example.
        """
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(isinstance(self.model, str) and bool(self.model.strip()), "model must be a model name, e.g. fcaformer_nano")
        need(isinstance(self.model_kwargs, dict) and all(isinstance(k, str) for k in self.model_kwargs),
             f"model_kwargs must be a dict of constructor arguments, got {self.model_kwargs!r}")
        need(isinstance(self.data, str) and bool(self.data.strip()),
             "data must be 'fashion-mnist' or an image-folder directory")
        need(is_int(self.epochs) and self.epochs >= 1, f"epochs must be an int >= 1, got {self.epochs!r}")
        need(is_int(self.batch_size) and self.batch_size >= 1, f"batch_size must be an int >= 1, got {self.batch_size!r}")
        need(is_int(self.accum_steps) and self.accum_steps >= 1, f"accum_steps must be an int >= 1, got {self.accum_steps!r}")
        need(self.img_size is None or (is_int(self.img_size) and self.img_size >= 1),
             f"img_size must be a positive int (pixels) or None, got {self.img_size!r}")
        need(self.in_chans is None or (is_int(self.in_chans) and self.in_chans in (1, 3)),
             f"in_chans must be 1 (grey) or 3 (RGB) for image data, got {self.in_chans!r}")
        for name in ("lr", "min_lr", "warmup_lr", "weight_decay", "drop_path_rate", "re_prob", "hflip", "mixup",
                     "cutmix", "mixup_prob", "mixup_switch_prob", "label_smoothing", "warmup_epochs", "ema_decay"):
            v = getattr(self, name)
            need(is_num(v) and v >= 0, f"{name} must be a finite number >= 0, got {v!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        for name in ("re_prob", "hflip", "mixup_prob", "mixup_switch_prob", "drop_path_rate"):
            need(getattr(self, name) <= 1, f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        need(self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        need(self.ema_decay < 1, f"ema_decay must be in [0, 1) (0 = off, e.g. 0.9998), got {self.ema_decay!r}")
        need(self.warmup_steps is None or (is_int(self.warmup_steps) and self.warmup_steps >= 0),
             f"warmup_steps must be an int >= 0 or None, got {self.warmup_steps!r}")
        need(self.layer_decay is None or (is_num(self.layer_decay) and 0 < self.layer_decay <= 1),
             f"layer_decay must be in (0, 1] (e.g. 0.75) or None, got {self.layer_decay!r}")
        need(self.lr_schedule_unit in LR_SCHEDULE_UNITS,
             f"lr_schedule_unit must be 'step' or 'epoch', got {self.lr_schedule_unit!r}")
        need(self.lr_schedule_unit == "step" or not self.warmup_steps,
             "warmup_steps counts optimizer steps, but lr_schedule_unit='epoch' sets the learning rate once per "
             "epoch: give the warmup in epochs (--warmup-epochs) instead")
        need(self.clip_grad is None or (is_num(self.clip_grad) and self.clip_grad > 0),
             f"clip_grad must be > 0 (e.g. 1.0) or None, got {self.clip_grad!r}")
        need(self.crop_pct is None or (is_num(self.crop_pct) and 0 < self.crop_pct <= 1),
             f"crop_pct must be in (0, 1] (e.g. 0.875) or None, got {self.crop_pct!r}")
        need(self.interpolation is None or self.interpolation in INTERPOLATIONS,
             f"interpolation must be 'bicubic', 'bilinear', 'nearest' or None, got {self.interpolation!r}")
        need(self.color_jitter is None or (is_num(self.color_jitter) and self.color_jitter >= 0),
             f"color_jitter must be >= 0 or None, got {self.color_jitter!r}")
        for name in ("scale", "ratio"):
            v = getattr(self, name)
            need(isinstance(v, (tuple, list)) and len(v) == 2 and all(is_num(x) and x > 0 for x in v) and v[0] <= v[1],
                 f"{name} must be two positive numbers low <= high, got {v!r}")
        need(is_int(self.seed) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        need(is_int(self.aug_repeats) and self.aug_repeats >= 0,
             f"aug_repeats must be an int >= 0 (0 = off, e.g. 3), got {self.aug_repeats!r}")
        need(is_int(self.workers) and self.workers >= 0, f"workers must be an int >= 0, got {self.workers!r}")
        need(is_int(self.log_interval) and self.log_interval >= 1, f"log_interval must be >= 1, got {self.log_interval!r}")
        for name in ("limit_train", "limit_val", "max_steps"):
            v = getattr(self, name)
            need(v is None or (is_int(v) and v >= 1), f"{name} must be an int >= 1 or None, got {v!r}")
        need(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")),
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        need(isinstance(self.output, str) and bool(self.output), f"output must be a directory path, got {self.output!r}")
        for name in ("amp", "grad_checkpointing", "check_images"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        need(self.channels_last is None or isinstance(self.channels_last, bool),
             f"channels_last must be true, false or null (auto), got {self.channels_last!r}")
        for name in ("pretrained", "resume", "auto_augment"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, str) and bool(v)), f"{name} must be a non-empty string or None, got {v!r}")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ConfigError(f"mixup/cutmix need an even batch size, got batch_size={self.batch_size}")
        return self

    @property
    def is_timm_model(self) -> bool:
        """True when :attr:`model` names a plain timm model (``timm:<name>``)."""
        return self.model.startswith(TIMM_PREFIX)
