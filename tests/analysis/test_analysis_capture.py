"""capture_attention leaves the model untouched, records what the block computed; attention maps land on the right
pixels; cross-token shares; block selection errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from crossformers.analysis import (
    NoAttentionError,
    QueryError,
    UnsupportedModelError,
    attention_maps,
    capture_attention,
    cross_token_share,
    model_blocks,
)
from crossformers.analysis.geometry import group_coordinates

from analysis_helpers import (  # noqa: F401 (one_thread: autouse fixture)
    one_thread,
    tiny_crossformer,
    tiny_crossvit,
    tiny_fcaformer,
    tiny_fcaformer_plain,
    zero_attention_logits,
)


@pytest.mark.parametrize("make,shape", [(tiny_crossformer, (2, 3, 40, 44)), (tiny_fcaformer, (2, 1, 48, 48)),
                                        (tiny_fcaformer_plain, (2, 1, 32, 32)), (tiny_crossvit, (2, 1, 32, 32))])
def test_capture_is_transparent(make, shape):
    model = make()
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x)
        with capture_attention(model) as cap:
            out = model(x)
            flags = [b.attention.fused_attn for b in cap.blocks]
    assert torch.allclose(out, ref, atol=1e-5)
    assert flags and not any(flags)  # explicit softmax only inside the context
    assert all(b.attention.fused_attn for b in model_blocks(model) if b.has_attention)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # every hook removed
    assert [r.name for r in cap.records] == [b.name for b in cap.blocks]
    for rec in cap.records:
        assert rec.probs.ndim == 5 and rec.probs.shape[0] == 2
        assert torch.allclose(rec.probs.sum(-1), torch.ones(()), atol=1e-5)
        assert rec.image_size == shape[-2:]


@pytest.mark.parametrize("make,shape", [(tiny_crossformer, (1, 3, 40, 44)), (tiny_fcaformer, (1, 1, 48, 48)),
                                        (tiny_fcaformer_plain, (1, 1, 32, 32))])
def test_forward_features_also_records_the_image_size(make, shape):
    model = make()
    with torch.no_grad(), capture_attention(model) as cap:
        model.forward_features(torch.randn(*shape))
    assert cap.records and {r.image_size for r in cap.records} == {shape[-2:]}


def test_only_chosen_blocks_switch_and_record():
    model = tiny_fcaformer()
    with torch.no_grad(), capture_attention(model, blocks=["stages.1.*", 2]) as cap:
        model(torch.randn(1, 1, 48, 48))
        assert model.stages[0].blocks[0].sdpa.fused_attn and not model.stages[0].blocks[2].sdpa.fused_attn
    assert [r.name for r in cap.records] == ["stages.0.blocks.2", "stages.1.blocks.0", "stages.1.blocks.1"]


def test_blocks_without_attention_are_refused():
    model = tiny_fcaformer()
    with pytest.raises(NoAttentionError, match=r"stages\.2\.blocks\.0 \(convnext\) has no attention"):
        with capture_attention(model, blocks=["stages.2.blocks.0"]):
            pass
    with pytest.raises(NoAttentionError, match="no attention block matches"):
        with capture_attention(model, blocks=["stages.3.*"]):
            pass
    with pytest.raises(UnsupportedModelError, match="no block matches"):
        with capture_attention(model, blocks=["stages.9.blocks.0"]):
            pass
    with pytest.raises(UnsupportedModelError, match="does not describe its blocks .no block_infos"):
        with capture_attention(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)).eval()):
            pass

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))

    with pytest.raises(NoAttentionError, match="no attention blocks"):
        with capture_attention(Plain()):
            pass


def test_crossformer_lda_map_covers_exactly_the_group():
    """The painted LDA map of a query is non-zero exactly on the cells of the query's group members (brute force)."""
    model = tiny_crossformer()
    zero_attention_logits(model)
    y, x = 21.0, 13.0  # token (5, 3) of the 10 x 10 stage-1 map (stride 4)
    [m] = attention_maps(model, torch.randn(1, 3, 40, 40), queries=[(y, x)], blocks=["stages.0.blocks.1"])
    assert m.query_centre == (22.0, 14.0)
    members = {(ty, tx) for ty, tx in itertools.product(range(10), repeat=2)
               if ty // 8 == 0 and tx // 8 == 0 and ty % 2 == 1 and tx % 2 == 1}  # region (0, 0), phase (1, 1)
    expected = np.zeros((40, 40), dtype=bool)
    for ty, tx in members:
        expected[4 * ty:4 * ty + 4, 4 * tx:4 * tx + 4] = True
    panel = m.panels["tokens"]
    assert np.array_equal(panel > 0, expected)
    assert np.allclose(panel[expected], 1 / len(members))
    assert m.mass == pytest.approx({"tokens": 1.0})
    assert (m.meta["group_size"], m.meta["interval"], m.meta["lda"], tuple(m.meta["padded"])) == (4, 2, True, (16, 16))


def test_crossformer_maps_of_every_token_follow_group_coordinates():
    model = tiny_crossformer()
    with torch.no_grad(), capture_attention(model, blocks=["stages.1.*"]) as cap:
        model(torch.randn(1, 3, 40, 40))
    for rec in cap.records:
        G, I, lda = rec.meta["group_size"], rec.meta["interval"], rec.meta["lda"]  # noqa: E741
        coords, valid = group_coordinates(5, 5, G, I, lda)
        pos = rec.key_positions()
        assert np.allclose(pos[valid], coords[valid] * 8 + 4)  # stage 2: stride 8, centre (i + 0.5) * 8
        assert np.isnan(pos[~valid]).all()  # padding has no position


def test_fcaformer_maps_split_regular_and_cross_tokens():
    model = tiny_fcaformer()
    zero_attention_logits(model)
    maps = attention_maps(model, torch.randn(2, 1, 48, 48), queries=[(20, 30), (1, 1)], blocks=["stages.0.*"])
    assert len(maps) == 2 * 2 * 3
    m = maps[2]  # image 0, query (20, 30), block 2: 144 tokens + 2 x 9 cross tokens, uniform
    assert m.block.name == "stages.0.blocks.2"
    assert m.mass["cross"] == pytest.approx(18 / 162) and m.mass["tokens"] == pytest.approx(144 / 162)
    assert m.mass["cross:stages.0.blocks.0"] == pytest.approx(9 / 162)
    assert set(m.panels) == {"tokens", "cross", "cross:stages.0.blocks.0", "cross:stages.0.blocks.1"}
    # every pixel belongs to one token cell (the border strip to the nearest token) and one cross-token cell
    assert m.panels["tokens"] == pytest.approx(np.full((48, 48), 1 / 162))
    assert m.panels["cross:stages.0.blocks.1"] == pytest.approx(np.full((48, 48), 1 / 162))
    assert m.query_centre == (20.5, 28.5)
    with pytest.raises(QueryError, match="outside"):
        attention_maps(model, torch.randn(1, 1, 48, 48), queries=[(48, 0)])
    with pytest.raises(QueryError, match="head 5"):
        attention_maps(model, torch.randn(1, 1, 48, 48), head=5)


def test_crossvit_fusion_maps_are_cls_to_patches():
    model = tiny_crossvit()
    maps = attention_maps(model, torch.randn(1, 1, 32, 32), blocks=["encoders.0.fusion.*"])
    assert [m.block.kind for m in maps] == ["cross", "cross"]
    small_cls, large_cls = maps
    assert small_cls.query_centre is None and small_cls.meta["key_branch"] == 1
    assert small_cls.mass["cls"] + small_cls.mass["tokens"] == pytest.approx(1.0)
    # branch 1 patches: 3 x 3 cells of 32/3 px; the painted mass per cell area equals the patch mass
    assert small_cls.panels["tokens"].sum() == pytest.approx(small_cls.mass["tokens"] * (32 / 3) ** 2, rel=0.1)
    assert large_cls.meta["key_branch"] == 0 and large_cls.panels["tokens"].shape == (32, 32)


def test_cross_token_share_numbers():
    model = tiny_fcaformer()
    zero_attention_logits(model)
    res = cross_token_share(model, torch.randn(3, 1, 48, 48))
    assert res["sources"] == ["stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0"]
    shares = {b["name"]: b for b in res["blocks"]}
    b2 = shares["stages.0.blocks.2"]
    assert b2["cross_share"] == pytest.approx(18 / 162)
    assert b2["per_source"] == pytest.approx({"stages.0.blocks.0": 9 / 162, "stages.0.blocks.1": 9 / 162})
    assert b2["per_token_ratio"] == pytest.approx(1.0)  # uniform: a cross token gets as much as a regular one
    assert shares["stages.1.blocks.1"]["cross_share"] == pytest.approx(4 / 40)
    assert res["matrix"][0] == [None, None, None] and res["matrix"][2][:2] == pytest.approx([9 / 162] * 2)
    with pytest.raises(UnsupportedModelError, match="not an FcaFormer"):
        cross_token_share(tiny_crossformer(), torch.randn(1, 3, 40, 40))
