"""The authors' dense backbones (CrossFormer / CrossFormer++ ``crossformer_backbone_det.py``, FcaFormer
``FcaFormer_SH_512``): parity with their code, their checkpoint keys, mmdet and classification checkpoints."""
from __future__ import annotations

import warnings

import pytest
import torch

import crossformers
from crossformers.detection import DenseCheckpointWarning, backbone, load_dense_weights
from dense_fixtures import crossformer_authors_layout, load_dense_case, read_keys, seeded_input, seeded_weights

CASES = [
    "crossformer_small_224x320",  # last map 7x10: no larger than G = 7, one padded 10x10 group
    "crossformer_small_256x320",
    "crossformer_pp_small_224x224",  # last map 7x7
    "crossformer_pp_small_256x320",
    "crossformer_pp_small_adaptive_256x320",  # adaptive_interval=True (their option)
    "fcaformer_sh_l2_128x192",  # stage 3 (8x12) and stage 4 (4x6) smaller than their windows (14, 7)
    "fcaformer_sh_l2_256x320",  # several padded windows per Fca stage
]


def _mmdet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"backbone." + k: v for k, v in state.items()}


@pytest.mark.parametrize("case", CASES)
def test_parity_with_the_authors_dense_backbone(case):
    meta, ref = load_dense_case(case)
    with torch.device("meta"):  # no initialisation: the strict load below sets every parameter and buffer
        model = backbone(meta["model"], **meta["model_kwargs"])
    model = model.to_empty(device="cpu").eval()
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
    ("fcaformer_sh_l2", "dense_fcaformer_sh_l2"),
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
        assert crossformers.list_models(dense=True) == [
            "crossformer_base_dense", "crossformer_large_dense", "crossformer_pp_small_dense",
            "crossformer_small_dense", "fcaformer_sh_l2"]
        assert not crossformers.list_models("*_dense") and "fcaformer_sh_l2" not in crossformers.list_models()
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
    official = crossformer_authors_layout(src.state_dict())
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


FCA_TINY = dict(embed_dim=(16, 32, 48, 64), depths=(1, 1, 3, 2), num_heads=(0, 0, 2, 2), out_dims=(8, 16, 24, 32))


def test_fcaformer_dense_structure_any_size():
    model = backbone("fcaformer_sh_l2", **FCA_TINY).eval()
    assert model.feature_info.channels() == [8, 16, 24, 32] and model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        for h, w in [(64, 64), (90, 130), (37, 51)]:
            outs = model(torch.randn(1, 3, h, w))
            assert [tuple(o.shape[-2:]) for o in outs] == [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32)]
    with torch.device("meta"):
        full = backbone("fcaformer_sh_l2")
    assert full.window_sizes == (14, 7) and full.feature_info.channels() == [96, 192, 384, 768]
    assert full.stages[2].blocks[0].rel_pos.table.shape == (10, 14, 14)


def test_fcaformer_classification_checkpoint_initialises_the_output_layers(tmp_path):
    kw = {k: v for k, v in FCA_TINY.items() if k != "out_dims"}
    clf = crossformers.create_model("fcaformer_l2", num_classes=5, img_size=224, **kw)
    path = tmp_path / "l2.pth"
    torch.save(clf.state_dict(), path)
    model = _warns_once(lambda: backbone("fcaformer_sh_l2", checkpoint_path=path, **FCA_TINY),
                        "12 dense-only keys initialised, not in the checkpoint (out_proj.0.weight")
    report = model.load_report
    assert sorted(report.dropped) == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    assert len(report.initialised) == 12  # 4 projections + 4 norms (weight, bias)
    own = model.state_dict()
    for k, v in clf.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(own[k], v), k


def test_fcaformer_mmdet_checkpoint_loads_and_another_family_is_refused(tmp_path):
    keys = read_keys("dense_fcaformer_sh_l2")
    weights = seeded_weights(keys, 0)
    ckpt = {"state_dict": {**_mmdet(weights), "decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1)}}
    model = backbone("fcaformer_sh_l2")
    report = _warns_once(lambda: load_dense_weights(model, ckpt["state_dict"]), "1 neck/head keys not loaded (decode_head")
    assert report.loaded == len(model.state_dict()) and report.not_loaded == ["decode_head.conv_seg.weight"]
    assert torch.equal(model.stages[2].blocks[1].cross_bias.flatten(), weights["layer_2.blocks.1.s_token_bias"].flatten())
    cf = _mmdet({k: torch.zeros(s) for k, s in read_keys("dense_crossformer_small_det")})
    with pytest.raises(crossformers.CheckpointError, match="CrossFormer.* checkpoint, not an FcaFormer one"):
        load_dense_weights(backbone("fcaformer_sh_l2", **FCA_TINY), cf)


@pytest.mark.parametrize("name,manifest,initialised", [
    ("crossformer_small", "crossformer_small", 0),
    ("crossformer_pp_small", "crossformer_pp_small", 0),
    ("fcaformer_sh_l2", "fcaformer_l2", 12),
])
def test_the_authors_imagenet_checkpoints_load_into_the_dense_backbones(name, manifest, initialised):
    """Every key of the authors' full-size classification checkpoints is either loaded or reported as dropped."""
    with torch.device("meta"):  # shapes and names only
        model = backbone(name)
        state = {k: torch.empty(s) for k, s in read_keys(manifest)}
    report = _warns_once(lambda: load_dense_weights(model, {"model": state}["model"]), "4 classification keys dropped")
    assert report.layout == "classification" and len(report.dropped) == 4
    assert len(report.initialised) == initialised
    assert report.loaded + len(report.initialised) == len(model.state_dict())


@pytest.mark.parametrize("name,kw", [("crossformer_pp_small", dict(embed_dim=16, depths=(1, 2, 3, 1),
                                                                     num_heads=(1, 2, 4, 8))),
                                     ("fcaformer_sh_l2", FCA_TINY)])
def test_training_reaches_every_parameter(name, kw):
    """A dense backbone trains as a whole (no unused parameters, so DDP needs no find_unused_parameters)."""
    model = backbone(name, drop_path_rate=0.1, **kw).train()
    sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 96))).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_pretrained_and_bad_arguments_fail_clearly():
    with pytest.raises(crossformers.PretrainedUnavailableError, match="no direct download for crossformer_small_dense"):
        backbone("crossformer_small", pretrained=True)
    with pytest.raises(crossformers.PretrainedUnavailableError, match="no direct download for fcaformer_sh_l2"):
        backbone("fcaformer_sh_l2", pretrained=True)
    with pytest.raises(crossformers.CheckpointError, match="checkpoint not found: .*missing.pth"):
        backbone("fcaformer_sh_l2", checkpoint_path="missing.pth", **FCA_TINY)
    with pytest.raises(ValueError, match=r"out_indices \(4,\) must be stage indices among 0..3"):
        backbone("crossformer_small", out_indices=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


@pytest.mark.parametrize("name", ["crossformer_small_dense", "crossformer_pp_small_dense", "fcaformer_sh_l2"])
def test_dense_backbones_take_timms_factory_arguments(name):
    """timm.create_model(..., device="meta", dtype=...) places a dense backbone as it does a classifier (nothing
    allocated), and the backbone carries its cfg under both of timm's names."""
    import timm  # crossformers (imported above) registered the names

    model = timm.create_model(name, device="meta", dtype=torch.float64)
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    assert model.default_cfg is model.pretrained_cfg and model.pretrained_cfg["architecture"] == name
    assert model.pretrained_cfg["num_classes"] == 0


def test_a_detection_checkpoint_of_another_backbone_of_the_family_is_refused_with_the_fix():
    """The authors' CrossFormer-S Mask R-CNN checkpoint given to the CrossFormer-B backbone: one CheckpointError that
    names the mismatch and the backbone to build instead; nothing is loaded."""
    cf_small = _mmdet({k: torch.zeros(s) for k, s in read_keys("dense_crossformer_small_det")})
    with torch.device("meta"):
        model = backbone("crossformer_base")
    with pytest.raises(crossformers.CheckpointError,
                       match=r"does not fit the dense backbone crossformer_base_dense: \d+ missing keys.*Build the "
                             r"backbone the checkpoint was trained with"):
        load_dense_weights(model, cf_small)


@pytest.mark.parametrize("name, kwargs", [
    ("fcaformer_sh_l2", FCA_TINY),
    ("crossformer_pp_small_dense", dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 2))),
])
def test_detectors_and_segmenters_build_on_the_authors_dense_backbones(name, kwargs, tmp_path):
    """mask_rcnn / upernet on a registered dense name: the pyramid is the backbone's own four maps (no neck), a
    checkpoint of that backbone (here its own state dict) loads through checkpoint_path, and both models run."""
    from crossformers import detection, segmentation

    ref = crossformers.create_model(name, **kwargs)
    torch.save(ref.state_dict(), tmp_path / "bb.pth")
    det = detection.mask_rcnn(name, num_classes=3, checkpoint_path=tmp_path / "bb.pth", min_size=128, max_size=160,
                              backbone_kwargs=kwargs).eval()
    body = det.backbone.body
    assert body.neck is None and list(body.out_channels) == ref.feature_info.channels()
    assert type(body.model) is type(ref)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in body.model.state_dict().items())
    with torch.no_grad():
        out = det([torch.rand(3, 128, 160)])
    assert {"boxes", "labels", "scores", "masks"} <= out[0].keys()
    seg = segmentation.upernet(name, num_classes=5, decoder_channels=32, backbone_kwargs=kwargs).eval()
    with torch.no_grad():
        assert seg(torch.rand(1, 3, 64, 96)).shape == (1, 5, 64, 96)
