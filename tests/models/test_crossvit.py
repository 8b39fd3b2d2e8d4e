"""CrossViT: parity with timm and the authors' code, both checkpoint layouts, input modes, the four fusions."""
from __future__ import annotations

import pytest
import timm
import torch
from model_checks import assert_input_size_errors

import crossformers
from crossformers.engine.modeling import count_macs
from crossformers.errors import CheckpointError, PretrainedUnavailableError
from crossformers.layers.position_bias import resample_grid_table
from crossformers.models.crossvit import FUSIONS, CrossViT, checkpoint_filter_fn

from parity_fixtures import load_case, loaded_case, official_keys, save_official_pth

VARIANTS = crossformers.list_models("crossvit_*")
SMALL = dict(img_size=48, img_scale=(1.0, 32 / 48), patch_size=(12, 16), embed_dim=(16, 32), num_heads=(2, 2),
             depth=((1, 1, 0), (1, 1, 0)), mlp_ratio=(2, 2, 1), num_classes=3)


def model_for_case(meta: dict, **overrides) -> CrossViT:
    """Our model with the fixture's reference kwargs (timm's img_size + img_scale, or the authors' per-branch sizes)."""
    kw = meta["reference_kwargs"]
    if isinstance(kw["img_size"], list):  # IBM: one native size per branch
        size, scale = kw["img_size"][0], tuple(s / kw["img_size"][0] for s in kw["img_size"])
    else:
        size, scale = kw["img_size"], tuple(kw["img_scale"])
    args = dict(img_size=size, img_scale=scale, patch_size=kw["patch_size"], num_classes=kw["num_classes"],
                embed_dim=kw["embed_dim"], depth=kw["depth"], num_heads=kw["num_heads"], mlp_ratio=kw["mlp_ratio"],
                multi_conv=kw.get("multi_conv", False))
    args.update(overrides)
    return crossformers.create_model("crossvit_9_240", **args).eval()


@pytest.mark.parametrize("case", ["crossvit_timm_tiny", "crossvit_ibm_tiny", "crossvit_ibm_dagger_tiny"])
def test_parity_through_the_converter(case):
    """timm's and the authors' layouts load through checkpoint_filter_fn and reproduce logits and intermediates."""
    meta, t, model = loaded_case(case, model_for_case)
    tol = meta["tolerance"]
    with torch.no_grad():
        logits = model(t["input"])
        _, inter = model.forward_intermediates(t["input"], output_fmt="NLC", return_prefix_tokens=True)
    torch.testing.assert_close(logits, t["logits"], **tol)
    K = len(model.encoders)
    for name in meta["intermediates"]:  # official `blocks.k` returns one token sequence per branch: `blocks.k.b`
        k, b = (int(i) for i in name.split("blocks.", 1)[1].split("."))
        patches, cls = inter[b * K + k]
        torch.testing.assert_close(torch.cat((cls, patches), dim=1), t[name], **tol)
    model.set_fused_attn(False)  # the explicit path gives the same numbers
    with torch.no_grad():
        torch.testing.assert_close(model(t["input"]), t["logits"], **tol)


def test_official_pth_through_timm(tmp_path):
    """timm's way to give a model a local file (pretrained_cfg_overlay=dict(file=...)) converts the official layout
    once; timm's checkpoint_path= (a plain load_state_dict, no conversion) fails with a message naming the fix."""
    meta, t = load_case("crossvit_ibm_dagger_tiny")
    path = save_official_pth(tmp_path / "official.pth", t, epoch=7)
    kw = meta["reference_kwargs"]
    args = dict(img_size=72, img_scale=(1.0, 64 / 72), num_classes=6, embed_dim=kw["embed_dim"], depth=kw["depth"],
                num_heads=kw["num_heads"])
    model = timm.create_model("cf_crossvit_9_dagger_240", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), **args).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(t["input"]), t["logits"], **meta["tolerance"])
    with pytest.raises(crossformers.CheckpointError, match="official layout.*pretrained_cfg_overlay"):
        timm.create_model("cf_crossvit_9_dagger_240", checkpoint_path=str(path), **args)


def test_same_weights_reproduce_timm_at_240_and_the_authors_at_224():
    """timm's own crossvit_15_240 with random weights: our model from its state dict gives the same logits at 240
    (timm's protocol) and at 224 (the authors' crossvit_15_224: the small branch resizes 224 to 240)."""
    ref = timm.create_model("crossvit_15_240").eval()
    assert type(ref).__module__ == "timm.models.crossvit"  # timm's entrypoint is not overridden
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = crossformers.load_checkpoint(crossformers.create_model("crossvit_15_240"), ref.state_dict()).eval()
    assert isinstance(ours, CrossViT)
    with torch.no_grad():
        for size in (240, 224):
            x = torch.randn(1, 3, size, size)
            torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def _layouts():
    for name in VARIANTS:
        yield name, f"{name}_timm"
        ibm = name.replace("_240", "").replace("_408", "")  # 408 models: the authors' 224 keys, resampled
        yield name, f"{ibm}_ibm"


@pytest.mark.parametrize("variant,keyfile", list(_layouts()))
def test_every_official_key_is_mapped(variant, keyfile):
    keys = official_keys(keyfile)
    with torch.device("meta"):
        model = crossformers.create_model(variant)
    converted = checkpoint_filter_fn({k: torch.zeros(s) for k, s in keys.items()}, model)
    own = model.state_dict()
    assert set(converted) == set(own)
    for k, v in converted.items():
        assert v.shape == own[k].shape, k
    assert len(keys) == len(own)


PUBLISHED = {  # params (M, timm), GMACs (paper) -- docs/reference.md (timm results, CrossViT paper Table 2)
    "crossvit_tiny_240": (7.01, 1.6), "crossvit_small_240": (26.86, 5.6), "crossvit_base_240": (105.03, 21.2),
    "crossvit_9_240": (8.55, 1.8), "crossvit_15_240": (27.53, 5.8), "crossvit_18_240": (43.27, 9.0),
    "crossvit_9_dagger_240": (8.78, 2.0), "crossvit_15_dagger_240": (28.21, 6.1),
    "crossvit_18_dagger_240": (44.27, 9.5), "crossvit_15_dagger_408": (28.50, None),
    "crossvit_18_dagger_408": (44.61, None),
}


def test_params_equal_timm_for_every_variant():
    assert set(PUBLISHED) == set(VARIANTS)
    for name, (params, _) in PUBLISHED.items():
        with torch.device("meta"):
            ours = sum(p.numel() for p in crossformers.create_model(name).parameters())
            theirs = sum(p.numel() for p in timm.create_model(name).parameters())
        assert ours == theirs, name
        assert abs(ours / 1e6 - params) <= 0.01, (name, ours)


@pytest.mark.parametrize("name", ["crossvit_tiny_240", "crossvit_9_dagger_240"])
def test_macs_match_the_paper(name):
    gmacs = count_macs(crossformers.create_model(name), (3, 240, 240)) / 1e9
    assert abs(gmacs - PUBLISHED[name][1]) / PUBLISHED[name][1] < 0.03, gmacs


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_fusion_strategies_forward_backward_features(fusion):
    model = crossformers.create_model("crossvit_9_240", fusion=fusion, **SMALL)
    out = model(torch.randn(2, 3, 48, 40))
    assert out.shape == (2, 3)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    feats = crossformers.create_model("crossvit_9_240", fusion=fusion, features_only=True, **SMALL).eval()
    with torch.no_grad():
        maps = feats(torch.randn(1, 3, 60, 84))
    for m, c, r in zip(maps, feats.feature_info.channels(), feats.feature_info.reduction(), strict=True):
        assert m.shape[1:] == (c, -(-60 // r), -(-84 // r))


def test_fusion_semantics():
    """cross_attn and class_token only replace CLS tokens; all_attn and pairwise rewrite every token; the CLS token
    after cross-attention depends on the other branch's patch tokens."""
    xs = [torch.randn(2, 1 + 16, 16), torch.randn(2, 1 + 4, 32)]
    grids = [(4, 4), (2, 2)]
    for fusion in FUSIONS:
        mod = FUSIONS[fusion]((16, 32), (2, 2), 0).eval()
        out = mod(xs, grids)
        assert [o.shape for o in out] == [x.shape for x in xs]
        keeps_patches = fusion in ("cross_attn", "class_token")
        assert all(torch.equal(o[:, 1:], x[:, 1:]) == keeps_patches for o, x in zip(out, xs, strict=True)), fusion
    mod = FUSIONS["cross_attn"]((16, 32), (2, 2), 0).eval()
    changed = [xs[0], torch.cat((xs[1][:, :1], torch.randn(2, 4, 32)), dim=1)]
    assert not torch.allclose(mod(xs, grids)[0][:, 0], mod(changed, grids)[0][:, 0])


def test_cross_attention_shortcut_matches_the_papers_products(monkeypatch):
    """The fused path folds the keys and values of all tokens into the CLS query (layers.attention.
    single_query_attention); the explicit path (attention maps, MAC counts) projects every token as the paper's
    Eq. 8-9. Same outputs and gradients; with attention dropout in training the projected path is taken."""
    from crossformers.models import crossvit

    torch.manual_seed(0)
    fast = crossformers.create_model("crossvit_9_240", **SMALL).eval()
    paper = crossformers.create_model("crossvit_9_240", **SMALL).eval()
    paper.load_state_dict(fast.state_dict())
    paper.set_fused_attn(False)
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(fast(x), paper(x), atol=1e-5, rtol=1e-5)
    fast(x).square().sum().backward()
    paper(x).square().sum().backward()
    for (name, a), b in zip(fast.named_parameters(), paper.parameters(), strict=True):
        assert a.grad is not None, name  # every parameter keeps a gradient (DDP needs them all)
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=name)

    calls = []
    real = crossvit.single_query_attention
    monkeypatch.setattr(crossvit, "single_query_attention", lambda *a: calls.append(1) or real(*a))
    fast(x)
    assert calls  # taken in eval
    calls.clear()
    dropping = crossformers.create_model("crossvit_9_240", attn_drop_rate=0.1, **SMALL).train()
    dropping(x)
    assert not calls  # dropout on the probabilities: the projected path


def test_fusion_cost_ordering():
    """Same dims: all-attention (quadratic) > pairwise > cross-attention (linear) > class token."""
    args = dict(SMALL, img_size=96, img_scale=(1.0, 80 / 96), embed_dim=(32, 64), num_heads=(2, 4))
    macs = {f: count_macs(crossformers.create_model("crossvit_9_240", fusion=f, **args), (3, 96, 96)) for f in FUSIONS}
    assert macs["all_attn"] > macs["pairwise"] > macs["cross_attn"] > macs["class_token"], macs


def test_fusion_depth():
    """L > 0 stacks L fusion layers, each reading the other branch's patches; class_token/pairwise have none."""
    model = crossformers.create_model("crossvit_9_240", **dict(SMALL, depth=((1, 1, 2),)))
    assert len(model.encoders[0].fusion.blocks[0]) == 2
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3)
    with pytest.raises(ValueError, match="fusion depth"):
        crossformers.create_model("crossvit_9_240", fusion="class_token", **dict(SMALL, depth=((1, 1, 2),)))


def test_native_size_mode_non_square():
    """img_size at creation sets new native sizes; a 240 checkpoint's position embeddings are resampled on load."""
    src = crossformers.create_model("crossvit_tiny_240").eval()
    model = crossformers.create_model("crossvit_tiny_240", img_size=(240, 320)).eval()
    assert model.branch_img_size == [(240, 320), (224, 299)] and model.grid_size == [(20, 26), (14, 18)]
    crossformers.load_checkpoint(model, src.state_dict())
    patch = src.pos_embed[1][:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = resample_grid_table(patch, (14, 18)).permute(0, 2, 3, 1).reshape(1, 14 * 18, -1)
    torch.testing.assert_close(model.pos_embed[1][:, 1:], expected)
    torch.testing.assert_close(model.pos_embed[1][:, :1], src.pos_embed[1][:, :1])
    with torch.no_grad():
        for size in [(240, 320), (200, 200)]:  # any input is resized to the branches' native sizes
            inter = model.forward_intermediates(torch.randn(1, 3, *size), indices=[2, 5], intermediates_only=True)
            assert [t.shape[-2:] for t in inter] == [(20, 26), (14, 18)]


def test_dynamic_img_size_follows_the_input():
    model = crossformers.create_model("crossvit_9_240", **SMALL).eval()
    dyn = crossformers.create_model("crossvit_9_240", dynamic_img_size=True, **SMALL).eval()
    dyn.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), model(x))  # at img_size both modes agree
        inter = dyn.forward_intermediates(torch.randn(1, 3, 72, 100), intermediates_only=True)
    assert [t.shape[-2:] for t in inter[::2]] == [(6, 9), (3, 5)]  # ceil(72/12), ceil(100/12); ceil(48/16), ceil(66.7/16)


def test_reset_classifier_replaces_both_heads():
    model = crossformers.create_model("crossvit_9_240", **SMALL)
    model.reset_classifier(7, "avg")
    assert [h.out_features for h in model.get_classifier()] == [7, 7] and model.global_pool == "avg"
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 7)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 16 + 32)


def test_bad_inputs_get_clear_errors():
    model = crossformers.create_model("crossvit_9_240", **SMALL)
    assert_input_size_errors(model, wrong_channels=(1, 1, 48, 48), too_small=(1, 3, 8, 48), unbatched=(3, 48, 48))
    with pytest.raises(CheckpointError, match="FcaFormer"):
        crossformers.load_checkpoint(model, {"layer_2.blocks.1.s_token_bias": torch.zeros(2)})
    with pytest.raises(ValueError, match="unknown fusion"):
        crossformers.create_model("crossvit_9_240", fusion="sum", **SMALL)
    with pytest.raises(ValueError, match="patch sizes 8, 12 and 16"):
        crossformers.create_model("crossvit_9_240", multi_conv=True, **dict(SMALL, patch_size=(10, 16)))


def test_pretrained_names_both_sources_and_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSFORMERS_CACHE", str(tmp_path))
    monkeypatch.setattr("crossformers.models._helpers.hub_cached", lambda hub_id: None)
    probed = []
    monkeypatch.setattr("crossformers.models._helpers._reachable", lambda url, timeout=3.0: probed.append(url))

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted although the host is unreachable: {args}")

    # failing fast = one bounded probe of the host, then no download attempt at all
    monkeypatch.setattr("torch.hub.download_url_to_file", no_download)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_download)
    with pytest.raises(PretrainedUnavailableError, match="huggingface.co.*checkpoint_path"):
        crossformers.create_model("crossvit_15_240", pretrained=True)
    with pytest.raises(PretrainedUnavailableError, match="github.com.*checkpoint_path"):
        timm.create_model("cf_crossvit_15_240.ibm_in1k", pretrained=True)
    assert [u.split("/")[2] for u in probed] == ["huggingface.co", "github.com"]
    default = timm.models.get_pretrained_cfg("cf_crossvit_15_240").to_dict()
    ibm = timm.models.get_pretrained_cfg("cf_crossvit_15_240.ibm_in1k").to_dict()
    assert default["hf_hub_id"] == "timm/crossvit_15_240.in1k"
    assert ibm["url"] == "https://github.com/IBM/CrossViT/releases/download/weights-0.1/crossvit_15_224.pth"
    assert ibm["input_size"] == (3, 224, 224)
    ibm408 = timm.models.get_pretrained_cfg("cf_crossvit_18_dagger_408.ibm_in1k").to_dict()
    assert ibm408["url"].endswith("crossvit_18_dagger_384.pth")


def test_pretrained_loads_a_cached_file_and_drops_a_different_head(monkeypatch, tmp_path):
    """The pretrained path (file located, converted, loaded) with a local timm-layout file standing in for the hub."""
    ref = timm.create_model("crossvit_9_240", **{k: v for k, v in SMALL.items() if k != "num_classes"})
    path = tmp_path / "model.pth"
    torch.save(ref.state_dict(), path)
    monkeypatch.setattr("crossformers.models._helpers.hub_cached", lambda hub_id: path)
    model = crossformers.create_model("crossvit_9_240", pretrained=True, **SMALL).eval()  # 3 classes vs 1000
    torch.testing.assert_close(model.pos_embed[0], ref.pos_embed_0)
    assert model.head[0].out_features == 3
    feats = crossformers.create_model("crossvit_9_240", pretrained=True, features_only=True,
                                      **{k: v for k, v in SMALL.items() if k != "num_classes"})
    assert len(feats(torch.randn(1, 3, 48, 48))) == 2
