"""Mean attention distance on constructed cases with known answers: forced-uniform attention gives the analytic mean
distance of the attended set (computed here independently, from the papers' definitions), self-attention gives 0."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from crossformers.analysis import capture_attention, mean_attention_distance
from crossformers.analysis.measures import record_distance_sums

import analysis_helpers as helpers
from analysis_helpers import one_thread  # noqa: F401 (autouse fixture)


def mean_pair_distance(points: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """For every point: mean Euclidean distance to every key (default: the points themselves)."""
    keys = points if keys is None else keys
    return np.sqrt(((points[:, None, :] - keys[None, :, :]) ** 2).sum(-1)).mean(1)


def uniform_group_distance(H: int, W: int, G: int, I: int, lda: bool, stride: float) -> float:  # noqa: E741
    """Mean over all tokens of the mean distance to the members of their SDA/LDA group, in pixels (CrossFormer's rule:
    a map no larger than G is one SDA group of its smaller side)."""
    if min(H, W) <= G:
        G, lda = min(H, W), False
    per_token = [mean_pair_distance(np.array(sorted(g), dtype=float)) for g in helpers.brute_force_groups(H, W, G, I, lda)]
    return float(np.concatenate(per_token).mean()) * stride


@pytest.mark.parametrize("size", [(40, 40), (40, 48)])
def test_uniform_crossformer_attention_gives_the_analytic_distance(size):
    model = helpers.tiny_crossformer()
    helpers.zero_attention_logits(model)
    x = torch.randn(2, 3, *size)
    result = {e["name"]: e for e in mean_attention_distance(model, x)}
    assert len(result) == 6
    for s, stage in enumerate(model.stages):
        H, W = size[0] // 4, size[1] // 4  # CEL stem: floor; merges pad odd maps: ceil
        for _ in range(s):
            H, W = -(-H // 2), -(-W // 2)
        for j, blk in enumerate(stage.blocks):
            e = result[f"stages.{s}.blocks.{j}"]
            expected = uniform_group_distance(H, W, blk.group_size, blk.interval, blk.lda, 4 * 2 ** s)
            assert e["mean_distance_px"] == pytest.approx(expected, rel=1e-5), e["name"]
            assert e["per_head_px"] == pytest.approx([expected], rel=1e-5)
            assert e["num_queries"] == H * W
            assert tuple(e["meta"]["grid"]) == (H, W)
    # the LDA block of stage 0 really is padded (10 x 10 -> 16 x 16) and reaches further than the SDA block
    lda = result["stages.0.blocks.1"]
    assert lda["meta"]["lda"] and lda["meta"]["padded"][0] == 16
    assert lda["mean_distance_px"] > result["stages.0.blocks.0"]["mean_distance_px"]


def test_uniform_distance_of_one_query():
    model = helpers.tiny_crossformer()
    helpers.zero_attention_logits(model)
    [e] = mean_attention_distance(model, torch.randn(1, 3, 40, 40), blocks=["stages.0.blocks.1"], queries=[(2, 2)])
    # token (0, 0) of the LDA block (G=4, I=2) attends uniformly to (0|2|4|6, 0|2|4|6)
    members = np.array([(y, x) for y, x in itertools.product(range(0, 8, 2), repeat=2)], dtype=float)
    expected = mean_pair_distance(np.zeros((1, 2)), members)[0] * 4
    assert e["mean_distance_px"] == pytest.approx(expected, rel=1e-6)
    assert e["num_queries"] == 1


def test_uniform_fcaformer_distance_with_and_without_cross_tokens():
    model = helpers.tiny_fcaformer()
    helpers.zero_attention_logits(model)
    result = {e["name"]: e for e in mean_attention_distance(model, torch.randn(2, 1, 48, 48))}
    for stage, side, stride in ((0, 12, 4), (1, 6, 8)):
        tokens = np.array(list(itertools.product(range(side), repeat=2)), dtype=float)
        # cross tokens: the 7x7 stride-4 merge is centred on tokens (4a, 4b) (FcaFormer Sec. 3.1)
        cross = np.array(list(itertools.product(range(0, side, 4), repeat=2)), dtype=float)
        for j in range(len(model.stages[stage].blocks)):
            e = result[f"stages.{stage}.blocks.{j}"]
            keys = np.concatenate([tokens] + [cross] * j)  # block j reads the cross tokens of its j predecessors
            assert e["tokens_mean_distance_px"] == pytest.approx(mean_pair_distance(tokens).mean() * stride, rel=1e-5)
            assert e["mean_distance_px"] == pytest.approx(mean_pair_distance(tokens, keys).mean() * stride, rel=1e-5)
            assert e["cross_share"] == pytest.approx(j * len(cross) / len(keys), rel=1e-5)
            assert e["meta"]["sources"] == [f"stages.{stage}.blocks.{i}" for i in range(j)]


def test_self_attention_gives_distance_zero():
    """FcaFormer with all weight on the query's own token: a +60 bias at offset 0, -60 on cross tokens."""
    model = helpers.tiny_fcaformer()
    helpers.zero_attention_logits(model)
    with torch.no_grad():
        for blk in [b for s in model.stages[:2] for b in s.blocks]:
            blk.rel_pos.table[:, 0, 0] = 60.0
            if blk.num_sources:
                blk.cross_bias.fill_(-60.0)
    for e in mean_attention_distance(model, torch.randn(1, 1, 48, 48)):
        assert e["mean_distance_px"] == pytest.approx(0.0, abs=1e-9)
        assert e["cross_share"] == pytest.approx(0.0, abs=1e-9)


def test_identity_probabilities_on_grouped_records_give_zero():
    """CrossFormer records (groups with padding): replacing the captured probabilities by the identity gives 0."""
    model = helpers.tiny_crossformer()
    with torch.no_grad(), capture_attention(model) as cap:
        model(torch.randn(2, 3, 40, 40))
    for rec in cap.records:
        n = rec.probs.shape[-1]
        rec.probs = torch.eye(n).expand_as(rec.probs).clone()
        sums, count = record_distance_sums(rec)
        assert count == 2 * rec.meta["grid"][0] * rec.meta["grid"][1]
        assert np.allclose(sums, 0.0)


def test_class_tokens_are_excluded():
    """Plain FcaFormer (class token) and CrossViT: uniform attention, distance over patch keys only."""
    model = helpers.tiny_fcaformer_plain()
    helpers.zero_attention_logits(model)
    tokens = np.array(list(itertools.product(range(4), repeat=2)), dtype=float)
    cross = np.zeros((1, 2))
    for j, e in enumerate(mean_attention_distance(model, torch.randn(1, 1, 32, 32))):
        keys = np.concatenate([tokens] + [cross] * j)
        assert e["mean_distance_px"] == pytest.approx(mean_pair_distance(tokens, keys).mean() * 8, rel=1e-5)
        assert e["num_queries"] == 16
    model = helpers.tiny_crossvit()
    helpers.zero_attention_logits(model)
    out = {e["name"]: e for e in mean_attention_distance(model, torch.randn(1, 1, 32, 32))}
    grid = np.array(list(itertools.product(range(8), repeat=2)), dtype=float)
    assert out["encoders.0.branches.0.0"]["mean_distance_px"] == pytest.approx(mean_pair_distance(grid).mean() * 4)
    # branch 1 sees the input resized 32 -> 24: 3x3 patches of 8 px = 32/3 px of the input
    grid = np.array(list(itertools.product(range(3), repeat=2)), dtype=float)
    assert out["encoders.0.branches.1.0"]["mean_distance_px"] == pytest.approx(
        mean_pair_distance(grid).mean() * 32 / 3)
    assert out["encoders.0.fusion.blocks.0.0"]["mean_distance_px"] is None  # the CLS query has no position
