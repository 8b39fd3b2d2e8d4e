"""The papers' recipes (`train --recipe NAME`): resolved values equal the ones in the authors' files, copied here by
hand from cheerss/CrossFormer@7952010, IBM/CrossViT@3f7ab77 and hkzhang-git/FcaFormer@7dcd8e0 (file:line next to
each); only flags the user typed override a recipe."""
from __future__ import annotations

import re

import pytest

from crossformers import cli
from crossformers.engine import ConfigError, TrainConfig
from crossformers.engine.recipes import RECIPES, format_recipe, list_recipes, resolve_recipe

# ---- values copied from the authors' files ----------------------------------------------------------------------
# CrossFormer main.py:62-67 (argparse defaults copied into the config by config.py:253-259), config.py:59-158,
# README.md:79-80 (8 GPUs x --batch-size 128); lr/warmup_lr/min_lr scaled by batch/512 (main.py:364-366)
CROSSFORMER = dict(
    epochs=300, batch_size=8 * 128, accum_steps=1,
    lr=5e-4 * 1024 / 512.0, warmup_lr=5e-7 * 1024 / 512.0, min_lr=5e-6 * 1024 / 512.0,
    warmup_epochs=20, weight_decay=5e-2, clip_grad=5.0, label_smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1",
    color_jitter=0.4, re_prob=0.25, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, ema_decay=0.0,
    amp=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, aug_repeats=0,  # DistributedSampler: data/build.py:30
)
CROSSFORMER_DROP_PATH = {  # configs/crossformer/*_patch4_group7_224.yaml:4
    "crossformer_tiny": 0.1, "crossformer_small": 0.2, "crossformer_base": 0.3, "crossformer_large": 0.5}
CROSSFORMER_PP_DROP_PATH = {  # configs/crossformer_pp/*_patch4_group_const_224.yaml:4
    "crossformer_pp_small": 0.2, "crossformer_pp_base": 0.3, "crossformer_pp_large": 0.5, "crossformer_pp_huge": 0.5}
# CrossViT main.py:42-131 (DeiT defaults), README.md:66 (8 GPUs x --batch-size 256); only lr scaled (main.py:245);
# repeated augmentation on by default (main.py:107-109) with 3 copies per image (samplers.py:50)
CROSSVIT = dict(
    epochs=300, batch_size=8 * 256, accum_steps=1, lr=5e-4 * 2048 / 512.0, warmup_lr=1e-6, min_lr=1e-5,
    warmup_epochs=5, weight_decay=0.05, clip_grad=None, label_smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1",
    color_jitter=0.4, re_prob=0.25, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, ema_decay=0.0,
    amp=True, drop_path_rate=0.1, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, aug_repeats=3,
)
# FcaFormer image_classification/scripts/fca_l{1..4}.sh:1 (8 GPUs x --batch_size 128, --lr 2e-3, --model_ema true)
# and main.py:54-133 defaults; warmup from 0 (utils.py:429); lr not scaled
FCAFORMER = dict(
    epochs=300, batch_size=8 * 128, accum_steps=1, lr=2e-3, warmup_lr=0.0, min_lr=1e-6, warmup_epochs=20,
    weight_decay=0.05, layer_decay=None, clip_grad=None, label_smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1",
    color_jitter=0.4, re_prob=0.25, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, ema_decay=0.9999,
    amp=False, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, aug_repeats=0,  # main.py:226 DistributedSampler
)
FCAFORMER_DROP_PATH = {"fcaformer_l1": 0.0, "fcaformer_l2": 0.1, "fcaformer_l3": 0.2, "fcaformer_l4": 0.4}

CASES = (
    [("crossformer_imagenet", m, {**CROSSFORMER, "drop_path_rate": d}) for m, d in CROSSFORMER_DROP_PATH.items()]
    + [("crossformer_pp_imagenet", m, {**CROSSFORMER, "drop_path_rate": d}) for m, d in CROSSFORMER_PP_DROP_PATH.items()]
    + [("crossvit_imagenet", m, CROSSVIT) for m in ("crossvit_9_dagger_240", "crossvit_15_240", "crossvit_18_dagger_240")]
    + [("fcaformer_imagenet", m, {**FCAFORMER, "drop_path_rate": d}) for m, d in FCAFORMER_DROP_PATH.items()]
)


def _check(cfg: TrainConfig, expected: dict) -> None:
    for key, want in expected.items():
        got = getattr(cfg, key)
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-12, abs=0), key
        elif isinstance(want, tuple):
            assert got == pytest.approx(want), key
        else:
            assert got == want, key


@pytest.mark.parametrize(("recipe", "model", "expected"), CASES, ids=[f"{r}-{m}" for r, m, _ in CASES])
def test_recipe_equals_authors_files(recipe, model, expected):
    res = resolve_recipe(recipe, {"model": model})
    assert res.config.model == model
    _check(res.config, expected)
    assert res.config.img_size is None  # the model's default size is the recipe's (224 / 240)
    res.config.replace(data="fashion-mnist").validate()


def test_recipe_default_models_are_the_readme_ones():
    assert resolve_recipe("crossformer_imagenet").config.model == "crossformer_tiny"  # README.md:79
    assert resolve_recipe("crossformer_pp_imagenet").config.model == "crossformer_pp_small"  # README.md:95
    assert resolve_recipe("crossvit_imagenet").config.model == "crossvit_9_dagger_240"  # README.md:66 (*_224 there)
    assert resolve_recipe("fcaformer_imagenet").config.model == "fcaformer_l1"  # scripts/fca_l1.sh


def test_crossvit_recipe_applies_its_per_epoch_schedule():
    res = resolve_recipe("crossvit_imagenet", {"model": "crossvit_15_240"})
    assert res.config.lr_schedule_unit == "epoch"  # main.py:317 lr_scheduler.step(epoch)
    assert res.sources["lr_schedule_unit"].startswith("IBM/CrossViT@3f7ab77:main.py:317")
    # crop 0.875 and bicubic are also crossvit_15_240's pretrained_cfg: applied, so nothing is reported
    assert res.not_applied == []
    assert resolve_recipe("crossformer_imagenet").config.lr_schedule_unit == "step"
    assert resolve_recipe("fcaformer_imagenet", {"model": "fcaformer_l2"}).not_applied == []
    assert resolve_recipe("crossformer_imagenet", {"model": "crossformer_base"}).not_applied == []


def test_finetune_recipe_needs_pretrained_and_reports_its_gaps():
    with pytest.raises(ConfigError, match="fine-tunes a trained model: pass --pretrained FILE"):
        resolve_recipe("crossvit_dagger_408_finetune")
    res = resolve_recipe("crossvit_dagger_408_finetune", {"model": "crossvit_18_dagger_408", "pretrained": "x.pth"})
    # models/crossvit.py:420 img_size=[408, 384] = our *_408 default size; engine.py:28-29 model.train(False)
    assert res.config.img_size is None and res.config.drop_path_rate == 0.0 and res.config.pretrained == "x.pth"
    assert res.config.lr == pytest.approx(5e-4 * 2048 / 512.0)
    text = "\n".join(res.not_applied)
    # timm's 408 cfg crops 1.0, the authors' main.py:110 0.875: the recipe sets it
    assert res.config.crop_pct == 0.875 and res.sources["crop_pct"].startswith("IBM/CrossViT@3f7ab77:main.py:110")
    assert "not applied" not in text
    assert res.config.finetune_eval_mode is True and "finetune_eval_mode" not in text  # engine.py:28-29, applied
    assert "note: epochs=300: the authors' code and README give no fine-tuning schedule" in text
    # the notes disappear for values the user sets
    res = resolve_recipe("crossvit_dagger_408_finetune", {"pretrained": "x.pth", "epochs": 30, "lr": 5e-6,
                                                          "warmup_epochs": 0})
    assert "note:" not in "\n".join(res.not_applied) and res.config.lr == 5e-6


def test_explicit_options_override_and_lr_rule_uses_the_resolved_batch():
    res = resolve_recipe("crossformer_imagenet", {"model": "crossformer_small", "batch_size": 256, "accum_steps": 2})
    assert res.config.lr == pytest.approx(5e-4 * 512 / 512.0)  # main.py:364-371: batch x accumulation / 512
    assert res.config.min_lr == pytest.approx(5e-6)
    res = resolve_recipe("crossformer_imagenet", {"model": "crossformer_small", "lr": 3e-3, "drop_path_rate": 0.0})
    assert res.config.lr == 3e-3 and res.config.drop_path_rate == 0.0 and res.config.warmup_lr == pytest.approx(1e-6)
    assert res.overridden == ["drop_path_rate", "lr"]
    assert "lr" not in res.sources and "warmup_lr" in res.sources


def test_unknown_model_uses_code_default_and_says_so():
    res = resolve_recipe("crossformer_imagenet", {"model": "fcaformer_l2"})
    assert res.config.drop_path_rate == 0.1  # config.py:59
    assert any(ln.startswith("note: model fcaformer_l2 is not a variant") for ln in res.not_applied)


def test_every_value_cites_file_and_line():
    pattern = re.compile(r"^(cheerss/CrossFormer@7952010|IBM/CrossViT@3f7ab77|hkzhang-git/FcaFormer@7dcd8e0):"
                         r"[\w./-]+\.(py|yaml|md|sh):\d+(-\d+)? \(.+\)$")
    for recipe in RECIPES.values():
        values = [*recipe.values.values(), *recipe.drop_path.values(), recipe.drop_path_default]
        for rv in values:
            assert pattern.match(rv.source), (recipe.name, rv.source)
        if recipe.lr_scaling is not None:
            assert pattern.match(recipe.lr_scaling.source), recipe.name


def test_unknown_recipe_error():
    with pytest.raises(ConfigError, match=r"unknown recipe 'crossformer_imagnet' \(did you mean crossformer_imagenet"):
        resolve_recipe("crossformer_imagnet")


# ---- command line -----------------------------------------------------------------------------------------------
def _cfg(argv: list[str]) -> TrainConfig:
    args = cli.build_parser().parse_args(["train", *argv])
    return cli.train_config_from_args(args)


def test_cli_only_typed_flags_override_a_recipe():
    cfg = _cfg(["--recipe", "crossformer_imagenet", "--model", "crossformer_large", "--data", "/data/imagenet",
                "--output", "runs/cf-l"])
    _check(cfg, {**CROSSFORMER, "drop_path_rate": 0.5})  # TrainConfig/argparse defaults (epochs 10, ...) did not win
    assert (cfg.data, cfg.output) == ("/data/imagenet", "runs/cf-l")
    cfg = _cfg(["--recipe", "crossformer_imagenet", "--model", "crossformer_large", "--epochs", "5", "--no-amp",
                "--batch-size", "512", "--clip-grad", "none"])
    assert (cfg.epochs, cfg.amp, cfg.batch_size, cfg.clip_grad) == (5, False, 512, None)
    assert cfg.lr == pytest.approx(5e-4) and cfg.drop_path_rate == 0.5 and cfg.warmup_epochs == 20


def test_cli_recipes_list_and_show(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in list_recipes():
        assert name in out
    assert cli.main(["recipes", "fcaformer_imagenet", "--model", "fcaformer_l3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(format_recipe("fcaformer_imagenet"))
    assert "hkzhang-git/FcaFormer@7dcd8e0:image_classification/scripts/fca_l3.sh:1 (--drop_path 0.2)" in out
    assert "  drop_path_rate = 0.2\n" in out and "  lr = 0.002\n" in out


def test_cli_bad_recipe_is_one_error_line(capsys):
    assert cli.main(["recipes", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown recipe 'nope': run `crossformers recipes` to list them\n"
    assert cli.main(["train", "--recipe", "crossvit_imagenet", "--resume", "runs/x"]) == 2
    assert capsys.readouterr().err.startswith("error: --recipe cannot be combined with --resume")


def test_docs_tables_are_the_recipe_table():
    from pathlib import Path

    from crossformers.engine.recipes import markdown_tables

    text = (Path(__file__).resolve().parents[2] / "docs" / "recipes.md").read_text()
    # the ImageNet tables, then (crossformers.cli registered them) the dense recipes' tables at the end
    assert markdown_tables("train") in text and text.endswith(markdown_tables("dense train"))
    for recipe in RECIPES.values():
        for rv in [*recipe.values.values(), *recipe.drop_path.values(), recipe.drop_path_default]:
            assert rv.source in text, (recipe.name, rv.source)


def test_repeated_augmentation_trains_and_resumes_bit_identically(tiny_config):
    """CrossViT's repeated augmentation (--aug-repeats 3): a run stopped mid-epoch and resumed ends with the same
    weights as an uninterrupted one."""
    import json

    import torch
    from safetensors.torch import load_file

    from crossformers.engine import train

    opts = dict(epochs=2, limit_train=96, batch_size=16, aug_repeats=3, drop_path_rate=0.1, re_prob=0.25,
                warmup_steps=2)
    straight = tiny_config("straight", **opts)
    result = train(straight, progress=False)
    assert result["step"] == 2 * 96 // 16  # the epoch length is unchanged by the repeats
    interrupted = tiny_config("interrupted", max_steps=3, **opts)
    train(interrupted, progress=False)
    train(interrupted.replace(max_steps=None, resume=interrupted.output), progress=False)
    a = load_file(f"{straight.output}/last/model.safetensors")
    b = load_file(f"{interrupted.output}/last/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads(open(f"{interrupted.output}/last/meta.json").read())
    assert meta["config"]["aug_repeats"] == 3
