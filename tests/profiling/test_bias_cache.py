"""The inference bias caches (FcaFormer, CrossFormer): when they fill, that train(), new weights and in-place updates
invalidate them, and their frozen form for compiling ahead of time."""
from __future__ import annotations

import pytest
import torch
from profiling_cases import one_thread  # noqa: F401  (autouse fixture)

import crossformers
from crossformers.layers.bias_cache import bias_caches, fill_caches, frozen_caches
from crossformers.models.fcaformer import FcaBlock
from crossformers.profiling import set_bias_cache

HYBRID = dict(img_size=64, embed_dim=(16, 32, 48, 64), depths=(1, 1, 3, 2), num_heads=(0, 0, 2, 4), num_classes=5)
PLAIN = dict(img_size=64, embed_dim=32, depth=3, num_heads=2, num_classes=5)


def build(name: str) -> torch.nn.Module:
    model = crossformers.create_model(name, **(HYBRID if name == "fcaformer_l1" else PLAIN))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("rel_pos.table", "cross_bias")):
                p.normal_()
            if n.endswith("gamma"):
                p.fill_(1.0)
    return model.eval()


def blocks(model: torch.nn.Module) -> list[FcaBlock]:
    return [m for m in model.modules() if isinstance(m, FcaBlock)]


def cached(model: torch.nn.Module) -> list[int]:
    return [len(b.bias_cache) for b in blocks(model)]


@pytest.mark.parametrize("name", ["fcaformer_l1", "fcaformer_l0"])
def test_cache_fills_only_in_inference(name):
    model = build(name)
    x = torch.randn(1, 3, 64, 64)
    model(x)  # eval, but gradients on: nothing cached
    assert not any(cached(model))
    with torch.no_grad():
        y1 = model(x)
    assert all(n == 1 for n in cached(model))
    with torch.inference_mode():
        y2 = model(x)
        model(torch.randn(1, 3, 48, 80))  # another grid: a second entry
    assert all(n == 2 for n in cached(model))
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    model.train()
    assert not any(cached(model))
    with torch.no_grad():
        model(x)  # training mode: not cached
    assert not any(cached(model))


@pytest.mark.parametrize("name", ["fcaformer_l1", "fcaformer_l0"])
def test_train_then_eval_recomputes(name):
    model = build(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    model.train()
    with torch.no_grad():
        for b in blocks(model):
            if b.rel_pos is not None:
                b.rel_pos.table.data.add_(1.0)  # .data: bypasses the version counter, like a careless optimizer
            if b.num_sources:
                b.cross_bias.data.mul_(-1)
    model.eval()
    with torch.no_grad():
        after = model(x)
    fresh = build(name)
    fresh.load_state_dict(model.state_dict())
    set_bias_cache(fresh, False)
    with torch.no_grad():
        expected = fresh(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["fcaformer_l1", "fcaformer_l0"])
def test_loading_weights_invalidates(name):
    model, other = build(name), build(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        expected = other(x)
    assert any(cached(model))
    model.load_state_dict(other.state_dict())
    assert not any(cached(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
    # assign=True replaces the parameter objects (fresh version counters): still invalidated
    with torch.no_grad():
        model(x)
    third = build(name)
    model.load_state_dict(third.state_dict(), assign=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), third(x), rtol=0, atol=1e-6)


def test_in_place_updates_invalidate_without_train_or_load():
    """An EMA-style update (in place, eval mode, no grad) changes the tables' version: the cache misses."""
    model = build("fcaformer_l1")
    x = torch.randn(1, 3, 64, 64)
    target = build("fcaformer_l1")
    with torch.no_grad():
        model(x)
        for p, q in zip(model.parameters(), target.parameters(), strict=True):
            p.lerp_(q, 1.0)  # what timm's ModelEmaV3 does, here with weight 1: model becomes target
        torch.testing.assert_close(model(x), target(x), rtol=0, atol=1e-6)


def test_cache_switch():
    model = build("fcaformer_l1")
    x = torch.randn(1, 3, 64, 64)
    set_bias_cache(model, False)
    with torch.no_grad():
        y = model(x)
    assert not any(cached(model))
    set_bias_cache(model, True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, rtol=0, atol=1e-6)
    assert any(cached(model))


def _small_crossformer() -> torch.nn.Module:
    torch.manual_seed(0)
    return crossformers.create_model("crossformer_tiny", img_size=64, embed_dim=16, depths=(1, 2, 1, 1),
                                     num_heads=(1, 2, 2, 4), group_size=(4, 4, 4, 2), num_classes=5).eval()


@pytest.mark.parametrize("name", ["fcaformer_l1", "crossformer"])
def test_frozen_caches_serve_the_stored_bias_as_buffers_until_the_block_ends(name):
    """Inside frozen_caches the bias of the last inference call is a non-persistent buffer of its cache, served by
    key whatever the parameters' versions (so traced as a constant); the block's end restores version checks."""
    model = _small_crossformer() if name == "crossformer" else build(name)
    x = torch.randn(1, 3, 64, 64)
    keys = set(model.state_dict())
    with torch.no_grad():
        before = model(x)
        bias_params = [p for n, p in model.named_parameters() if ".pos." in n or n.endswith(("rel_pos.table",
                                                                                             "cross_bias"))]
        assert bias_params
        with frozen_caches(model):
            frozen = [n for n, _ in model.named_buffers() if ".frozen_" in n]
            assert frozen and set(model.state_dict()) == keys  # non-persistent: checkpoints are unchanged
            for p in bias_params:
                p.add_(torch.randn_like(p))  # would invalidate every entry outside the block
            torch.testing.assert_close(model(x), before, rtol=0, atol=0)
        assert not [n for n, _ in model.named_buffers() if ".frozen_" in n]
        assert (model(x) - before).abs().max() > 1e-4  # the changed parameters count again


def test_freezing_again_reuses_the_buffers_and_a_new_size_inside_the_block_is_dropped_after_it():
    """Freezing per call (the dynamo path) exposes the same tensor objects each time, from a kept list of caches;
    a size first seen inside the block is computed and cached as usual, and the block's end still removes every
    frozen buffer; the next freeze exposes the new entries too."""
    model = _small_crossformer()
    caches = bias_caches(model)
    assert caches and all(c in caches for c in model.modules() if type(c).__name__ == "InferenceCache")
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 96, 96)

    def frozen_buffers() -> dict[str, torch.Tensor]:
        return {n: b for n, b in model.named_buffers() if ".frozen_" in n}

    with torch.no_grad():
        expected_y = model(y)
        for c in caches:
            c.clear()
        model(x)
        with frozen_caches(model, caches):
            first = frozen_buffers()
        with frozen_caches(model, caches):
            again = frozen_buffers()
            assert first and first.keys() == again.keys()
            assert all(first[n] is again[n] for n in first)
            torch.testing.assert_close(model(y), expected_y, rtol=0, atol=0)  # missing: computed, then cached
        assert not frozen_buffers()
        with frozen_caches(model, caches):
            assert len(frozen_buffers()) > len(first)  # the 96-px entries (some sizes share a key)
        assert not frozen_buffers()


def test_export_inside_frozen_caches_records_the_bias_as_constants():
    """The exported graph of a CrossFormer no longer computes the dynamic position bias (an MLP per block) and
    gives the eager output."""
    model = _small_crossformer()
    x = torch.randn(1, 3, 64, 64)

    def linear_nodes(program) -> int:
        return sum(n.op == "call_function" and "linear" in str(n.target) for n in program.graph.nodes)

    with torch.no_grad():
        expected = model(x)
        plain = torch.export.export(model, (x,))
        with frozen_caches(model):
            frozen = torch.export.export(model, (x,))
    assert any(".frozen_" in name for name in frozen.graph_signature.buffers)
    assert linear_nodes(frozen) < linear_nodes(plain)
    torch.testing.assert_close(frozen.module()(x), expected, rtol=0, atol=1e-6)


def test_fill_caches_stores_ordinary_tensors_even_from_inference_mode():
    """fill_caches runs outside inference mode, so the cached biases can become buffers of a traced graph (an
    inference tensor would have no version counter and could not be exported)."""
    model = build("fcaformer_l1")
    with torch.inference_mode():
        fill_caches(model, torch.randn(1, 3, 64, 64))
    assert all(n == 1 for n in cached(model))
    stored = [t for b in blocks(model) for v in b.bias_cache._store.values() for t in v if t is not None]
    assert stored and not any(t.is_inference() or t.requires_grad for t in stored)
