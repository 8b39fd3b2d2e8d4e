"""CrossFormer / CrossFormer++: parity with the official code, conversion, any input size, DPB cache, PGS, ACL."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import crossformers
from crossformers.errors import CheckpointError, InputSizeError, PretrainedUnavailableError
from crossformers.layers.grouping import group_tokens, padding_key_mask, ungroup_tokens
from crossformers.models.crossformer import checkpoint_filter_fn, progressive_group_sizes

from parity_fixtures import load_case, loaded_case, official_keys, official_state_dict, save_official_pth


def model_for_case(meta: dict, **overrides) -> torch.nn.Module:
    kw = meta["reference_kwargs"]
    args = dict(img_size=kw["img_size"], num_classes=kw["num_classes"], embed_dim=kw["embed_dim"],
                depths=kw["depths"], num_heads=kw["num_heads"], group_size=kw["group_size"],
                interval=kw["crs_interval"], mlp_ratio=kw["mlp_ratio"], patch_size=kw["patch_size"],
                merge_size=kw["merge_size"], acl=kw["use_acl"], drop_path_rate=kw["drop_path_rate"])
    args.update(overrides)
    return crossformers.create_model("crossformer_tiny", **args).eval()


def official_intermediates(model, x):
    """Our activations where the official model records `layers.i`: official stage i ends with the patch merging
    that starts our stage i + 1; it outputs (B, H*W, C) tokens."""
    out = {}
    y = model.patch_embed(x)
    for i, stage in enumerate(model.stages):
        y = stage(y)
        after = model.stages[i + 1].downsample(y) if i + 1 < len(model.stages) else y
        out[f"layers.{i}"] = after.flatten(1, 2)
    return out


CASES = ["crossformer_v1_tiny64", "crossformer_pp_tiny96"]


@pytest.mark.parametrize("case", CASES)
def test_parity_with_official(case):
    meta, t, model = loaded_case(case, model_for_case)
    with torch.no_grad():
        logits = model(t["input"])
        inter = official_intermediates(model, t["input"])
    torch.testing.assert_close(logits, t["logits"], **meta["tolerance"])
    for name in meta["intermediates"]:
        torch.testing.assert_close(inter[name.split("/", 1)[1]], t[name], **meta["tolerance"])


@pytest.mark.parametrize("case", CASES)
def test_fast_paths_equal_plain_path(case):
    """Fused SDPA vs explicit softmax, and cached vs freshly computed DPB, on the parity fixtures."""
    meta, t, model = loaded_case(case, model_for_case)
    with torch.no_grad():
        first = model(t["input"])  # fills the cache
        cached = model(t["input"])
        model.set_fused_attn(False)
        explicit = model(t["input"])
    assert torch.equal(first, cached)
    torch.testing.assert_close(explicit, first, atol=1e-4, rtol=0)


def test_dpb_cache_is_invalidated_by_train_and_load():
    meta, t = load_case("crossformer_v1_tiny64")
    model = model_for_case(meta)
    blk = model.stages[0].blocks[0]
    with torch.no_grad():
        model(t["input"])
    assert blk.bias_cache
    model.train()
    assert not blk.bias_cache
    model.eval()
    with torch.no_grad():
        model(t["input"])
        crossformers.load_checkpoint(model, official_state_dict(t))
        assert not blk.bias_cache  # loading weights drops stale biases
        torch.testing.assert_close(model(t["input"]), t["logits"], **meta["tolerance"])
    with torch.enable_grad():  # with gradients on, nothing is cached (the DPB must receive gradients)
        model.clear_cache()
        model(t["input"]).sum().backward()
        assert not blk.bias_cache and blk.attn.pos.pos_proj.weight.grad is not None


def test_dpb_cache_misses_after_in_place_update():
    """An EMA-style step (in place, eval mode, no grad: what timm's ModelEmaV3 does) must not reuse the old DPB."""
    meta, t = load_case("crossformer_v1_tiny64")
    model, target = model_for_case(meta), model_for_case(meta)
    with torch.no_grad():
        for p in target.parameters():
            p.normal_(0, 0.2)
        model(t["input"])  # fills the caches with the old DPB
        for p, q in zip(model.parameters(), target.parameters(), strict=True):
            p.lerp_(q, 1.0)  # model becomes target without train() or load_state_dict
        torch.testing.assert_close(model(t["input"]), target(t["input"]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["crossformer_tiny", "crossformer_small", "crossformer_base", "crossformer_large",
                                     "crossformer_pp_small", "crossformer_pp_base", "crossformer_pp_large",
                                     "crossformer_pp_huge"])
def test_every_official_key_is_mapped(variant):
    keys = official_keys(variant)
    model = crossformers.create_model(variant)
    converted = checkpoint_filter_fn({k: torch.zeros(s) for k, s in keys.items()}, model)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)


def test_older_layout_with_derived_buffers_loads():
    """Older releases saved `biases` / `relative_position_index`: they are checked against the model and dropped."""
    meta, t = load_case("crossformer_v1_tiny64")
    sd = official_state_dict(t)
    model = model_for_case(meta)
    old = dict(sd)
    for stage, depth in enumerate(meta["reference_kwargs"]["depths"]):
        side = meta["reference_kwargs"]["img_size"] // 4 // 2 ** stage
        g = min(side, meta["reference_kwargs"]["group_size"][stage])
        for b in range(depth):
            old[f"layers.{stage}.blocks.{b}.attn.biases"] = torch.zeros((2 * g - 1) ** 2, 2)
            old[f"layers.{stage}.blocks.{b}.attn.relative_position_index"] = torch.zeros(g * g, g * g)
    crossformers.load_checkpoint(model, old)
    with torch.no_grad():
        torch.testing.assert_close(model(t["input"]), t["logits"], **meta["tolerance"])
    old["layers.0.blocks.0.attn.biases"] = torch.zeros(81, 2)  # saved for G = 5, model uses 4
    with pytest.raises(CheckpointError, match="group size"):
        crossformers.load_checkpoint(model_for_case(meta), old)


def test_grouping_round_trip_and_lda_pattern():
    x = torch.arange(2 * 10 * 13 * 3, dtype=torch.float32).reshape(2, 10, 13, 3)
    for g, i, lda in [(4, 1, False), (3, 2, True), (2, 4, True), (5, 1, False)]:
        groups = group_tokens(x, g, i, lda)
        assert groups.shape[2] == g * g
        assert torch.equal(ungroup_tokens(groups, 10, 13, g, i, lda), x)
    # LDA with G=2, I=2 on a 4x4 map: tokens of a group are 2 apart (brute force over coordinates)
    coords = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).float()[None]
    groups = group_tokens(coords, 2, 2, True)[0]
    for grp in groups:
        ys, xs = grp[:, 0], grp[:, 1]
        assert len(set((ys % 2).tolist())) == 1 and len(set((xs % 2).tolist())) == 1
        assert set(ys.tolist()) in ({0.0, 2.0}, {1.0, 3.0})


def test_grouping_exported_with_free_sizes_is_exact_at_other_sizes():
    """Grouping with symbolic sizes (torch.export, dynamic height and width; an unpadded map keeps its own sizes
    instead of the rounded-up expression): an exported stack of LDA / SDA round trips equals eager at sizes other
    than the traced one."""

    class Stack(torch.nn.Module):
        def forward(self, t):
            h, w = t.shape[1:3]
            for g, i, lda in [(2, 2, True), (4, 1, False)]:
                t = ungroup_tokens(group_tokens(t, g, i, lda) + t.new_tensor(range(g * g))[:, None], h, w, g, i, lda)
            return t

    rows, cols = torch.export.Dim("rows", min=1, max=32), torch.export.Dim("cols", min=1, max=32)  # traced at 2, 3
    program = torch.export.export(Stack(), (torch.randn(2, 32, 48, 3),),
                                  dynamic_shapes=({1: 16 * rows, 2: 16 * cols},))
    for y in (torch.randn(2, 16, 16, 3), torch.randn(2, 64, 32, 3)):
        assert torch.equal(program.module()(y), Stack()(y))


def test_padding_mask_marks_exactly_the_padded_tokens():
    for (h, w, g, i, lda) in [(5, 7, 4, 1, False), (6, 6, 2, 2, True), (9, 5, 3, 2, True)]:
        mask = padding_key_mask(h, w, g, i, lda)
        pad_map = torch.ones(1, h, w, 1)  # real tokens are 1, padded ones become 0 through group_tokens
        real = group_tokens(pad_map, g, i, lda)[0, :, :, 0] == 1
        assert torch.equal(mask, ~real)
    assert padding_key_mask(8, 8, 4, 1, False) is None


def test_any_input_size_including_padded_and_non_square():
    model = crossformers.create_model("crossformer_pp_small", num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for h, w in [(224, 224), (256, 256), (192, 256), (97, 131), (32, 32)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(InputSizeError, match="minimum 32x32"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(InputSizeError, match="in_chans=1"):
        model(torch.randn(1, 1, 64, 64))


def test_progressive_group_size_schedules():
    depths = (2, 2, 6, 2)
    assert progressive_group_sizes((7, 7, 7, 7), depths, 56) == [[7, 7], [7, 7], [7] * 6, [7, 7]]
    assert progressive_group_sizes((8, 8, 14, 14), depths, 56, "7_14")[2] == [7, 7, 7, 7, 14, 14]
    lin = progressive_group_sizes((7, 7, 7, 7), depths, 56, "linear")
    # block 0: 56 * 4/56 = 4; block 1: 56 * (4/56 + (1 - 4/56)/12) = 8.33 -> 9 (hand-computed from the rule)
    assert lin[0] == [4, 9]
    assert all(g >= 4 for s in lin for g in s)
    with pytest.raises(ValueError, match="group_type"):
        progressive_group_sizes((7, 7, 7, 7), depths, 56, "cubic")


def test_acl_placement():
    model = crossformers.create_model("crossformer_pp_small")
    placed = [[blk.acl is not None for blk in s.blocks] for s in model.stages]
    assert placed[2] == [(i + 1) % 3 == 0 and i < 17 for i in range(18)]
    assert not any(placed[0]) and not any(placed[3])
    v1 = crossformers.create_model("crossformer_small")
    assert not any(blk.acl is not None for s in v1.stages for blk in s.blocks)


PUBLISHED = {  # params (M) from the papers; GMACs from the official code under torch's flop counter (docs/reference.md)
    "crossformer_tiny": (27.8, 2.857), "crossformer_small": (30.7, 4.906), "crossformer_base": (52.0, 9.159),
    "crossformer_large": (92.0, 16.107), "crossformer_pp_small": (23.3, 4.428), "crossformer_pp_base": (52.0, 9.592),
    "crossformer_pp_large": (92.0, 16.722), "crossformer_pp_huge": (96.0, 22.000),
}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_params_and_macs(variant):
    params, gmacs = PUBLISHED[variant]
    model = crossformers.create_model(variant).eval()
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - params) / params < 0.01, n
    model.set_fused_attn(False)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 3, 224, 224))
    assert abs(fc.get_total_flops() / 2e9 - gmacs) / gmacs < 0.01


def test_head_can_be_dropped_for_fine_tuning(tmp_path):
    meta, t = load_case("crossformer_v1_tiny64")
    path = save_official_pth(tmp_path / "official.pth", t)
    kw = dict(img_size=64, embed_dim=16, depths=(1, 2, 2, 1), num_heads=(2, 2, 4, 4), group_size=(4, 4, 4, 4),
              interval=(4, 2, 1, 1))
    with pytest.raises(CheckpointError, match="num_classes=10"):
        crossformers.create_model("crossformer_tiny", checkpoint_path=path, **kw)
    tuned = crossformers.create_model("crossformer_tiny", checkpoint_path=path, num_classes=4, **kw)
    assert tuned.head.fc.out_features == 4
    torch.testing.assert_close(tuned.patch_embed.projs[0].weight, official_state_dict(t)["patch_embed.projs.0.weight"])


def test_pretrained_fails_fast_and_backbone_features():
    with pytest.raises(PretrainedUnavailableError, match="checkpoint_path"):
        crossformers.create_model("crossformer_small", pretrained=True)
    feats = crossformers.create_model("crossformer_small", features_only=True).eval()
    with torch.no_grad():
        outs = feats(torch.randn(1, 3, 256, 192))
    assert [tuple(o.shape[1:]) for o in outs] == [(96, 64, 48), (192, 32, 24), (384, 16, 12), (768, 8, 6)]


def test_pickled_model_still_converts_official_checkpoints():
    """A pickled model keeps its family's converter (a method, no load hook): load_checkpoint converts once."""
    import io

    meta, t = load_case("crossformer_pp_tiny96")
    buf = io.BytesIO()
    torch.save(model_for_case(meta), buf)
    buf.seek(0)
    model = torch.load(buf, weights_only=False)  # our own object, written just above
    crossformers.load_checkpoint(model, official_state_dict(t))  # official layout: the model's convert_state_dict
    with pytest.raises(crossformers.CheckpointError, match=r"official layout.*crossformers.load_checkpoint"):
        model.load_state_dict(official_state_dict(t))  # plain load_state_dict converts nothing (no hook)
    with torch.no_grad():
        torch.testing.assert_close(model(t["input"]), t["logits"], **meta["tolerance"])
