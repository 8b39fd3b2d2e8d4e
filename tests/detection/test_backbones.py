"""Every family as a dense backbone: map shapes against feature_info at three sizes, strict weight loading, pyramid."""
from __future__ import annotations

import math

import pytest
import torch

import crossformers
from crossformers.detection import BackboneError, backbone, pyramid_backbone
from crossformers.engine import ModelSpecError

# one small configuration per family (plain FcaFormer L0 separately: a different architecture)
TINY = {
    "crossformer": ("crossformer_tiny", dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8), img_size=64)),
    "crossformer_pp": ("crossformer_pp_small", dict(embed_dim=16, depths=(1, 1, 3, 1), num_heads=(1, 2, 4, 8),
                                                    img_size=64)),
    "fcaformer": ("fcaformer_l1", dict(embed_dim=(16, 32, 48, 64), depths=(1, 1, 2, 2), num_heads=(0, 0, 2, 2),
                                       img_size=64)),
    "fcaformer_plain": ("fcaformer_l0", dict(embed_dim=32, depth=3, num_heads=2, img_size=64)),
    "crossvit": ("crossvit_9_240", dict(img_size=48, img_scale=(1.0, 32 / 48), embed_dim=(16, 32), num_heads=(2, 2),
                                        depth=((1, 1, 0), (1, 1, 0)), mlp_ratio=(2, 2, 1))),
}
# multiples of 16 (plain FcaFormer's patch), not all of 32: odd maps appear in the hierarchical models
SIZES = [(64, 64), (96, 160), (80, 112)]


@pytest.mark.parametrize("family", list(TINY))
def test_maps_match_feature_info_at_three_sizes(family):
    name, kw = TINY[family]
    feats = backbone(name, **kw).eval()
    info = feats.feature_info
    for h, w in SIZES:
        with torch.no_grad():
            outs = feats(torch.randn(2, 3, h, w))
        assert len(outs) == len(info.channels())
        for o, c, r in zip(outs, info.channels(), info.reduction(), strict=True):
            assert o.shape == (2, c, math.ceil(h / r - 1e-9), math.ceil(w / r - 1e-9)), (family, h, w, r)


@pytest.mark.parametrize("family", list(TINY))
def test_pyramid_gives_strides_4_to_32(family):
    name, kw = TINY[family]
    body = pyramid_backbone(name, **kw).eval()
    assert body.strides == (4, 8, 16, 32)
    with torch.no_grad():
        outs = body(torch.randn(1, 3, 96, 160))
    for o, c, s in zip(outs, body.out_channels, body.strides, strict=True):
        assert o.shape == (1, c, 96 // s, 160 // s)
    only = pyramid_backbone(name, levels=(1, 2, 3), **kw).eval()
    with torch.no_grad():
        assert [o.shape[-1] for o in only(torch.randn(1, 3, 96, 160))] == [20, 10, 5]


def test_grey_backbone_reads_rgb_as_its_channel_mean():
    """A 1-channel backbone (the Fashion-MNIST models) in a dense model gets the RGB images the dense data sets load:
    a grey image stored as RGB gives exactly the maps of the grey image."""
    name, kw = TINY["crossformer"]
    body = pyramid_backbone(name, **{**kw, "in_chans": 1}).eval()
    grey = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        want, got = body(grey), body(grey.expand(-1, 3, -1, -1))
    assert body.in_chans == 1
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)  # (x + x + x) / 3 rounds


def test_default_indices_and_head_removed():
    name, kw = TINY["fcaformer"]
    feats = backbone(name, **kw)
    assert feats.feature_info.reduction() == [4, 8, 16, 32]
    assert not any("head" in n for n, _ in feats.named_parameters())  # all parameters are used by the maps
    cv = backbone(*TINY["crossvit"][:1], **TINY["crossvit"][1])
    assert len(cv.feature_info.channels()) == 2 and cv.model.dynamic_img_size
    assert len(backbone("fcaformer_l0", **TINY["fcaformer_plain"][1]).feature_info.channels()) == 1


@pytest.mark.parametrize("family", ["crossformer", "crossvit"])
def test_classification_checkpoint_loads_strictly(family, tmp_path):
    """A classifier's weights (any class count) load into the backbone: head dropped explicitly, the rest must match."""
    name, kw = TINY[family]
    clf = crossformers.create_model(name, num_classes=11, **kw)
    path = tmp_path / "clf.pth"
    torch.save(clf.state_dict(), path)
    feats = backbone(name, checkpoint_path=path, **kw)
    inner = dict(feats.model.named_parameters())
    for k, v in clf.named_parameters():
        if k in inner:
            assert torch.equal(inner[k], v), k
    state = clf.state_dict()
    state.pop(next(k for k in state if "head" not in k))
    torch.save(state, path)
    with pytest.raises(crossformers.CheckpointError, match="missing"):
        backbone(name, checkpoint_path=path, **kw)


def test_run_directory_and_bad_arguments(tmp_path):
    from crossformers.engine.checkpoint_io import save_checkpoint

    name, kw = TINY["crossformer"]
    clf = crossformers.create_model(name, num_classes=4, **kw)
    meta = dict(model=name, model_kwargs=dict(kw, num_classes=4), classes=list("abcd"),
                preprocessing=dict(input_size=[3, 64, 64]))
    save_checkpoint(tmp_path / "run" / "best", clf, meta)
    feats = backbone(tmp_path / "run")
    torch.testing.assert_close(feats.model.stages[0].blocks[0].attn.qkv.weight, clf.stages[0].blocks[0].attn.qkv.weight)
    with pytest.raises(ModelSpecError, match=r"run directory \(or checkpoint\), which fixes the model and its weights: "
                                             r"drop the model arguments \['embed_dim'\]"):
        backbone(tmp_path / "run", embed_dim=32)
    with pytest.raises(BackboneError, match="out_indices"):
        backbone(name, out_indices=(0, 7), **kw)
