"""The papers' ImageNet-1k training recipes by name: ``crossformers train --recipe NAME``.

Each :class:`Recipe` holds the values the authors' own code trains with, every one with its source: file and line in
the authors' repository at a fixed commit (``cheerss/CrossFormer`` 7952010, ``IBM/CrossViT`` 3f7ab77,
``hkzhang-git/FcaFormer`` 7dcd8e0). :func:`resolve_recipe` turns a recipe, the chosen model and the options the user
gave explicitly into a :class:`~crossformers.engine.TrainConfig`:

* defaults < recipe < explicit options (a ``--config`` file, then command-line flags);
* per-variant values (drop path) are taken for the chosen ``model``;
* the learning-rate scaling rule of the authors' script is applied to the resolved global batch
  (``batch_size * accum_steps``) unless the learning rate is given explicitly;
* preprocessing values (input size, evaluation crop, interpolation) that differ from the model's
  ``pretrained_cfg`` set ``img_size`` / ``crop_pct`` / ``interpolation``; what cannot be applied is reported in
  :attr:`ResolvedRecipe.not_applied`, which ``crossformers train`` prints at start.

>>> from crossformers.engine.recipes import resolve_recipe
>>> r = resolve_recipe("crossformer_imagenet", {"model": "crossformer_small"})
>>> r.config.lr, r.config.drop_path_rate, r.config.batch_size
(0.001, 0.2, 1024)
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import TIMM_PREFIX, TrainConfig
from .errors import ConfigError

__all__ = ["Recipe", "RecipeValue", "LrScaling", "ResolvedRecipe", "RECIPES", "list_recipes", "get_recipe",
           "register_recipe", "resolve_recipe", "format_recipe", "print_recipes", "markdown_tables", "CHECKED_KEYS"]

_CF = "cheerss/CrossFormer@7952010"
_CV = "IBM/CrossViT@3f7ab77"
_FCA = "hkzhang-git/FcaFormer@7dcd8e0"

#: Recipe keys that are not TrainConfig fields but preprocessing, compared with the model's ``pretrained_cfg``:
#: where they differ they set ``img_size``, ``crop_pct`` and ``interpolation`` (equal ones need nothing).
CHECKED_KEYS = ("input_size", "train_interpolation", "eval_interpolation", "eval_crop_pct")


@dataclass(frozen=True)
class RecipeValue:
    """One value of a recipe and where it comes from.

    Attributes:
        value: the value in crossformers units (TrainConfig field units; probabilities in [0, 1]).
        source: ``owner/repo@commit:path:line`` (a line range ``a-b`` where several lines make the value) and what
            the line says.
        note: why the value is what it is when the authors' code does not state it directly (empty otherwise).
    """

    value: Any
    source: str
    note: str = ""


@dataclass(frozen=True)
class LrScaling:
    """The authors' linear learning-rate scaling: ``value * global_batch / base_batch`` for ``fields``.

    ``global_batch`` is the resolved ``batch_size * accum_steps`` (images per optimizer step).
    """

    base_batch: int
    fields: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Recipe:
    """A paper's training recipe.

    Attributes:
        name: recipe name (``crossformers train --recipe NAME``).
        description: one line: paper, setting.
        models: the model variants the recipe was written for (crossformers names).
        values: TrainConfig fields and :data:`CHECKED_KEYS` entries. ``lr``,
            ``warmup_lr`` and ``min_lr`` are the BASE values when :attr:`lr_scaling` is set.
        drop_path: per-variant stochastic-depth rate, keyed by model name.
        drop_path_default: the code's default rate for a model without a per-variant value.
        lr_scaling: the learning-rate scaling rule, or ``None`` (learning rates used as given).
        requires_pretrained: a fine-tuning recipe: ``pretrained`` must be given.
        config_cls: the options class the recipe's values belong to (:class:`TrainConfig`; the dense recipes of
            :mod:`crossformers.dense.recipes` use its ``DenseTrainConfig``).
        command: the command that trains with it (``train``; ``dense train`` for the dense recipes).
        gaps: parts of the authors' setting that no option here reproduces, each with its source; reported as
            ``not applied: ...`` whenever the recipe is used, and listed in the docs.
    """

    name: str
    description: str
    models: tuple[str, ...]
    values: dict[str, RecipeValue]
    drop_path: dict[str, RecipeValue] = field(default_factory=dict)
    drop_path_default: RecipeValue | None = None
    lr_scaling: LrScaling | None = None
    requires_pretrained: bool = False
    config_cls: type[TrainConfig] = TrainConfig
    command: str = "train"
    gaps: tuple[str, ...] = ()


@dataclass
class ResolvedRecipe:
    """The outcome of :func:`resolve_recipe`.

    Attributes:
        recipe: the recipe. config: the resolved options (not yet validated).
        sources: TrainConfig field -> source of the value it got from the recipe (fields overridden by explicit
            options are absent).
        overridden: TrainConfig fields where an explicit option replaced the recipe's value.
        not_applied: one human-readable line per recipe value the run will NOT follow (``not applied: ...``) or
            that is not the authors' own setting (``note: ...``).
    """

    recipe: Recipe
    config: TrainConfig
    sources: dict[str, str]
    overridden: list[str]
    not_applied: list[str]


def _v(value: Any, repo: str, where: str, what: str, note: str = "") -> RecipeValue:
    return RecipeValue(value, f"{repo}:{where} ({what})", note)


def _timm_transform_defaults(repo: str, where: str) -> dict[str, RecipeValue]:
    """``scale``, ``ratio`` and ``hflip`` of a training transform built by ``timm.data.create_transform`` without
    them (at ``repo:where``): timm's defaults, random-resized-crop area 0.08-1, aspect 3/4-4/3, flip probability 0.5."""
    return {
        "scale": _v((0.08, 1.0), repo, where, "timm create_transform without scale: its default"),
        "ratio": _v((3 / 4, 4 / 3), repo, where, "timm create_transform without ratio: its default"),
        "hflip": _v(0.5, repo, where, "timm create_transform without hflip: its default 0.5"),
    }


# ------------------------------------------------------------------------------------------------ CrossFormer(++)
def _crossformer_values() -> dict[str, RecipeValue]:
    """Shared by CrossFormer and CrossFormer++: one ``config.py`` / ``main.py`` (launch line: README.md:79-80)."""
    return {
        "epochs": _v(300, _CF, "main.py:63", "--epochs default=300; config.py:255 copies it into TRAIN.EPOCHS"),
        "batch_size": _v(1024, _CF, "README.md:79-80", "--nproc_per_node 8 ... --batch-size 128 (per GPU): 8 x 128"),
        "accum_steps": _v(1, _CF, "config.py:112", "TRAIN.ACCUMULATION_STEPS = 0 (off)"),
        "lr": _v(5e-4, _CF, "main.py:64", "--lr default=5e-4, base value per 512 images (main.py:364)"),
        "warmup_lr": _v(5e-7, _CF, "main.py:66", "--warmup_lr default=5e-7, scaled like lr (main.py:365)"),
        "min_lr": _v(5e-6, _CF, "main.py:65", "--min_lr default=5e-6, scaled like lr (main.py:366)"),
        "warmup_epochs": _v(20, _CF, "main.py:62", "--warmup_epochs default=20; config.py:254 copies it"),
        "weight_decay": _v(0.05, _CF, "main.py:67", "--weight_decay default=5e-2; config.py:256 copies it"),
        "clip_grad": _v(5.0, _CF, "config.py:107", "TRAIN.CLIP_GRAD = 5.0"),
        "label_smoothing": _v(0.1, _CF, "config.py:61", "MODEL.LABEL_SMOOTHING = 0.1"),
        "auto_augment": _v("rand-m9-mstd0.5-inc1", _CF, "config.py:142", "AUG.AUTO_AUGMENT"),
        "color_jitter": _v(0.4, _CF, "config.py:140", "AUG.COLOR_JITTER = 0.4"),
        "re_prob": _v(0.25, _CF, "config.py:144", "AUG.REPROB = 0.25 (mode 'pixel', count 1: lines 146, 148)"),
        "mixup": _v(0.8, _CF, "config.py:150", "AUG.MIXUP = 0.8"),
        "cutmix": _v(1.0, _CF, "config.py:152", "AUG.CUTMIX = 1.0"),
        "mixup_prob": _v(1.0, _CF, "config.py:156", "AUG.MIXUP_PROB = 1.0"),
        "mixup_switch_prob": _v(0.5, _CF, "config.py:158", "AUG.MIXUP_SWITCH_PROB = 0.5"),
        **_timm_transform_defaults(_CF, "data/build.py:101-110"),
        "ema_decay": _v(0.0, _CF, "main.py:12-21", "no model EMA: main.py imports and builds none"),
        "aug_repeats": _v(0, _CF, "data/build.py:30-31", "DistributedSampler: no repeated augmentation"),
        "amp": _v(True, _CF, "main.py:54", "--amp-opt-level default='native' (torch autocast; here bfloat16)"),
        "input_size": _v(224, _CF, "main.py:72", "--img_size default=224; config.py:253 copies it"),
        "train_interpolation": _v("bicubic", _CF, "config.py:23", "DATA.INTERPOLATION = 'bicubic' (data/build.py:109)"),
        "eval_interpolation": _v("bicubic", _CF, "data/build.py:122", "Resize(..., DATA.INTERPOLATION)"),
        "eval_crop_pct": _v(0.875, _CF, "data/build.py:120", "resize to int(256 / 224 * IMG_SIZE), centre crop: 224/256"),
    }


def _crossformer_drop_path(pp: bool) -> dict[str, RecipeValue]:
    if pp:
        return {
            "crossformer_pp_small": _v(0.2, _CF, "configs/crossformer_pp/small_patch4_group_const_224.yaml:4",
                                       "DROP_PATH_RATE: 0.2"),
            "crossformer_pp_base": _v(0.3, _CF, "configs/crossformer_pp/base_patch4_group_const_224.yaml:4",
                                      "DROP_PATH_RATE: 0.3"),
            "crossformer_pp_large": _v(0.5, _CF, "configs/crossformer_pp/large_patch4_group_const_224.yaml:4",
                                       "DROP_PATH_RATE: 0.5"),
            "crossformer_pp_huge": _v(0.5, _CF, "configs/crossformer_pp/huge_patch4_group_const_224.yaml:4",
                                      "DROP_PATH_RATE: 0.5"),
        }
    return {
        "crossformer_tiny": _v(0.1, _CF, "configs/crossformer/tiny_patch4_group7_224.yaml:4", "DROP_PATH_RATE: 0.1"),
        "crossformer_small": _v(0.2, _CF, "configs/crossformer/small_patch4_group7_224.yaml:4", "DROP_PATH_RATE: 0.2"),
        "crossformer_base": _v(0.3, _CF, "configs/crossformer/base_patch4_group7_224.yaml:4", "DROP_PATH_RATE: 0.3"),
        "crossformer_large": _v(0.5, _CF, "configs/crossformer/large_patch4_group7_224.yaml:4", "DROP_PATH_RATE: 0.5"),
    }


def _crossformer(pp: bool) -> Recipe:
    name = "crossformer_pp_imagenet" if pp else "crossformer_imagenet"
    values = _crossformer_values()
    if pp:
        values["model"] = _v("crossformer_pp_small", _CF, "README.md:95", "the first CrossFormer++ launch line (-S)")
    else:
        values["model"] = _v("crossformer_tiny", _CF, "README.md:79", "the first CrossFormer launch line (-T)")
    drop_path = _crossformer_drop_path(pp)
    return Recipe(
        name=name,
        description=("CrossFormer++" if pp else "CrossFormer") + " ImageNet-1k, 300 epochs, AdamW, global batch 1024 "
        "(the authors' config.py / main.py / configs/)",
        models=tuple(drop_path),
        values=values,
        drop_path=drop_path,
        drop_path_default=_v(0.1, _CF, "config.py:59", "MODEL.DROP_PATH_RATE = 0.1 (default)"),
        lr_scaling=LrScaling(512, ("lr", "warmup_lr", "min_lr"),
                             f"{_CF}:main.py:364-371 (lr, warmup_lr, min_lr * batch * world_size / 512.0, "
                             "then * accumulation steps)"),
    )


# ------------------------------------------------------------------------------------------------ CrossViT (DeiT)
_CROSSVIT_MODELS = ("crossvit_tiny_240", "crossvit_small_240", "crossvit_base_240", "crossvit_9_240", "crossvit_15_240",
                    "crossvit_18_240", "crossvit_9_dagger_240", "crossvit_15_dagger_240", "crossvit_18_dagger_240")


def _crossvit_values() -> dict[str, RecipeValue]:
    return {
        "model": _v("crossvit_9_dagger_240", _CV, "README.md:66", "--model crossvit_9_dagger_224 (ours: *_240)"),
        "epochs": _v(300, _CV, "main.py:42", "--epochs default=300"),
        "batch_size": _v(2048, _CV, "README.md:66", "--nproc_per_node=8 ... --batch-size 256 (per GPU): 8 x 256"),
        "accum_steps": _v(1, _CV, "engine.py:21-27", "no gradient accumulation in train_one_epoch"),
        "lr": _v(5e-4, _CV, "main.py:73", "--lr default=5e-4, base value per 512 images (main.py:245)"),
        "warmup_lr": _v(1e-6, _CV, "main.py:81", "--warmup-lr default=1e-6 (not scaled)"),
        "min_lr": _v(1e-5, _CV, "main.py:83", "--min-lr default=1e-5 (not scaled)"),
        "warmup_epochs": _v(5, _CV, "main.py:88", "--warmup-epochs default=5"),
        "weight_decay": _v(0.05, _CV, "main.py:68", "--weight-decay default=0.05"),
        "clip_grad": _v(None, _CV, "main.py:64", "--clip-grad default=None (no clipping)"),
        "label_smoothing": _v(0.1, _CV, "main.py:103", "--smoothing default=0.1"),
        "auto_augment": _v("rand-m9-mstd0.5-inc1", _CV, "main.py:100", "--aa default"),
        "color_jitter": _v(0.4, _CV, "main.py:98", "--color-jitter default=0.4"),
        "re_prob": _v(0.25, _CV, "main.py:113", "--reprob default=0.25 (mode 'pixel', count 1: lines 115, 117)"),
        "mixup": _v(0.8, _CV, "main.py:123", "--mixup default=0.8"),
        "cutmix": _v(1.0, _CV, "main.py:125", "--cutmix default=1.0"),
        "mixup_prob": _v(1.0, _CV, "main.py:129", "--mixup-prob default=1.0"),
        "mixup_switch_prob": _v(0.5, _CV, "main.py:131", "--mixup-switch-prob default=0.5"),
        **_timm_transform_defaults(_CV, "datasets.py:90-99"),
        "ema_decay": _v(0.0, _CV, "main.py:22-27", "no model EMA: main.py imports and builds none"),
        "amp": _v(True, _CV, "main.py:152", "--no-amp store_false dest=amp: AMP on by default (here bfloat16)"),
        "input_size": _v(240, _CV, "main.py:47", "--input-size default=240"),
        "train_interpolation": _v("bicubic", _CV, "main.py:104", "--train-interpolation default='bicubic'"),
        "eval_interpolation": _v("bicubic", _CV, "datasets.py:111", "Resize(size, interpolation=3), 3 = bicubic"),
        "eval_crop_pct": _v(0.875, _CV, "main.py:110", "--crop-ratio default=256/224: resize int(ratio * size) "
                            "(datasets.py:109), centre crop"),
        "aug_repeats": _v(3, _CV, "samplers.py:50", "each index repeated 3 times; RASampler is used because "
                          "--repeated-aug defaults to True (main.py:107-109, 194-197)"),
        "lr_schedule_unit": _v("epoch", _CV, "main.py:317", "lr_scheduler.step(epoch): timm cosine per epoch"),
    }


def _crossvit() -> Recipe:
    return Recipe(
        name="crossvit_imagenet",
        description="CrossViT ImageNet-1k, the DeiT recipe of the authors' main.py: 300 epochs, global batch 2048, "
        "repeated augmentation",
        models=_CROSSVIT_MODELS,
        values=_crossvit_values(),
        drop_path={},
        drop_path_default=_v(0.1, _CV, "main.py:51", "--drop-path default=0.1, for every model"),
        lr_scaling=LrScaling(512, ("lr",), f"{_CV}:main.py:245 (lr * batch_size * world_size / 512.0)"),
    )


def _crossvit_finetune() -> Recipe:
    values = _crossvit_values()
    gap = ("the authors' code and README give no fine-tuning schedule: this is main.py's default; set it "
           "explicitly (e.g. --epochs, --lr) for a real fine-tune")
    values.update({
        "model": _v("crossvit_15_dagger_408", _CV, "models/crossvit.py:419-421",
                    "crossvit_15_dagger_384: img_size=[408, 384] (ours: *_408)"),
        "input_size": _v(408, _CV, "models/crossvit.py:420", "img_size=[408, 384]: the large-patch branch sees 408"),
        "epochs": _v(300, _CV, "main.py:42", "--epochs default=300", note=gap),
        "lr": _v(5e-4, _CV, "main.py:73", "--lr default=5e-4, base value per 512 images (main.py:245)", note=gap),
        "warmup_epochs": _v(5, _CV, "main.py:88", "--warmup-epochs default=5", note=gap),
        "finetune_eval_mode": _v(True, _CV, "engine.py:28-29", "--finetune (main.py:170): model.train(not finetune), "
                                 "i.e. dropout, drop path and BatchNorm statistics off while fine-tuning"),
    })
    return Recipe(
        name="crossvit_dagger_408_finetune",
        description="CrossViT-15/18 dagger fine-tuned at 408/384 from a 240 checkpoint (--pretrained FILE): the "
        "authors' main.py --finetune --initial_checkpoint",
        models=("crossvit_15_dagger_408", "crossvit_18_dagger_408"),
        values=values,
        drop_path={},
        drop_path_default=_v(0.0, _CV, "engine.py:28-29", "fine-tuning runs the model in eval mode, so drop path "
                             "(main.py:51 --drop-path 0.1) never acts"),
        lr_scaling=LrScaling(512, ("lr",), f"{_CV}:main.py:245 (lr * batch_size * world_size / 512.0)"),
        requires_pretrained=True,
    )


# ------------------------------------------------------------------------------------------------ FcaFormer (ConvNeXt)
def _fcaformer() -> Recipe:
    s = "image_classification/scripts/fca_l{}.sh:1"
    m = "image_classification/main.py"
    d = "image_classification/datasets.py"
    values = {
        "model": _v("fcaformer_l1", _FCA, s.format(1), "--model fcaformer_l1"),
        "epochs": _v(300, _FCA, f"{m}:54", "--epochs default=300"),
        "batch_size": _v(1024, _FCA, s.format(1), "--nproc_per_node=8 ... --batch_size 128 (per GPU) --update_freq 1"),
        "accum_steps": _v(1, _FCA, s.format(1), "--update_freq 1"),
        "lr": _v(2e-3, _FCA, s.format(1), "--lr 2e-3 for the global batch 1024 (main.py:328-331: used as given)"),
        "warmup_lr": _v(0.0, _FCA, "image_classification/utils.py:429", "cosine_scheduler start_warmup_value=0"),
        "min_lr": _v(1e-6, _FCA, f"{m}:94", "--min_lr default=1e-6"),
        "warmup_epochs": _v(20, _FCA, f"{m}:96", "--warmup_epochs default=20"),
        "weight_decay": _v(0.05, _FCA, f"{m}:85", "--weight_decay default=0.05 (constant: main.py:364-365)"),
        "layer_decay": _v(None, _FCA, f"{m}:93", "--layer_decay default=1.0 (off)"),
        "clip_grad": _v(None, _FCA, f"{m}:81", "--clip_grad default=None (no clipping)"),
        "label_smoothing": _v(0.1, _FCA, f"{m}:106", "--smoothing default=0.1"),
        "auto_augment": _v("rand-m9-mstd0.5-inc1", _FCA, f"{m}:104", "--aa default"),
        "color_jitter": _v(0.4, _FCA, f"{m}:102", "--color_jitter default=0.4"),
        "re_prob": _v(0.25, _FCA, f"{m}:115", "--reprob default=0.25 (mode 'pixel', count 1: lines 117, 119)"),
        "mixup": _v(0.8, _FCA, f"{m}:125", "--mixup default=0.8"),
        "cutmix": _v(1.0, _FCA, f"{m}:127", "--cutmix default=1.0"),
        "mixup_prob": _v(1.0, _FCA, f"{m}:131", "--mixup_prob default=1.0"),
        "mixup_switch_prob": _v(0.5, _FCA, f"{m}:133", "--mixup_switch_prob default=0.5"),
        **_timm_transform_defaults(_FCA, f"{d}:58-69"),
        "aug_repeats": _v(0, _FCA, f"{m}:226", "DistributedSampler: no repeated augmentation"),
        "ema_decay": _v(0.9999, _FCA, f"{m}:70", "--model_ema_decay default=0.9999; scripts/fca_l*.sh:1 "
                        "--model_ema true --model_ema_eval true"),
        "amp": _v(False, _FCA, f"{m}:192", "--use_amp default=False; the scripts do not set it"),
        "input_size": _v(224, _FCA, f"{m}:63", "--input_size default=224"),
        "train_interpolation": _v("bicubic", _FCA, f"{m}:108", "--train_interpolation default='bicubic'"),
        "eval_interpolation": _v("bicubic", _FCA, f"{d}:90", "Resize(size, interpolation=BICUBIC)"),
        "eval_crop_pct": _v(0.875, _FCA, f"{d}:85-87", "crop_pct None -> 224 / 256"),
    }
    drop_path = {f"fcaformer_l{i}": _v(r, _FCA, s.format(i), f"--drop_path {r}")
                 for i, r in ((1, 0.0), (2, 0.1), (3, 0.2), (4, 0.4))}
    return Recipe(
        name="fcaformer_imagenet",
        description="FcaFormer ImageNet-1k, the ConvNeXt-style recipe of the authors' main.py and scripts/: 300 "
        "epochs, global batch 1024, lr 2e-3, EMA",
        models=tuple(drop_path),
        values=values,
        drop_path=drop_path,
        drop_path_default=_v(0.0, _FCA, f"{m}:61", "--drop_path default=0"),
        lr_scaling=None,
    )


RECIPES: dict[str, Recipe] = {r.name: r for r in (_crossformer(False), _crossformer(True), _crossvit(),
                                                   _crossvit_finetune(), _fcaformer())}


# ------------------------------------------------------------------------------------------------ API
def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to :data:`RECIPES` (how packages above the engine, e.g. :mod:`crossformers.dense`, offer
    theirs); returns it.

    Raises:
        ConfigError: a different recipe of that name is registered already.
    """
    have = RECIPES.get(recipe.name)
    if have is not None and have is not recipe:
        raise ConfigError(f"a recipe named {recipe.name!r} is registered already")
    RECIPES[recipe.name] = recipe
    return recipe


def list_recipes() -> list[str]:
    """Names of all recipes, sorted."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ConfigError: no such recipe (close names suggested, and where to list them).
    """
    if name in RECIPES:
        return RECIPES[name]
    close = difflib.get_close_matches(name, list_recipes(), n=2)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown recipe {name!r}{hint}: run `crossformers recipes` to list them")


def _model_preprocessing_cfg(model: str) -> dict[str, Any] | None:
    """Input size, crop and interpolation of ``model``'s default ``pretrained_cfg`` without building it."""
    import timm

    from ..factory import timm_name

    try:
        name = model[len(TIMM_PREFIX):] if model.startswith(TIMM_PREFIX) else timm_name(model)
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown model: train reports it properly later
        return None
    if cfg is None:
        return None
    size = tuple(cfg.input_size or (3, 224, 224))
    return {"input_size": int(size[-1]), "interpolation": cfg.interpolation or "bicubic",
            "crop_pct": float(cfg.crop_pct or 0.875)}


def resolve_recipe(name: str, explicit: Mapping[str, Any] | None = None,
                   base: TrainConfig | None = None, config_cls: type[TrainConfig] | None = None) -> ResolvedRecipe:
    """Resolve recipe ``name`` for the explicitly given options.

    Args:
        name: a recipe name (:func:`list_recipes`).
        explicit: options the user gave explicitly (TrainConfig field -> value), e.g. from a ``--config`` file and
            command-line flags; they override the recipe. ``model`` picks the per-variant values (default: the
            recipe's model). Only options really given belong here (never argparse defaults).
        base: options below the recipe (default ``recipe.config_cls()``).
        config_cls: the options class of the command asking (``None`` = the recipe's own); a recipe of another
            command is refused.

    Returns:
        A :class:`ResolvedRecipe`; its ``config`` is not validated yet (``train`` does that).

    Raises:
        ConfigError: unknown recipe, a recipe of another command (``train`` vs ``dense train``), unknown option names
            in ``explicit``, or a fine-tuning recipe without ``pretrained``.
    """
    recipe = get_recipe(name)
    if config_cls is not None and config_cls is not recipe.config_cls:
        raise ConfigError(f"recipe {name} is for `crossformers {recipe.command}`: run `crossformers {recipe.command} "
                          f"--recipe {name}` (`crossformers recipes` lists which command each recipe is for)")
    given = dict(explicit or {})
    fields = {f.name for f in dataclasses.fields(recipe.config_cls)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
    if recipe.requires_pretrained and not given.get("pretrained") and not (base and base.pretrained):
        raise ConfigError(f"recipe {name} fine-tunes a trained model: pass --pretrained FILE (a .pth / "
                          f".safetensors checkpoint of {recipe.models[0].replace('408', '240')}, e.g. the authors' "
                          f"{recipe.models[0].replace('408', '224')}.pth)")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    not_applied: list[str] = []
    for key, rv in recipe.values.items():
        if key in fields:
            values[key] = rv.value
            sources[key] = rv.source + (f" [note: {rv.note}]" if rv.note else "")
    model = given.get("model", values.get("model"))
    if model in recipe.drop_path:
        dp = recipe.drop_path[model]
    else:
        dp = recipe.drop_path_default
        if model not in recipe.models:
            not_applied.append(f"note: model {model} is not a variant this recipe was written for "
                               f"({', '.join(recipe.models)}); the code's default drop path is used")
    if dp is not None:
        values["drop_path_rate"], sources["drop_path_rate"] = dp.value, dp.source
    if recipe.lr_scaling is not None:
        sc = recipe.lr_scaling
        batch = int(given.get("batch_size", values.get("batch_size", 1))) * int(
            given.get("accum_steps", values.get("accum_steps", 1)))
        for key in sc.fields:
            values[key] = values[key] * batch / sc.base_batch
            sources[key] = f"{sources[key]}; scaled by {batch}/{sc.base_batch}: {sc.source}"

    # preprocessing: set as options where they differ from the model's pretrained_cfg (equal ones need nothing)
    pre = _model_preprocessing_cfg(str(model))

    def differs(pre_key: str, value: Any) -> bool:
        if pre is None:
            return True
        have = pre[pre_key]
        return have != value and not (isinstance(value, float) and abs(float(have) - value) < 1e-9)

    rv = recipe.values.get("input_size")
    if rv is not None and "img_size" not in given and differs("input_size", rv.value):
        values["img_size"], sources["img_size"] = rv.value, rv.source
    rv = recipe.values.get("eval_crop_pct")
    if rv is not None and differs("crop_pct", rv.value):
        values["crop_pct"], sources["crop_pct"] = rv.value, rv.source
    train_i, eval_i = recipe.values.get("train_interpolation"), recipe.values.get("eval_interpolation")
    interp = [r for r in (train_i, eval_i) if r is not None]
    if interp and any(differs("interpolation", r.value) for r in interp):
        if len({r.value for r in interp}) == 1:
            values["interpolation"] = interp[0].value
            sources["interpolation"] = "; ".join(r.source for r in interp)
        else:  # one option serves both transforms here
            not_applied.append(f"not applied: train_interpolation={train_i.value!r} and eval_interpolation="
                               f"{eval_i.value!r} differ; the engine uses one interpolation for both (--interpolation)")
    for key, rv in recipe.values.items():
        if rv.note and key not in given:
            not_applied.append(f"note: {key}={rv.value!r}: {rv.note}")
    not_applied.extend(f"not applied: {gap}" for gap in recipe.gaps)

    overridden = sorted(k for k in given if k in values and k != "model" and given[k] != values[k])
    for k in given:
        sources.pop(k, None)
    cfg = (base or recipe.config_cls()).replace(**values)
    if "scale" in given or "ratio" in given:
        given = {k: (tuple(v) if k in ("scale", "ratio") and v is not None else v) for k, v in given.items()}
    cfg = cfg.replace(**given)
    return ResolvedRecipe(recipe=recipe, config=cfg, sources=sources, overridden=overridden, not_applied=not_applied)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".en") else text + ".0"
    return repr(value) if isinstance(value, str) else str(value)


def format_recipe(recipe: Recipe | str) -> str:
    """Human-readable listing of a recipe: every value with its source, per-variant drop path, the lr rule."""
    r = get_recipe(recipe) if isinstance(recipe, str) else recipe
    lines = [f"{r.name}: {r.description}", f"  models: {', '.join(r.models)}",
             f"  command: crossformers {r.command} --recipe {r.name}"]
    width = max(len(k) for k in [*r.values, "drop_path_rate[default]", *(f"drop_path_rate[{m}]" for m in r.drop_path)])
    for key in sorted(r.values):
        rv = r.values[key]
        tag = "" if key in {f.name for f in dataclasses.fields(r.config_cls)} else "  (preprocessing)"
        lines.append(f"  {key:<{width}}  {_fmt(rv.value):<24} {rv.source}{tag}")
        if rv.note:
            lines.append(f"  {'':<{width}}  note: {rv.note}")
    for model, rv in r.drop_path.items():
        lines.append(f"  {'drop_path_rate[' + model + ']':<{width}}  {_fmt(rv.value):<24} {rv.source}")
    if r.drop_path_default is not None:
        rv = r.drop_path_default
        lines.append(f"  {'drop_path_rate[default]':<{width}}  {_fmt(rv.value):<24} {rv.source}")
    if r.lr_scaling is not None:
        sc = r.lr_scaling
        lines.append(f"  lr rule: {', '.join(sc.fields)} x (batch_size x accum_steps) / {sc.base_batch} -- {sc.source}")
    else:
        lines.append("  lr rule: learning rates used as given (for the recipe's global batch_size)")
    lines.extend(f"  not applied: {gap}" for gap in r.gaps)
    return "\n".join(lines)


def print_recipes(name: str | None = None, model: str | None = None) -> int:
    """``crossformers recipes [NAME] [--model MODEL]``: list the recipes, or print one (values and sources) and,
    with ``model``, the options ``train --recipe NAME --model MODEL`` resolves to. Returns the exit code 0.

    Raises:
        ConfigError: unknown recipe; ``model`` without ``name``.
    """
    if name is None:
        if model is not None:
            raise ConfigError("--model needs a recipe name: crossformers recipes NAME --model MODEL")
        width = max(len(n) for n in RECIPES)
        for n in list_recipes():
            r = RECIPES[n]
            print(f"{n:<{width}}  {r.description}\n{'':<{width}}  models: {', '.join(r.models)}  "
                  f"(crossformers {r.command} --recipe {n})")
        return 0
    print(format_recipe(name))
    if model is not None:
        explicit = {"model": model}
        if get_recipe(name).requires_pretrained:
            explicit["pretrained"] = "FILE"
        res = resolve_recipe(name, explicit)
        print(f"\nresolved for --model {model} (other explicit flags would override these):")
        for key in sorted(res.sources):
            print(f"  {key} = {_fmt(getattr(res.config, key))}")
        for line in res.not_applied:
            print(f"  {line}")
    return 0


def markdown_tables(command: str | None = None) -> str:
    """One Markdown table per recipe (option, value, source), as in ``docs/recipes.md``; ``command`` keeps only the
    recipes of that command (``train`` or ``dense train``)."""
    out: list[str] = []
    for name in list_recipes():
        r = RECIPES[name]
        if command is not None and r.command != command:
            continue
        fields = {f.name for f in dataclasses.fields(r.config_cls)}
        out += [f"## `{name}`", "", f"{r.description}. Written for: {', '.join(f'`{m}`' for m in r.models)}. "
                f"Use: `crossformers {r.command} --recipe {name}`.", "",
                "| option | value | source (file:line at the pinned commit) |", "|---|---|---|"]
        for key in sorted(r.values):
            rv = r.values[key]
            label = f"`{key}`" if key in fields else f"`{key}` (preprocessing)"
            note = f" **Note:** {rv.note}" if rv.note else ""
            out.append(f"| {label} | `{_fmt(rv.value)}` | {rv.source}{note} |")
        out += [f"| `drop_path_rate` for `{m}` | `{_fmt(rv.value)}` | {rv.source} |" for m, rv in r.drop_path.items()]
        if r.drop_path_default is not None:
            out.append(f"| `drop_path_rate`, other models | `{_fmt(r.drop_path_default.value)}` | "
                       f"{r.drop_path_default.source} |")
        if r.lr_scaling is not None:
            sc = r.lr_scaling
            out.append(f"| lr rule | `{', '.join(sc.fields)}` x (`batch_size` x `accum_steps`) / {sc.base_batch} | "
                       f"{sc.source} |")
        else:
            out.append("| lr rule | learning rates used as given (for the global batch above) | the authors' scripts "
                       "/ configs set them for that batch |")
        if r.gaps:
            out += ["", "Not reproduced by any option here:", "", *(f"- {gap}" for gap in r.gaps)]
        out.append("")
    return "\n".join(out)
