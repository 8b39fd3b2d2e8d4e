"""torchvision RetinaNet / Mask R-CNN on every family: one training step (losses, gradients) and inference."""
from __future__ import annotations

import pytest
import torch
from test_backbones import TINY

from crossformers import detection

# each family once; both detectors, and both the hierarchical and the plain (simple pyramid) path, are covered
CASES = [("crossformer", "mask_rcnn"), ("fcaformer", "retinanet"), ("fcaformer_plain", "mask_rcnn"),
         ("crossvit", "retinanet")]
FAST = dict(min_size=96, max_size=128, fpn_channels=32)
FAST_RCNN = dict(rpn_batch_size_per_image=32, box_batch_size_per_image=32, rpn_pre_nms_top_n_train=200,
                 rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                 box_detections_per_img=10)


def _target(h: int, w: int) -> dict[str, torch.Tensor]:
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 12:60, 10:50] = 1
    masks[1, 5:40, 30:90] = 1
    return {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [30.0, 5.0, 90.0, 40.0]]),
            "labels": torch.tensor([1, 2]), "masks": masks}


@pytest.mark.parametrize("family,detector", CASES)
def test_train_step_and_inference(family, detector):
    name, kw = TINY[family]
    extra = FAST_RCNN if detector == "mask_rcnn" else dict(topk_candidates=50)
    model = getattr(detection, detector)(name, num_classes=3, backbone_kwargs=kw, **FAST, **extra)
    model.train()
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 112)]
    losses = model(images, [_target(96, 128), _target(80, 112)])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    assert out[0]["boxes"].shape[-1] == 4
    if detector == "mask_rcnn":
        assert out[0]["masks"].shape[1:] == (1, 96, 128)


def test_backbone_normalisation_and_ready_backbone():
    name, kw = TINY["crossformer"]
    body = detection.pyramid_backbone(name, levels=(1, 2, 3), **kw)
    model = detection.retinanet(body, num_classes=5, **FAST)
    assert model.backbone.body is body
    assert model.transform.image_mean == [0.485, 0.456, 0.406]
    with pytest.raises(detection.BackboneError, match="levels"):
        detection.mask_rcnn(body, num_classes=5)
