"""The papers' detection and segmentation configurations as recipes: ``crossformers dense train --recipe NAME``.

Each recipe holds the values of the authors' own mmdetection / mmsegmentation configs, every one with its file and
line at a fixed commit (``cheerss/CrossFormer`` 7952010, ``hkzhang-git/FcaFormer`` 7dcd8e0), in
:class:`~crossformers.dense.DenseTrainConfig` units, and is resolved like the ImageNet recipes
(:func:`crossformers.engine.recipes.resolve_recipe`: defaults < recipe < ``--config`` < flags; per-variant drop path):

================================  ==========================================================================
``crossformer_mask_rcnn_1x``      CrossFormer(++) Mask R-CNN, COCO 1x: 12 epochs, AdamW 1e-4, steps at 8 / 11
``crossformer_retinanet_1x``      CrossFormer(++) RetinaNet, COCO 1x
``crossformer_upernet_160k``      CrossFormer(++) UPerNet, ADE20K 160k iterations, 512 crops, AdamW 6e-5, poly
``crossformer_semantic_fpn_80k``  CrossFormer(++) Semantic FPN, ADE20K 80k iterations, AdamW 1e-4, poly 0.9
``fcaformer_mask_rcnn_3x``        FcaFormer-L2 Mask R-CNN, COCO 3x multi-scale (480-800), AdamW 1e-4, layer decay
``fcaformer_upernet_160k``        FcaFormer-L2 UPerNet, ADE20K 160k iterations, sliding-window evaluation
================================  ==========================================================================

mmdet / mmseg count the warm-up start as a ratio of the learning rate (``warmup_ratio``); here it is the absolute
``warmup_lr`` that ratio gives for the recipe's ``lr`` (an explicit ``--lr`` leaves it as it is). Iteration
schedules use ``iters`` (rounded to whole epochs of the data at hand). Cascade Mask R-CNN (FcaFormer paper,
Table 3) has no recipe: torchvision has no cascade RoI head, and :mod:`crossformers.detection` builds none.
What no option reproduces is listed in each recipe's ``gaps`` and printed when it is used.
"""
from __future__ import annotations

from ..engine.recipes import Recipe, RecipeValue, register_recipe
from .train import DenseTrainConfig

__all__ = ["DENSE_RECIPES"]

_CF = "cheerss/CrossFormer@7952010"
_FCA = "hkzhang-git/FcaFormer@7dcd8e0"

_CF_DET = "detection/configs/crossformer/mask_rcnn_crossformer_s_fpn_1x_coco.py"
_CF_RET = "detection/configs/crossformer/retinanet_crossformer_s_fpn_1x_coco.py"
_CF_COCO = "detection/configs/_base_/datasets/coco_instance.py"
_CF_UPER = "segmentation/configs/crossformer/upernet_crossformer_s_ade20k.py"
_CF_FPN = "segmentation/configs/crossformer/fpn_crossformer_s_ade20k_40k.py"
_FCA_DET = "object_detection/configs/fcaformer/mask_rcnn_fcaformer_l2_set1_480-800_adamw_3x_coco_in1k.py"
_FCA_SEG = "semantic-segmentation/configs/fcaformer/upernet_fcaformer_l2_160k_ade20k_ms.py"


def _v(value, repo: str, where: str, what: str, note: str = "") -> RecipeValue:
    return RecipeValue(value, f"{repo}:{where} ({what})", note)


def _warmup(lr: float, ratio: float, steps: int, repo: str, where: str) -> dict[str, RecipeValue]:
    """mmcv's linear warm-up: ``steps`` iterations from ``ratio * lr``."""
    return {"warmup_steps": _v(steps, repo, where, f"warmup='linear', warmup_iters={steps}"),
            "warmup_lr": _v(lr * ratio, repo, where, f"warmup_ratio={ratio:g} x lr {lr:g}")}


_NO_EMA_NO_CLIP = "no EMA hook, grad_clip=None"


# ------------------------------------------------------------------------------------------------ CrossFormer(++)
def _cf_drop_path(seg: bool) -> dict[str, RecipeValue]:
    """The rates the authors' backbone classes set (``crossformer_factory.py`` of detection/ and segmentation/)."""
    f = f"{'segmentation' if seg else 'detection'}/crossformer_factory.py"
    rates = {"crossformer_small_dense": (31, "CrossFormer_S", 0.2), "crossformer_pp_small_dense": (56, "CrossFormer_S2", 0.2),
             "crossformer_base_dense": (82, "CrossFormer_B", 0.3)}
    if seg:
        rates["crossformer_large_dense"] = (132, "CrossFormer_L", 0.5)
    return {m: _v(r, _CF, f"{f}:{line}", f"{cls}: drop_path_rate={r}") for m, (line, cls, r) in rates.items()}


def _cf_detection(head: str) -> Recipe:
    cfg = _CF_DET if head == "mask_rcnn" else _CF_RET
    at = {"lr": 20, "clip": 21, "policy": "24-28", "epochs": 29} if head == "mask_rcnn" else \
        {"lr": 22, "clip": 23, "policy": "26-30", "epochs": 31}
    values = {
        "task": _v("instance-segmentation" if head == "mask_rcnn" else "detection", _CF, f"{_CF_COCO}:48",
                   "evaluation metric bbox + segm" if head == "mask_rcnn" else
                   "coco_detection.py:48: metric='bbox'"),
        "head": _v(head, _CF, f"{cfg}:2", f"_base_ models/{head}_r50_fpn.py"),
        "model": _v("crossformer_small_dense", _CF, f"{cfg}:9", "backbone type='CrossFormer_S' (group size 7, "
                    "interval [8, 4, 2, 1], lines 10-12: our dense backbones' defaults)"),
        "epochs": _v(12, _CF, f"{cfg}:{at['epochs']}", "EpochBasedRunner, max_epochs=12"),
        "batch_size": _v(16, _CF, "detection/README.md:95", "batch size 16 on 8 GPUs (coco_instance.py:31: "
                         "samples_per_gpu=2)"),
        "accum_steps": _v(1, _CF, f"{cfg}:{at['clip']}", "optimizer_config: no accumulation"),
        "lr": _v(1e-4, _CF, f"{cfg}:{at['lr']}", "AdamW lr=0.0001"),
        "weight_decay": _v(1e-4, _CF, f"{cfg}:{at['lr']}", "weight_decay=0.0001"),
        "sched": _v("step", _CF, f"{cfg}:{at['policy']}", "policy='step'"),
        "decay_milestones": _v([8 / 12, 11 / 12], _CF, f"{cfg}:{at['policy']}", "step=[8, 11] of 12 epochs"),
        "decay_rate": _v(0.1, _CF, f"{cfg}:{at['policy']}", "no gamma given: mmcv StepLrUpdaterHook's 0.1"),
        **_warmup(1e-4, 1e-3, 500, _CF, f"{cfg}:{at['policy']}"),
        "clip_grad": _v(None, _CF, f"{cfg}:{at['clip']}", "grad_clip=None"),
        "img_size": _v(800, _CF, f"{_CF_COCO}:8", "Resize img_scale=(1333, 800), keep_ratio (test: line 19)"),
        "max_size": _v(1333, _CF, f"{_CF_COCO}:8", "img_scale=(1333, 800)"),
        "hflip": _v(0.5, _CF, f"{_CF_COCO}:9", "RandomFlip flip_ratio=0.5"),
        "fpn_channels": _v(256, _CF, f"{cfg}:17", "FPN out_channels=256"),
        "detections_per_img": _v(100, _CF, f"detection/configs/_base_/models/{head}_r50_fpn.py:"
                                 f"{119 if head == 'mask_rcnn' else 60}", "test_cfg max_per_img=100"),
        "amp": _v(False, _CF, f"{cfg}:1-30" if head == "mask_rcnn" else f"{cfg}:1-32", "no fp16 setting: fp32"),
        "ema_decay": _v(0.0, _CF, f"{cfg}:{at['clip']}", _NO_EMA_NO_CLIP),
        "layer_decay": _v(None, _CF, f"{cfg}:{at['lr']}", "no paramwise_cfg / layer decay"),
    }
    gaps = ["mmdet decays every parameter (no paramwise_cfg, " f"{_CF}:{cfg}:{at['lr']}); our AdamW exempts 1-D "
            "parameters (norms, biases) from weight decay",
            f"ImageNet-1k classification checkpoint for --pretrained ({_CF}:{cfg}:13 init_cfg Pretrained): give "
            "the authors' backbone-crossformer-*.pth or one of our runs"]
    if head == "mask_rcnn":
        values["rois_per_image"] = _v(512, _CF, "detection/configs/_base_/models/mask_rcnn_r50_fpn.py:103",
                                      "rcnn sampler num=512")
        values["head_width"] = _v(None, _CF, "detection/configs/_base_/models/mask_rcnn_r50_fpn.py:45",
                                  "fc_out_channels=1024; line 65 mask conv_out_channels=256: torchvision's widths")
    name = "Mask R-CNN" if head == "mask_rcnn" else "RetinaNet"
    return Recipe(
        name=f"crossformer_{head}_1x",
        description=f"CrossFormer(++) {name} on COCO, 1x schedule (12 epochs, AdamW, lr steps at epochs 8 and 11): "
        "the authors' mmdetection config",
        models=tuple(_cf_drop_path(False)), values=values, drop_path=_cf_drop_path(False),
        drop_path_default=_v(0.2, _CF, "detection/crossformer_factory.py:31", "CrossFormer_S: 0.2"),
        lr_scaling=None, config_cls=DenseTrainConfig, command="dense train", gaps=tuple(gaps))


def _cf_upernet() -> Recipe:
    ds = "segmentation/configs/_base_/datasets/ade20k_swin.py"
    model = "segmentation/configs/_base_/models/upernet_crossformer.py"
    values = {
        "task": _v("semantic-segmentation", _CF, f"{_CF_UPER}:3", "_base_ datasets/ade20k_swin.py"),
        "head": _v("upernet", _CF, f"{model}:9", "decode_head type='UPerHead'"),
        "model": _v("crossformer_small_dense", _CF, f"{_CF_UPER}:9", "CrossFormer_S, group size 7, interval "
                    "[8, 4, 2, 1]"),
        "iters": _v(160000, _CF, "segmentation/configs/_base_/schedules/schedule_160k.py:7", "IterBasedRunner, "
                    "max_iters=160000"),
        "batch_size": _v(16, _CF, f"{ds}:35", "samples_per_gpu=2 on 8 GPUs (segmentation/README.md:39-40)"),
        "accum_steps": _v(1, _CF, "segmentation/configs/_base_/schedules/schedule_160k.py:3", "optimizer_config "
                          "= dict(): no accumulation, no clipping"),
        "lr": _v(6e-5, _CF, f"{_CF_UPER}:19", "AdamW lr=0.00006, betas=(0.9, 0.999): torch's defaults"),
        "weight_decay": _v(0.01, _CF, f"{_CF_UPER}:19", "weight_decay=0.01"),
        "sched": _v("poly", _CF, f"{_CF_UPER}:22", "policy='poly'"),
        "poly_power": _v(1.0, _CF, f"{_CF_UPER}:26", "power=1.0"),
        "min_lr": _v(0.0, _CF, f"{_CF_UPER}:26", "min_lr=0.0"),
        **_warmup(6e-5, 1e-6, 1500, _CF, f"{_CF_UPER}:23-25"),
        "clip_grad": _v(None, _CF, "segmentation/configs/_base_/schedules/schedule_160k.py:3", "no grad_clip"),
        "img_size": _v(512, _CF, f"{ds}:6", "crop_size=(512, 512); Resize img_scale=(2048, 512), ratio 0.5-2.0 "
                       "(line 10) = our random shorter side 256-1024"),
        "reduce_zero_label": _v(True, _CF, f"{ds}:9", "LoadAnnotations reduce_zero_label=True"),
        "hflip": _v(0.5, _CF, f"{ds}:12", "RandomFlip prob=0.5"),
        "eval_mode": _v("whole", _CF, f"{model}:35", "test_cfg mode='whole'"),
        "fpn_channels": _v(512, _CF, f"{model}:13", "UPerHead channels=512"),
        "amp": _v(False, _CF, f"{_CF_UPER}:1-27", "no fp16 setting: fp32"),
        "ema_decay": _v(0.0, _CF, f"{_CF_UPER}:1-27", "no EMA hook"),
        "layer_decay": _v(None, _CF, f"{_CF_UPER}:20", "paramwise_cfg: only decay_mult=0 for 'norm' keys"),
    }
    gaps = (f"the auxiliary FCN head on stage 3 (loss weight 0.4, {_CF}:{model}:20-32): our UPerNet trains the "
            "decode head only",
            f"PhotoMetricDistortion and RandomCrop's cat_max_ratio=0.75 ({_CF}:{ds}:11, 13)",
            f"multi-scale test ratios 0.5-1.75 ({_CF}:{ds}:24, left uncommented in the authors' file): evaluation "
            "here is single-scale",
            f"weight decay on biases: mmseg exempts only 'norm' parameters ({_CF}:{_CF_UPER}:20); our AdamW "
            "exempts every 1-D parameter")
    return Recipe(
        name="crossformer_upernet_160k",
        description="CrossFormer(++) UPerNet on ADE20K, 160k iterations of 16 512x512 crops, AdamW 6e-5, poly: the "
        "authors' mmsegmentation config",
        models=tuple(_cf_drop_path(True)), values=values, drop_path=_cf_drop_path(True),
        drop_path_default=_v(0.2, _CF, "segmentation/crossformer_factory.py:31", "CrossFormer_S: 0.2"),
        lr_scaling=None, config_cls=DenseTrainConfig, command="dense train", gaps=gaps)


def _cf_semantic_fpn() -> Recipe:
    ds = "segmentation/configs/_base_/datasets/ade20k.py"
    model = "segmentation/configs/_base_/models/fpn_r50.py"
    values = {
        "task": _v("semantic-segmentation", _CF, f"{_CF_FPN}:3", "_base_ datasets/ade20k.py"),
        "head": _v("fpn", _CF, f"{_CF_FPN}:2", "_base_ models/fpn_r50.py (FPN neck + FPNHead)"),
        "model": _v("crossformer_small_dense", _CF, f"{_CF_FPN}:9", "CrossFormer_S, group size 7, interval "
                    "[8, 4, 2, 1]"),
        "iters": _v(80000, _CF, f"{_CF_FPN}:23", "IterBasedRunner, max_iters=80000 (the file name says 40k)"),
        "batch_size": _v(16, _CF, "segmentation/README.md:83", "Semantic FPN: 80K iterations with batch size 16"),
        "accum_steps": _v(1, _CF, f"{_CF_FPN}:19", "optimizer_config = dict(): no accumulation, no clipping"),
        "lr": _v(1e-4, _CF, f"{_CF_FPN}:18", "AdamW lr=0.0001"),
        "weight_decay": _v(1e-4, _CF, f"{_CF_FPN}:18", "weight_decay=0.0001"),
        "sched": _v("poly", _CF, f"{_CF_FPN}:21", "policy='poly'"),
        "poly_power": _v(0.9, _CF, f"{_CF_FPN}:21", "power=0.9"),
        "min_lr": _v(0.0, _CF, f"{_CF_FPN}:21", "min_lr=0.0"),
        "warmup_steps": _v(0, _CF, f"{_CF_FPN}:21", "lr_config without warmup"),
        "clip_grad": _v(None, _CF, f"{_CF_FPN}:19", "no grad_clip"),
        "img_size": _v(512, _CF, f"{ds}:6", "crop_size=(512, 512); Resize (2048, 512), ratio 0.5-2.0 (line 10)"),
        "reduce_zero_label": _v(True, _CF, f"{ds}:9", "LoadAnnotations reduce_zero_label=True"),
        "hflip": _v(0.5, _CF, f"{ds}:12", "RandomFlip prob=0.5"),
        "eval_mode": _v("whole", _CF, f"{model}:36", "test_cfg mode='whole'"),
        "fpn_channels": _v(256, _CF, f"{model}:20", "FPN out_channels=256 (head channels 128, line 27: smp's "
                           "default segmentation_channels)"),
        "amp": _v(False, _CF, f"{_CF_FPN}:1-26", "no fp16 setting: fp32"),
        "ema_decay": _v(0.0, _CF, f"{_CF_FPN}:1-26", "no EMA hook"),
        "layer_decay": _v(None, _CF, f"{_CF_FPN}:18", "no paramwise_cfg / layer decay"),
    }
    gaps = (f"PhotoMetricDistortion and RandomCrop's cat_max_ratio=0.75 ({_CF}:{ds}:11, 13)",
            f"mmseg decays every parameter (no paramwise_cfg, {_CF}:{_CF_FPN}:18); our AdamW exempts 1-D "
            "parameters (norms, biases)")
    return Recipe(
        name="crossformer_semantic_fpn_80k",
        description="CrossFormer(++) Semantic FPN on ADE20K, 80k iterations of 16 512x512 crops, AdamW 1e-4, poly "
        "0.9: the authors' mmsegmentation config",
        models=tuple(_cf_drop_path(True)), values=values, drop_path=_cf_drop_path(True),
        drop_path_default=_v(0.2, _CF, "segmentation/crossformer_factory.py:31", "CrossFormer_S: 0.2"),
        lr_scaling=None, config_cls=DenseTrainConfig, command="dense train", gaps=gaps)


# ------------------------------------------------------------------------------------------------ FcaFormer
_LAYER_DECAY_NOTE = ("the authors group parameters for layer decay their own way ({}); here the rate is applied over "
                     "the backbone's timm group_matcher groups, so the per-layer factors differ")


def _fca_mask_rcnn_3x() -> Recipe:
    coco = "object_detection/configs/_base_/datasets/coco_instance.py"
    sched = "object_detection/configs/_base_/schedules/schedule_1x.py"
    values = {
        "task": _v("instance-segmentation", _FCA, f"{_FCA_DET}:3", "_base_ coco_instance.py (bbox + segm)"),
        "head": _v("mask_rcnn", _FCA, f"{_FCA_DET}:2", "_base_ models/mask_rcnn_fcaformer_fpn.py"),
        "model": _v("fcaformer_sh_l2", _FCA, f"{_FCA_DET}:8-15", "FcaFormer_SH_512 dims 96/192/320/480, depths "
                    "2/2/7/2"),
        "epochs": _v(36, _FCA, f"{_FCA_DET}:69", "max_epochs=36"),
        "batch_size": _v(16, _FCA, f"{coco}:31", "samples_per_gpu=2 on 8 GPUs (object_detection/scripts_det/"
                         "fcaformer:3: dist_train.sh ... 8)"),
        "accum_steps": _v(1, _FCA, f"{_FCA_DET}:75", "update_interval=1"),
        "lr": _v(1e-4, _FCA, f"{_FCA_DET}:63", "AdamW lr=0.0001, betas=(0.9, 0.999)"),
        "weight_decay": _v(0.05, _FCA, f"{_FCA_DET}:63", "weight_decay=0.05"),
        "layer_decay": _v(0.95, _FCA, f"{_FCA_DET}:64-66", "decay_rate 0.95",
                          note=_LAYER_DECAY_NOTE.format("'layer_wise_cab' over num_layers 6")),
        "sched": _v("step", _FCA, f"{sched}:6", "policy='step'"),
        "decay_milestones": _v([27 / 36, 33 / 36], _FCA, f"{_FCA_DET}:68", "step=[27, 33] of 36 epochs"),
        "decay_rate": _v(0.1, _FCA, f"{sched}:5-10", "no gamma given: mmcv StepLrUpdaterHook's 0.1"),
        **_warmup(1e-4, 1e-3, 500, _FCA, f"{sched}:7-9"),
        "clip_grad": _v(None, _FCA, f"{_FCA_DET}:76", "grad_clip=None"),
        "img_size": _v(800, _FCA, f"{coco}:19", "test img_scale=(1333, 800)"),
        "max_size": _v(1333, _FCA, f"{_FCA_DET}:30-32", "(480..800, 1333), keep_ratio"),
        "train_scales": _v(list(range(480, 801, 32)), _FCA, f"{_FCA_DET}:29-34",
                           "Resize img_scale=[(480, 1333), ..., (800, 1333)] step 32, multiscale_mode='value'"),
        "hflip": _v(0.5, _FCA, f"{_FCA_DET}:25", "RandomFlip flip_ratio=0.5"),
        "fpn_channels": _v(256, _FCA, "object_detection/configs/_base_/models/mask_rcnn_fcaformer_fpn.py:18",
                           "FPN out_channels=256"),
        "amp": _v(True, _FCA, f"{_FCA_DET}:69", "EpochBasedRunnerAmp; line 79 use_fp16=True (here bfloat16)"),
        "ema_decay": _v(0.0, _FCA, f"{_FCA_DET}:73-80", "no EMA hook"),
    }
    gaps = (f"the second AutoAugment policy ({_FCA}:{_FCA_DET}:36-53: resize to 400-600, random crop 384-600, "
            "resize to 480-800), which mmdet picks for half of the images: only the first (multi-scale resize) is "
            "applied",
            f"Cascade Mask R-CNN ({_FCA}:object_detection/configs/fcaformer/cascade_mask_rcnn_fcaformer_l2_set1_"
            "480-800_adamw_3x_coco_in1k.py): torchvision has no cascade RoI head; this recipe is the Mask R-CNN one")
    return Recipe(
        name="fcaformer_mask_rcnn_3x",
        description="FcaFormer-L2 Mask R-CNN on COCO, 3x multi-scale (480-800) schedule, AdamW 1e-4, layer decay "
        "0.95: the authors' mmdetection config",
        models=("fcaformer_sh_l2",), values=values,
        drop_path={"fcaformer_sh_l2": _v(0.2, _FCA, f"{_FCA_DET}:12", "drop_path_rate=0.2")},
        drop_path_default=_v(0.2, _FCA, f"{_FCA_DET}:12", "drop_path_rate=0.2"),
        lr_scaling=None, config_cls=DenseTrainConfig, command="dense train", gaps=gaps)


def _fca_upernet() -> Recipe:
    ds = "semantic-segmentation/configs/_base_/datasets/ade20k_local.py"
    values = {
        "task": _v("semantic-segmentation", _FCA, f"{_FCA_SEG}:2", "_base_ datasets/ade20k_local.py"),
        "head": _v("upernet", _FCA, f"{_FCA_SEG}:2", "_base_ models/upernet_convnext.py"),
        "model": _v("fcaformer_sh_l2", _FCA, f"{_FCA_SEG}:9", "FcaFormer_SH_512"),
        "iters": _v(160000, _FCA, "semantic-segmentation/configs/_base_/schedules/schedule_160k.py:7",
                    "max_iters=160000"),
        "batch_size": _v(16, _FCA, f"{_FCA_SEG}:42-43", "8 GPUs with 2 images per GPU"),
        "accum_steps": _v(1, _FCA, f"{_FCA_SEG}:51", "update_interval=1"),
        "lr": _v(1e-4, _FCA, f"{_FCA_SEG}:31", "AdamW lr=0.0001, betas=(0.9, 0.999)"),
        "weight_decay": _v(0.01, _FCA, f"{_FCA_SEG}:31", "weight_decay=0.01"),
        "layer_decay": _v(0.9, _FCA, f"{_FCA_SEG}:32-34", "decay_rate 0.9",
                          note=_LAYER_DECAY_NOTE.format("'stage_wise' over num_layers 6")),
        "sched": _v("poly", _FCA, f"{_FCA_SEG}:36", "policy='poly'"),
        "poly_power": _v(1.0, _FCA, f"{_FCA_SEG}:40", "power=1.0"),
        "min_lr": _v(0.0, _FCA, f"{_FCA_SEG}:40", "min_lr=0.0"),
        **_warmup(1e-4, 1e-6, 1500, _FCA, f"{_FCA_SEG}:37-39"),
        "clip_grad": _v(None, _FCA, f"{_FCA_SEG}:52", "grad_clip=None"),
        "img_size": _v(512, _FCA, f"{_FCA_SEG}:5", "crop_size=(512, 512); Resize (2048, 512), ratio 0.5-2.0 "
                       f"({ds}:10)"),
        "reduce_zero_label": _v(True, _FCA, f"{ds}:9", "LoadAnnotations reduce_zero_label=True"),
        "hflip": _v(0.5, _FCA, f"{ds}:12", "RandomFlip prob=0.5"),
        "eval_mode": _v("slide", _FCA, f"{_FCA_SEG}:27", "test_cfg mode='slide', crop 512"),
        "slide_stride": _v(341, _FCA, f"{_FCA_SEG}:27", "stride=(341, 341)"),
        "fpn_channels": _v(512, _FCA, "semantic-segmentation/configs/_base_/models/upernet_convnext.py:27",
                           "UPerHead channels=512"),
        "amp": _v(True, _FCA, f"{_FCA_SEG}:45", "IterBasedRunnerAmp; line 55 use_fp16=True (here bfloat16)"),
        "ema_decay": _v(0.0, _FCA, f"{_FCA_SEG}:49-56", "no EMA hook"),
    }
    gaps = (f"the auxiliary FCN head on stage 3 ({_FCA}:{_FCA_SEG}:23-26): our UPerNet trains the decode head only",
            f"PhotoMetricDistortion and RandomCrop's cat_max_ratio=0.75 ({_FCA}:{ds}:11, 13)",
            f"the published mIoU is multi-scale + flip (--aug-test, {_FCA}:semantic-segmentation/scripts_seg/"
            "fcaformer:6): evaluation here is single-scale")
    return Recipe(
        name="fcaformer_upernet_160k",
        description="FcaFormer-L2 UPerNet on ADE20K, 160k iterations of 16 512x512 crops, AdamW 1e-4, layer decay "
        "0.9, sliding-window evaluation: the authors' mmsegmentation config",
        models=("fcaformer_sh_l2",), values=values,
        drop_path={"fcaformer_sh_l2": _v(0.1, _FCA, f"{_FCA_SEG}:14", "drop_path_rate=0.1")},
        drop_path_default=_v(0.1, _FCA, f"{_FCA_SEG}:14", "drop_path_rate=0.1"),
        lr_scaling=None, config_cls=DenseTrainConfig, command="dense train", gaps=gaps)


#: the dense recipes, registered with :mod:`crossformers.engine.recipes` on import
DENSE_RECIPES: dict[str, Recipe] = {r.name: register_recipe(r) for r in (
    _cf_detection("mask_rcnn"), _cf_detection("retinanet"), _cf_upernet(), _cf_semantic_fpn(), _fca_mask_rcnn_3x(),
    _fca_upernet())}
