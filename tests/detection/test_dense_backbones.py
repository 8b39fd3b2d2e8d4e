"""The authors' dense backbones (CrossFormer / CrossFormer++ ``crossformer_backbone_det.py``, FcaFormer
``FcaFormer_SH_512``): parity with their code, their checkpoint keys, mmdet and classification checkpoints."""
from __future__ import annotations

import warnings

import pytest
import torch

import crossformers
from crossformers.detection import DenseCheckpointWarning, backbone, load_dense_weights
from dense_fixtures import load_dense_case, read_keys, seeded_input, seeded_weights

CASES = [
    "crossformer_small_224x320",  # last map 7x10: no larger than G = 7, one padded 10x10 group
    "crossformer_small_256x320",
    "crossformer_pp_small_224x224",  # last map 7x7
    "crossformer_pp_small_256x320",
    "crossformer_pp_small_adaptive_256x320",  # adaptive_interval=True (their option)
]


def _mmdet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"backbone." + k: v for k, v in state.items()}


@pytest.mark.parametrize("case", CASES)
def test_parity_with_the_authors_dense_backbone(case):
    meta, ref = load_dense_case(case)
    model = backbone(meta["model"], **meta["model_kwargs"]).eval()
    load_dense_weights(model, _mmdet(seeded_weights(read_keys(meta["keys"]), meta["weight_seed"])))
    with torch.no_grad():
        outs = model(seeded_input(tuple(meta["input_shape"]), meta["input_seed"]))
    assert len(outs) == len(meta["maps"]) == 4
    for i, out in enumerate(outs):
        info = meta["maps"][f"out{i}"]
        assert list(out.shape) == info["shape"], (case, i)
        got = out.reshape(-1)[:: info["stride"]]
        err = (got - ref[f"out{i}"]).abs().max().item()
        assert err <= 1e-4 * info["std"], (case, i, err / info["std"])


@pytest.mark.parametrize("name,manifest", [
    ("crossformer_small", "dense_crossformer_small_det"),
    ("crossformer_base", "dense_crossformer_base_det"),
    ("crossformer_pp_small", "dense_crossformer_pp_small_det"),
])
def test_every_key_of_the_authors_full_size_checkpoints_maps(name, manifest):
    keys = read_keys(manifest)
    with torch.device("meta"):
        model = backbone(name)
    converted = model.convert_state_dict({k: torch.empty(s, device="meta") for k, s in keys})
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)


def test_small_maps_are_one_group_of_the_larger_side():
    """224x320: stage 4 is 7x10; the dense block attends it as one 10x10 group (the classifier: 7x7 groups)."""
    with torch.device("meta"):
        blk = backbone("crossformer_small").stages[3].blocks[1]
    clf = crossformers.create_model("crossformer_small", embed_dim=16, depths=(1, 1, 1, 2), num_heads=(1, 2, 4, 8))
    assert blk.grouping(7, 10) == (10, False)
    assert blk.grouping(8, 10) == (7, True)
    assert clf.stages[3].blocks[1].grouping(7, 10) == (7, False)


def test_defaults_are_the_authors_detection_configs():
    with torch.device("meta"):  # structure only: no memory, no initialisation
        pp = backbone("crossformer_pp_small")
        assert pp.group_size == (7, 7, 7, 7) and pp.interval == (8, 4, 2, 1) and not pp.adaptive_interval
        assert pp.stages[2].blocks[2].acl is not None  # ACL on (CrossFormer_S2: use_acl=True)
        assert backbone("crossformer_small").stages[2].blocks[2].acl is None
        assert backbone("crossformer_pp_small", group_size=(4, 4, 14, 7)).stages[2].blocks[0].group_size == 14
        large = backbone("crossformer_large")
        assert large.feature_info.channels() == [128, 256, 512, 1024]
        assert large.stages[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.5)
        # registered for create_model / timm too
        assert "crossformer_small_dense" in crossformers.list_models("*_dense")
        assert isinstance(crossformers.create_model("crossformer_small_dense"), type(pp))


def test_no_final_norm_and_maps_before_merging():
    tiny = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8))
    model = backbone("crossformer_small", out_indices=(1, 3), **tiny)
    assert model.feature_info.channels() == [32, 128] and model.feature_info.reduction() == [8, 32]
    assert not any(k.startswith(("norm.", "head.")) for k in model.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        outs = model.eval()(x)
        full = backbone("crossformer_small", **tiny).eval()
        full.load_state_dict(model.state_dict())
        maps = full(x)
    assert [tuple(o.shape) for o in outs] == [(1, 32, 12, 16), (1, 128, 3, 4)]
    assert torch.equal(outs[0], maps[1]) and torch.equal(outs[1], maps[3])


def _warns_once(fn, match: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    dense = [w for w in caught if issubclass(w.category, DenseCheckpointWarning)]
    assert len(dense) == 1, [str(w.message) for w in dense]
    assert match in str(dense[0].message), str(dense[0].message)
    return out


def test_mmdet_checkpoint_round_trip_reports_neck_and_head_keys(tmp_path):
    tiny = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8))
    src = backbone("crossformer_pp_small", **tiny)
    # the authors' layout: layers.i (merging at the end of stage i), ex_conv / ex_ln
    official = {}
    for k, v in src.state_dict().items():
        k = k.replace(".acl.conv.", ".ex_conv.").replace(".acl.norm.", ".ex_ln.")
        if ".downsample." in k:
            stage = int(k.split(".")[1])
            k = k.replace(f"stages.{stage}.downsample.projs.", f"layers.{stage - 1}.downsample.reductions.")
            k = k.replace(f"stages.{stage}.downsample.norm.", f"layers.{stage - 1}.downsample.norm.")
        official[k.replace("stages.", "layers.", 1)] = v
    ckpt = {"meta": {"epoch": 12}, "state_dict": {**_mmdet(official), "neck.lateral_convs.0.conv.weight":
                                                  torch.zeros(4, 16, 1, 1), "rpn_head.rpn_cls.bias": torch.zeros(3)}}
    path = tmp_path / "mask_rcnn.pth"
    torch.save(ckpt, path)
    model = _warns_once(lambda: backbone("crossformer_pp_small", checkpoint_path=path, **tiny),
                        "2 neck/head keys not loaded (neck, rpn_head")
    assert model.load_report.layout == "mmdet" and model.load_report.loaded == len(src.state_dict())
    assert sorted(model.load_report.not_loaded) == ["neck.lateral_convs.0.conv.weight", "rpn_head.rpn_cls.bias"]
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # backbone keys are strict: one missing key is an error naming it
    del ckpt["state_dict"]["backbone.layers.0.blocks.0.norm1.weight"]
    torch.save(ckpt, path)
    with pytest.raises(crossformers.CheckpointError, match="1 missing keys .e.g. stages.0.blocks.0.norm1.weight"):
        backbone("crossformer_pp_small", checkpoint_path=path, **tiny)


def test_classification_checkpoint_loads_into_the_dense_backbone(tmp_path):
    tiny = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8))
    clf = crossformers.create_model("crossformer_small", num_classes=7, **tiny)
    path = tmp_path / "clf.pth"
    torch.save({"model": clf.state_dict()}, path)
    model = _warns_once(lambda: backbone("crossformer_small", checkpoint_path=path, **tiny),
                        "4 classification keys dropped (norm.weight, norm.bias, head.fc.weight, head.fc.bias)")
    assert model.load_report.layout == "classification" and not model.load_report.initialised
    own = model.state_dict()
    for k, v in clf.state_dict().items():
        if k in own:
            assert torch.equal(own[k], v), k


def test_checkpoint_of_another_family_is_refused(tmp_path):
    tiny = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8))
    clf = crossformers.create_model("fcaformer_l1", embed_dim=(16, 32, 48, 64), depths=(1, 1, 2, 2),
                                    num_heads=(0, 0, 2, 2))
    path = tmp_path / "fca.pth"
    torch.save(clf.state_dict(), path)
    with pytest.raises(crossformers.CheckpointError, match="FcaFormer .crossformers layout. checkpoint, not a "
                                                           "CrossFormer one"):
        backbone("crossformer_small", checkpoint_path=path, **tiny)
