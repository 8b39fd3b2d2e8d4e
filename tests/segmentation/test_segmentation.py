"""smp FPN / UPerNet on every family: one training step (loss, gradients) and inference; smp's own tu- encoders."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from crossformers import segmentation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
from test_backbones import TINY  # noqa: E402

CASES = [("crossformer", "upernet"), ("fcaformer", "fpn"), ("fcaformer_plain", "upernet"), ("crossvit", "fpn")]


@pytest.mark.parametrize("family,head", CASES)
def test_train_step_and_inference(family, head):
    name, kw = TINY[family]
    model = getattr(segmentation, head)(name, num_classes=4, backbone_kwargs=kw).train()
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 4, (2, 64, 96))
    logits = model(x)
    assert logits.shape == (2, 4, 64, 96)
    F.cross_entropy(logits, y).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    pred = model.predict(torch.randn(1, 3, 96, 128))
    assert pred.shape == (1, 4, 96, 128)
    with pytest.raises(RuntimeError, match="divisible by 32"):  # smp's own input check
        model(torch.randn(1, 3, 80, 96))


def test_smp_timm_universal_encoder_accepts_hierarchical_names():
    """After `import crossformers`, smp builds CrossFormer by its timm name ("tu-" prefix); plain models it refuses."""
    import segmentation_models_pytorch as smp

    name, kw = TINY["crossformer"]
    model = smp.FPN(encoder_name=f"tu-{name}", encoder_weights=None, classes=3, **kw).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="downsampling pattern"):
        smp.FPN(encoder_name="tu-cf_crossvit_9_240", encoder_weights=None, classes=3)
