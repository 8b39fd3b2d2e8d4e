"""The authors' mmdet checkpoints load into our torchvision detectors whole: backbone strictly, FPN and heads mapped
with mmdet's class conventions (background last in fc_cls, none in fc_reg / conv_logits / retina_cls), and one
warning naming what could not be mapped.

The mmdet-layout checkpoints are written here from a reference detector by mmdet's own names and conventions
(mmdet 2.x: FPN ``lateral_convs.i.conv`` / ``fpn_convs.i.conv``, ``RPNHead``, ``Shared2FCBBoxHead``, ``FCNMaskHead``,
``RetinaHead``), independently of the converter under test."""
from __future__ import annotations

import warnings

import pytest
import torch

from crossformers.detection import DenseCheckpointWarning, mask_rcnn, retinanet
from crossformers.detection.mmdet_heads import convert_mmdet_heads
from dense_fixtures import crossformer_authors_layout

TINY = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8))
BACKBONE = "crossformer_pp_small_dense"
CLASSES = 3  # + background = 4 torchvision labels


def _conv(prefix: str, tv: dict, key: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": tv[f"{key}.weight"], f"{prefix}.bias": tv[f"{key}.bias"]}


def _fpn(tv: dict, levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(levels):
        out |= _conv(f"neck.lateral_convs.{i}.conv", tv, f"backbone.fpn.inner_blocks.{i}.0")
        out |= _conv(f"neck.fpn_convs.{i}.conv", tv, f"backbone.fpn.layer_blocks.{i}.0")
    return out


def _backbone(tv: dict) -> dict[str, torch.Tensor]:
    ours = {k[len("backbone.body.body.model."):]: v for k, v in tv.items() if k.startswith("backbone.body.")}
    return {"backbone." + k: v for k, v in crossformer_authors_layout(ours).items()}


def _mask_rcnn_mmdet(tv: dict) -> dict[str, torch.Tensor]:
    """mmdet's Mask R-CNN names and class conventions for the layers of torchvision's ``tv`` state dict."""
    out = {**_backbone(tv), **_fpn(tv, 4)}
    out |= _conv("rpn_head.rpn_conv", tv, "rpn.head.conv.0.0") | _conv("rpn_head.rpn_cls", tv, "rpn.head.cls_logits")
    out |= _conv("rpn_head.rpn_reg", tv, "rpn.head.bbox_pred")
    out |= _conv("roi_head.bbox_head.shared_fcs.0", tv, "roi_heads.box_head.fc6")
    out |= _conv("roi_head.bbox_head.shared_fcs.1", tv, "roi_heads.box_head.fc7")
    for part in ("weight", "bias"):
        cls = tv[f"roi_heads.box_predictor.cls_score.{part}"]
        out[f"roi_head.bbox_head.fc_cls.{part}"] = torch.cat([cls[1:], cls[:1]])  # background last
        out[f"roi_head.bbox_head.fc_reg.{part}"] = tv[f"roi_heads.box_predictor.bbox_pred.{part}"][4:]  # no bg
        out[f"roi_head.mask_head.conv_logits.{part}"] = tv[f"roi_heads.mask_predictor.mask_fcn_logits.{part}"][1:]
    for i in range(4):
        out |= _conv(f"roi_head.mask_head.convs.{i}.conv", tv, f"roi_heads.mask_head.{i}.0")
    out |= _conv("roi_head.mask_head.upsample", tv, "roi_heads.mask_predictor.conv5_mask")
    return out


def _retinanet_mmdet(tv: dict, anchors: int = 9) -> dict[str, torch.Tensor]:
    out = {**_backbone(tv), **_fpn(tv, 3)}
    out |= _conv("neck.fpn_convs.3.conv", tv, "backbone.fpn.extra_blocks.p6")  # add_extra_convs='on_input'
    out |= _conv("neck.fpn_convs.4.conv", tv, "backbone.fpn.extra_blocks.p7")
    for i in range(4):
        out |= _conv(f"bbox_head.cls_convs.{i}.conv", tv, f"head.classification_head.conv.{i}.0")
        out |= _conv(f"bbox_head.reg_convs.{i}.conv", tv, f"head.regression_head.conv.{i}.0")
    for part in ("weight", "bias"):
        cls = tv[f"head.classification_head.cls_logits.{part}"]
        per = cls.reshape(anchors, CLASSES + 1, *cls.shape[1:])[:, 1:]  # sigmoid classes: no background
        out[f"bbox_head.retina_cls.{part}"] = per.reshape(anchors * CLASSES, *cls.shape[1:])
    out |= _conv("bbox_head.retina_reg", tv, "head.regression_head.bbox_reg")
    return out


def _build(make, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = make(BACKBONE, CLASSES + 1, backbone_kwargs=TINY, fpn_channels=16, min_size=96, max_size=128, **kw)
    return model.eval(), [str(w.message) for w in caught if issubclass(w.category, DenseCheckpointWarning)]


def _zero_background(tv_model, keys_rows):
    """Torchvision rows an mmdet checkpoint has no values for (the background's), zeroed in the reference."""
    sd = tv_model.state_dict()
    with torch.no_grad():
        for key, rows in keys_rows:
            sd[key][rows] = 0
    return tv_model


@pytest.mark.parametrize("head", ["mask_rcnn", "retinanet"])
def test_authors_detection_checkpoint_loads_backbone_fpn_and_heads(head, tmp_path):
    torch.manual_seed(0)
    make = mask_rcnn if head == "mask_rcnn" else retinanet
    ref, _ = _build(make)
    if head == "mask_rcnn":
        _zero_background(ref, [(f"roi_heads.box_predictor.bbox_pred.{p}", slice(0, 4)) for p in ("weight", "bias")]
                         + [(f"roi_heads.mask_predictor.mask_fcn_logits.{p}", slice(0, 1)) for p in ("weight", "bias")])
        state = _mask_rcnn_mmdet(ref.state_dict())
    else:
        sd = ref.state_dict()
        with torch.no_grad():  # the background column: zero weights, torchvision's prior bias
            sd["head.classification_head.cls_logits.weight"].view(9, CLASSES + 1, -1)[:, 0] = 0
            sd["head.classification_head.cls_logits.bias"].view(9, CLASSES + 1)[:, 0] = -torch.log(torch.tensor(99.0))
        state = _retinanet_mmdet(sd)
    state["roi_head.semantic_head.conv_logits.weight"] = torch.zeros(2, 16, 1, 1)  # e.g. HTC: no such layer here
    path = tmp_path / f"{head}.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, path)

    torch.manual_seed(1)  # another initialisation: everything must come from the checkpoint
    model, messages = _build(make, checkpoint_path=path)
    assert len(messages) == 1, messages
    assert "neck/head tensors mapped onto the detector's FPN and heads" in messages[0]
    assert "1 neck/head keys could not be mapped (roi_head.semantic_head.conv_logits.weight" in messages[0]
    for key, value in ref.state_dict().items():
        assert torch.allclose(model.state_dict()[key], value, atol=1e-6), key
    images = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        want, got = ref(images)[0], model(images)[0]
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key])


def test_another_class_count_keeps_fpn_and_reports_the_class_layers(tmp_path):
    torch.manual_seed(0)
    ref, _ = _build(mask_rcnn)
    path = tmp_path / "m.pth"
    torch.save({"state_dict": _mask_rcnn_mmdet(ref.state_dict())}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mask_rcnn(BACKBONE, 7, checkpoint_path=path, backbone_kwargs=TINY, fpn_channels=16)
    msg = [str(w.message) for w in caught if issubclass(w.category, DenseCheckpointWarning)]
    assert len(msg) == 1
    for key in ("fc_cls.weight", "fc_reg.weight", "conv_logits.weight"):
        assert f"roi_head.bbox_head.{key}" in msg[0] or f"roi_head.mask_head.{key}" in msg[0]
    assert torch.equal(model.state_dict()["backbone.fpn.inner_blocks.0.0.weight"],
                       ref.state_dict()["backbone.fpn.inner_blocks.0.0.weight"])
    assert torch.equal(model.state_dict()["roi_heads.box_head.fc7.weight"], ref.state_dict()["roi_heads.box_head.fc7.weight"])


def test_class_agnostic_regression_is_repeated_per_class():
    torch.manual_seed(0)
    model, _ = _build(mask_rcnn)
    reg = torch.randn(4, 1024)
    mapped, not_mapped = convert_mmdet_heads({"roi_head.bbox_head.fc_reg.weight": reg}, model)
    assert not not_mapped
    assert torch.equal(mapped["roi_heads.box_predictor.bbox_pred.weight"], reg.repeat(CLASSES + 1, 1))
