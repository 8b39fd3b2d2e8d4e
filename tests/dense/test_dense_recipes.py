"""The papers' detection / segmentation recipes (`dense train --recipe NAME`): resolved values equal the ones in the
authors' mmdet / mmseg configs, copied here by hand from cheerss/CrossFormer@7952010 and hkzhang-git/FcaFormer@7dcd8e0
(file:line next to each); `iters` becomes whole epochs; recipes stay with their own command."""
from __future__ import annotations

import json
import logging

import pytest

from crossformers.cli import main
from crossformers.dense.recipes import DENSE_RECIPES
from crossformers.dense.train import DenseTrainConfig, dense_train
from crossformers.engine import TrainConfig
from crossformers.engine.errors import ConfigError
from crossformers.engine.recipes import RECIPES, resolve_recipe

from dense_synthetic import TINY_BACKBONE

# CrossFormer detection/configs/crossformer/{mask_rcnn,retinanet}_crossformer_s_fpn_1x_coco.py: AdamW lr 1e-4 wd 1e-4
# (line 20 / 22), step [8, 11] of 12 epochs, warmup 500 iters from 0.001 x lr (24-29 / 26-31); coco_instance.py:8-9
# (1333 x 800, flip 0.5), :31 2 images x 8 GPUs (detection/README.md:95: batch 16)
CF_1X = dict(epochs=12, batch_size=16, accum_steps=1, lr=1e-4, weight_decay=1e-4, sched="step",
             decay_milestones=[8 / 12, 11 / 12], decay_rate=0.1, warmup_steps=500, warmup_lr=1e-4 * 0.001,
             clip_grad=None, img_size=800, max_size=1333, hflip=0.5, fpn_channels=256, amp=False, ema_decay=0.0,
             layer_decay=None, iters=None, train_scales=[])
# detection/crossformer_factory.py:31, 56, 82; segmentation/crossformer_factory.py adds CrossFormer_L (line 132)
CF_DET_DROP = {"crossformer_small_dense": 0.2, "crossformer_pp_small_dense": 0.2, "crossformer_base_dense": 0.3}
CF_SEG_DROP = {**CF_DET_DROP, "crossformer_large_dense": 0.5}
# segmentation/configs/crossformer/upernet_crossformer_s_ade20k.py:19-26 (AdamW 6e-5, wd 0.01, poly 1.0 to 0, warmup
# 1500 from 1e-6 x lr), schedule_160k.py:7, ade20k_swin.py:6, 9, 12, 35 (crop 512, reduce_zero_label, flip, 2 x 8 GPUs)
CF_UPERNET = dict(task="semantic-segmentation", head="upernet", iters=160000, batch_size=16, lr=6e-5, weight_decay=0.01,
                  sched="poly", poly_power=1.0, min_lr=0.0, warmup_steps=1500, warmup_lr=6e-5 * 1e-6, img_size=512,
                  reduce_zero_label=True, hflip=0.5, eval_mode="whole", fpn_channels=512, amp=False, clip_grad=None)
# segmentation/configs/crossformer/fpn_crossformer_s_ade20k_40k.py:18-23 (AdamW 1e-4, wd 1e-4, poly 0.9 to 0, no
# warmup, 80000 iterations), segmentation/README.md:83 (batch 16), fpn_r50.py:20 (FPN 256)
CF_FPN = dict(task="semantic-segmentation", head="fpn", iters=80000, batch_size=16, lr=1e-4, weight_decay=1e-4,
              sched="poly", poly_power=0.9, min_lr=0.0, warmup_steps=0, img_size=512, reduce_zero_label=True,
              eval_mode="whole", fpn_channels=256, amp=False)
# FcaFormer object_detection/configs/fcaformer/mask_rcnn_fcaformer_l2_set1_480-800_adamw_3x_coco_in1k.py: drop path
# 0.2 (12), scales 480..800 step 32 with 1333 (30-32), AdamW 1e-4 wd 0.05 (63), layer decay 0.95 (64), steps [27, 33]
# (68) of 36 epochs (69), fp16 (79); schedule_1x.py:7-9 warmup 500 from 0.001 x lr; coco_instance.py:31 2 x 8 GPUs
FCA_3X = dict(task="instance-segmentation", head="mask_rcnn", epochs=36, batch_size=16, lr=1e-4, weight_decay=0.05,
              layer_decay=0.95, sched="step", decay_milestones=[27 / 36, 33 / 36], decay_rate=0.1, warmup_steps=500,
              warmup_lr=1e-7, train_scales=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800], max_size=1333,
              img_size=800, amp=True, drop_path_rate=0.2, clip_grad=None, model="fcaformer_sh_l2")
# semantic-segmentation/configs/fcaformer/upernet_fcaformer_l2_160k_ade20k_ms.py: drop path 0.1 (14), slide 512 stride
# 341 (27), AdamW 1e-4 wd 0.01 (31), layer decay 0.9 (32), poly 1.0 to 0 with warmup 1500 from 1e-6 x lr (36-40),
# 2 x 8 GPUs (42-43), fp16 (55); schedule_160k.py:7
FCA_UPERNET = dict(task="semantic-segmentation", head="upernet", iters=160000, batch_size=16, lr=1e-4,
                   weight_decay=0.01, layer_decay=0.9, sched="poly", poly_power=1.0, min_lr=0.0, warmup_steps=1500,
                   warmup_lr=1e-10, img_size=512, reduce_zero_label=True, eval_mode="slide", slide_stride=341,
                   fpn_channels=512, amp=True, drop_path_rate=0.1, model="fcaformer_sh_l2")

CASES = (
    [("crossformer_mask_rcnn_1x", m, {**CF_1X, "task": "instance-segmentation", "head": "mask_rcnn",
                                      "rois_per_image": 512, "head_width": None, "drop_path_rate": d})
     for m, d in CF_DET_DROP.items()]
    + [("crossformer_retinanet_1x", m, {**CF_1X, "task": "detection", "head": "retinanet", "drop_path_rate": d})
       for m, d in CF_DET_DROP.items()]
    + [("crossformer_upernet_160k", m, {**CF_UPERNET, "drop_path_rate": d}) for m, d in CF_SEG_DROP.items()]
    + [("crossformer_semantic_fpn_80k", m, {**CF_FPN, "drop_path_rate": d}) for m, d in CF_SEG_DROP.items()]
    + [("fcaformer_mask_rcnn_3x", "fcaformer_sh_l2", FCA_3X), ("fcaformer_upernet_160k", "fcaformer_sh_l2", FCA_UPERNET)]
)


@pytest.mark.parametrize(("recipe", "model", "expected"), CASES, ids=[f"{r}-{m}" for r, m, _ in CASES])
def test_dense_recipe_equals_authors_configs(recipe, model, expected):
    res = resolve_recipe(recipe, {"model": model}, config_cls=DenseTrainConfig)
    cfg = res.config
    assert isinstance(cfg, DenseTrainConfig) and cfg.model == model
    for key, want in expected.items():
        got = getattr(cfg, key)
        assert got == (pytest.approx(want, rel=1e-12, abs=0) if isinstance(want, (float, list)) else want), key
    cfg.replace(data="data/coco").validate()  # every recipe is a valid set of options


def test_dense_recipes_are_registered_and_name_their_command():
    assert set(DENSE_RECIPES) <= set(RECIPES)
    assert all(r.command == "dense train" and r.config_cls is DenseTrainConfig for r in DENSE_RECIPES.values())
    assert resolve_recipe("crossformer_mask_rcnn_1x").config.model == "crossformer_small_dense"
    assert not any("cascade" in name for name in DENSE_RECIPES)  # documented as absent instead
    assert "Cascade Mask R-CNN" in " ".join(DENSE_RECIPES["fcaformer_mask_rcnn_3x"].gaps)


def test_each_command_refuses_the_other_commands_recipes(capsys):
    with pytest.raises(ConfigError, match=r"recipe crossformer_upernet_160k is for `crossformers dense train`"):
        resolve_recipe("crossformer_upernet_160k", {}, config_cls=TrainConfig)
    assert main(["train", "--recipe", "crossformer_mask_rcnn_1x", "--output", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: recipe crossformer_mask_rcnn_1x is for `crossformers dense train`") and \
        err.count("\n") == 1
    assert main(["dense", "train", "--recipe", "fcaformer_imagenet", "--output", "unused"]) == 2
    assert capsys.readouterr().err.startswith("error: recipe fcaformer_imagenet is for `crossformers train`")


def test_gaps_and_layer_decay_note_are_reported():
    lines = resolve_recipe("fcaformer_upernet_160k").not_applied
    assert any(line.startswith("note: layer_decay=0.9") for line in lines)
    assert sum(line.startswith("not applied: ") for line in lines) == len(DENSE_RECIPES["fcaformer_upernet_160k"].gaps)
    assert any("auxiliary FCN head" in line for line in lines)


def test_flags_override_a_dense_recipe_and_gaps_are_logged(coco_root, tmp_path, caplog):
    """`dense train --recipe` with flags: the flags win, the rest is the recipe's; a tiny run trains with it, and
    `iters` becomes whole epochs of the data at hand (2 images, batch 2: 1 step per epoch -> 3 epochs)."""
    run = tmp_path / "run"
    args = ["dense", "train", "--recipe", "crossformer_retinanet_1x", "--model", "crossformer_tiny", "--model-kwargs",
            json.dumps(TINY_BACKBONE), "--data", str(coco_root), "--img-size", "64", "--max-size", "64",
            "--batch-size", "2", "--limit-train", "2", "--fpn-channels", "32", "--warmup-steps", "1", "--iters", "3",
            "--device", "cpu", "--output", str(run), "--no-progress"]
    with caplog.at_level(logging.INFO, logger="crossformers.train"):
        assert main(args) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["head"] == "retinanet" and saved["sched"] == "step" and saved["weight_decay"] == 1e-4  # recipe
    assert saved["batch_size"] == 2 and saved["iters"] == 3 and saved["epochs"] == 3  # flags; iters -> epochs
    assert saved["drop_path_rate"] == 0.2  # not a variant of the recipe: the authors' default (CrossFormer_S), noted
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3
    assert any("not a variant this recipe was written for" in r.getMessage() for r in caplog.records)


def test_iters_rounds_to_whole_epochs(seg_root, tmp_path):
    """5 iterations at 2 steps per epoch (4 images, batch 2): round(2.5) = 2 epochs, 4 steps; the saved options
    carry the epochs chosen, so a resume plans the same."""
    out = tmp_path / "r"
    cfg = DenseTrainConfig(task="semantic-segmentation", model="crossformer_tiny", model_kwargs=dict(TINY_BACKBONE),
                           data=str(seg_root), output=str(out), epochs=10, iters=5, batch_size=2, img_size=64,
                           lr=1e-4, warmup_steps=0, device="cpu", log_interval=1, fpn_channels=32)
    result = dense_train(cfg, progress=False)
    assert result["step"] == 4 and result["epoch"] == 2
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    with pytest.raises(ConfigError, match="iters must be an int >= 1"):
        cfg.replace(iters=0).validate()
