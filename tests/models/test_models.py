"""timm-style checks run on every registered crossformers model (tests/test_models.py of timm, adapted).

Models run at small sizes so the whole file stays fast on 2 CPU cores; full-size checks live in the family files.
"""
from __future__ import annotations

import re

import pytest
import timm
import torch

import crossformers
from crossformers.errors import InputSizeError
from crossformers.layers.linear import set_onednn_linear, set_packed_weights

MODELS = crossformers.list_models()
#: one name per model class and structural variant: tests of class-level logic (checkpoint loading, recomputation,
#: pruning) run on these; the per-name tests (shapes, cfgs, gradients reaching every parameter) on every name
ONE_PER_CLASS = ["crossformer_tiny", "crossformer_pp_small", "fcaformer_nano", "fcaformer_l2", "fcaformer_l0",
                 "crossvit_9_240", "crossvit_9_dagger_240", "crossvit_15_dagger_408"]


def small(name: str, **kwargs) -> torch.nn.Module:
    """The model with its real architecture, small head, built for 64x64 input."""
    cfg = timm.models.get_pretrained_cfg(crossformers.factory.timm_name(name)).to_dict()
    return crossformers.create_model(name, num_classes=5, img_size=64, **kwargs), cfg["input_size"][0]


def test_registry_lists_every_family_name():
    assert {"fcaformer_l0", "fcaformer_l1", "fcaformer_l2", "fcaformer_l3", "fcaformer_l4",
            "fcaformer_nano"} <= set(MODELS)
    for name in MODELS:  # timm sees our names after `import crossformers`
        assert crossformers.factory.timm_name(name) in timm.list_models()


def test_unknown_name_suggests_close_names():
    with pytest.raises(crossformers.UnknownModelError, match="fcaformer_l1"):
        crossformers.create_model("fcaformer_l11")


@pytest.mark.parametrize("name", MODELS)
def test_forward_at_several_sizes(name):
    model, chans = small(name)
    model.eval()
    with torch.no_grad():
        for h, w in [(64, 64), (96, 64), (48, 80)]:
            assert model(torch.randn(2, chans, h, w)).shape == (2, 5)


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model, chans = small(name)
    model.train()
    out = model(torch.randn(2, chans, 64, 64))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", MODELS)
def test_features_only_matches_feature_info(name):
    model, chans = small(name)
    feats = crossformers.create_model(name, features_only=True, img_size=64).eval()
    x = torch.randn(1, chans, 64, 96)
    with torch.no_grad():
        outs = feats(x)
    info = feats.feature_info
    assert len(outs) == len(info.channels())
    for o, c, r in zip(outs, info.channels(), info.reduction(), strict=True):
        assert o.shape[1] == c
        assert o.shape[2] == -(-64 // r) and o.shape[3] == -(-96 // r)


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_and_head(name):
    model, chans = small(name)
    model.eval()
    x = torch.randn(2, chans, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        feats = model.forward_features(x)
        only = model.forward_intermediates(x, indices=1, intermediates_only=True)
        pooled = model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(final, feats)
    assert len(inter) == len(model.feature_info)
    assert len(only) == 1 and torch.equal(only[0], inter[-1])
    assert all(t.ndim == 4 for t in inter)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name):
    model, chans = small(name)
    model.reset_classifier(11)
    assert model(torch.randn(2, chans, 64, 64)).shape == (2, 11)
    model.reset_classifier(0)
    assert model(torch.randn(2, chans, 64, 64)).shape == (2, model.num_features)


def _backward_recomputing(model: torch.nn.Module, x: torch.Tensor) -> set[str]:
    """Run forward + backward of ``model(x).sum()``; names of the modules whose forward ran again DURING the backward
    pass, i.e. were recomputed by activation checkpointing."""
    names = {id(m): n for n, m in model.named_modules()}
    rerun: set[str] = set()
    in_backward = [False]

    def note(module, args):
        if in_backward[0]:
            rerun.add(names[id(module)])

    hooks = [m.register_forward_pre_hook(note) for m in model.modules()]
    try:
        out = model(x).sum()
        in_backward[0] = True
        out.backward()
    finally:
        for h in hooks:
            h.remove()
    return rerun


# parameters of the transformer / ConvNeXt blocks (CrossViT: the multi-scale encoders, fusion included); stems,
# downsampling layers, final norms and heads run once
BLOCK_PARAM = re.compile(r"^(stages\.\d+\.blocks|blocks|encoders)\.")


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_grad_checkpointing_recomputes_every_block_with_the_same_gradients(name):
    model, chans = small(name)
    model.eval()  # no BN statistics updates, no drop path
    x = torch.randn(2, chans, 64, 64)
    assert _backward_recomputing(model, x) == set()  # off by default: nothing runs twice
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    rerun = _backward_recomputing(model, x)
    recomputed = {n for n, _ in model.named_parameters() if any(n.startswith(m + ".") for m in rerun if m)}
    blocks = {n for n, _ in model.named_parameters() if BLOCK_PARAM.match(n)}
    assert blocks and blocks <= recomputed, f"not recomputed: {sorted(blocks - recomputed)[:5]}"
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_no_weight_decay_names_exist(name):
    model, _ = small(name)
    names = {n for n, _ in model.named_parameters()}
    nwd = model.no_weight_decay()
    assert nwd and nwd <= names


@pytest.mark.parametrize("name", ["fcaformer_nano", "fcaformer_l0", "crossformer_tiny", "crossvit_9_240"])
def test_torch_compile_full_graph(name):
    """Dynamo traces the whole model without graph breaks (aot_eager: no C++ compiler needed)."""
    model, chans = small(name)
    model.eval()
    x = torch.randn(2, chans, 64, 64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_features_only_loads_a_classifier_checkpoint_strictly(name, tmp_path):
    """A classification checkpoint loads into the feature extractor: head dropped explicitly, all else must match."""
    model, chans = small(name)
    path = tmp_path / "clf.pth"
    torch.save(model.state_dict(), path)
    feats = crossformers.create_model(name, features_only=True, img_size=64, checkpoint_path=path)
    inner = dict(feats.model.named_parameters())
    for k, v in model.named_parameters():
        if k in inner:
            assert torch.equal(inner[k], v), k
    broken = {k: v for k, v in model.state_dict().items() if "head" not in k}
    broken.pop(next(iter(broken)))  # a backbone key missing is an error, not silently ignored
    torch.save(broken, path)
    with pytest.raises(crossformers.CheckpointError, match="missing"):
        crossformers.create_model(name, features_only=True, img_size=64, checkpoint_path=path)


@pytest.mark.parametrize("name", ["fcaformer_l1", "fcaformer_l0", "crossformer_tiny", "crossformer_pp_small",
                                  "crossvit_9_240"])
def test_whole_model_pickles(name):
    """torch.save(model) and copy.deepcopy work: our load hooks are picklable objects."""
    import copy
    import io

    model, chans = small(name)
    model.eval()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)  # our own object, written just above
    x = torch.randn(1, chans, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(copy.deepcopy(loaded)(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_empty_batch_gives_empty_logits_and_maps(name):
    """A batch of 0 images (e.g. the last, empty shard of a split) gives (0, num_classes) logits and zero-batch
    intermediate maps of the same shape as for one image."""
    model, chans = small(name)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(0, chans, 64, 80)).shape == (0, 5)
        one = model.forward_intermediates(torch.randn(1, chans, 64, 80), intermediates_only=True)
        empty = model.forward_intermediates(torch.randn(0, chans, 64, 80), intermediates_only=True)
    assert [tuple(t.shape) for t in empty] == [(0, *t.shape[1:]) for t in one]


@pytest.mark.parametrize("name, kwargs", [
    ("crossformer_tiny", {}), ("crossformer_pp_small", {}), ("fcaformer_nano", {}), ("fcaformer_l0", {}),
    ("fcaformer_l1", {"tme": False}), ("fcaformer_l1", {"fca": False}), ("crossvit_9_240", {}),
    ("crossvit_9_240", {"fusion": "pairwise"}), ("crossvit_9_240", {"fusion": "all_attn"}),
])
def test_empty_batch_through_features_only(name, kwargs):
    """features_only models (and the ablation / fusion variants) return zero-batch maps for an empty batch."""
    _, chans = small(name)
    feats = crossformers.create_model(name, features_only=True, img_size=64, **kwargs).eval()
    with torch.no_grad():
        outs = feats(torch.randn(0, chans, 64, 96))
    assert len(outs) == len(feats.feature_info.channels())
    for o, c, r in zip(outs, feats.feature_info.channels(), feats.feature_info.reduction(), strict=True):
        assert tuple(o.shape) == (0, c, -(-64 // r), -(-96 // r))


@pytest.mark.parametrize("name", ["crossformer_tiny", "crossformer_pp_small", "fcaformer_nano", "fcaformer_l1",
                                  "fcaformer_l0", "crossvit_9_240"])
def test_create_load_and_run_under_inference_mode(name, tmp_path):
    """Serving code: create the model from a checkpoint, run it and convert it to bfloat16, all inside
    ``torch.inference_mode()`` (parameters are then inference tensors, which have no version counter)."""
    ref, chans = small(name)
    ref.eval()
    path = tmp_path / "weights.pth"
    torch.save(ref.state_dict(), path)
    x = torch.randn(2, chans, 64, 64)
    with torch.no_grad():
        want = ref(x)
    with torch.inference_mode():
        model = crossformers.create_model(name, num_classes=5, img_size=64, checkpoint_path=path).eval()
        set_onednn_linear(model)
        set_packed_weights(model)
        assert next(model.parameters()).is_inference()
        first, second = model(x), model(x)
        torch.testing.assert_close(first, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(second, first, atol=0, rtol=0)
        model.to(torch.bfloat16)
        low = model(x.bfloat16())
    assert low.dtype == torch.bfloat16 and low.shape == (2, 5)
    assert torch.isfinite(low.float()).all()
    # a model made outside inference mode, converted inside it, keeps working outside it too
    with torch.inference_mode():
        ref.to(torch.bfloat16)
    with torch.no_grad():
        assert ref(x.bfloat16()).shape == (2, 5)


def test_inference_mode_weights_loaded_in_place_are_not_served_from_a_stale_bias_cache(tmp_path):
    """Inference tensors have no version counter, so their position biases are not cached: weights loaded in place
    inside inference mode take effect at once."""
    model, _ = small("crossformer_tiny")
    other, _ = small("crossformer_tiny")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = other.eval()(x)
    with torch.inference_mode():
        model = crossformers.create_model("crossformer_tiny", num_classes=5, img_size=64).eval()
        model(x)
        with torch.no_grad():
            for p, q in zip(model.parameters(), other.parameters(), strict=True):
                p.copy_(q)  # in place: same storage, no version change visible
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name, chans, advice", [
    ("fcaformer_nano", 3, "convert the images to grey (e.g. x.mean(1, keepdim=True)), or create the model with "
                          "in_chans=3"),
    ("crossformer_tiny", 1, "convert the grey images to RGB (e.g. x.expand(-1, 3, -1, -1)), or create the model "
                            "with in_chans=1"),
    ("crossvit_9_240", 4, "convert the images to 3 channels, or create the model with in_chans=4"),
])
def test_wrong_channel_count_suggests_the_right_conversion(name, chans, advice):
    model, own = small(name)
    with pytest.raises(InputSizeError) as err:
        model(torch.randn(1, chans, 64, 64))
    assert str(err.value).endswith(f"{own}-channel input but got {chans} channels: {advice}")


# ---- timm's peer checks (timm tests/test_models.py): FX tracing and default cfgs --------------------------------

FX_MODELS = ["fcaformer_nano", "fcaformer_l0", "fcaformer_l1", "crossformer_tiny", "crossformer_pp_small",
             "crossvit_9_240", "crossvit_9_dagger_240"]  # one per structural variant


def fx_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model traced by torchvision's FX feature extraction with timm's leaf modules/functions (as timm's suite),
    returning its final output."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=kwargs)


@pytest.mark.parametrize("onednn", [False, True], ids=["native_linear", "onednn_linear"])
@pytest.mark.parametrize("name", FX_MODELS)
def test_fx_traced_model_matches_eager_at_other_sizes(name, onednn):
    """Symbolic tracing keeps the size-dependent padding/grouping as leaf calls: the traced graph equals the eager
    model at sizes that need padding (not baked in at trace time). On both linear paths, whichever this machine
    picks by default: timm's Mlp is traced through (its ``norm`` included), the oneDNN Mlp is a leaf."""
    model, chans = small(name, onednn_linear=onednn)
    model.eval()
    traced = fx_model(model)
    with torch.no_grad():
        for h, w in [(64, 64), (80, 112)]:  # 80x112: SDA/LDA maps need padding (and multiples of 16 for L0)
            x = torch.randn(2, chans, h, w)
            out = next(iter(traced(x).values()))
            torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FX_MODELS)
def test_fx_traced_model_backward_reaches_every_parameter(name):
    model, chans = small(name)
    model.train()
    traced = fx_model(model)
    out = next(iter(traced(torch.randn(2, chans, 64, 64)).values()))
    assert out.shape == (2, 5)
    out.square().mean().backward()
    missing = [n for n, p in traced.named_parameters() if p.grad is None]
    assert not missing, missing
    assert sum(p.numel() for p in traced.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["fcaformer_nano", "crossformer_tiny"])
def test_fx_feature_extractor_matches_getter(name):
    """timm's ``feature_cls='fx'`` works and gives the getter's maps (CrossFormer's stages are NHWC, as Swin's)."""
    torch.manual_seed(0)
    fx = crossformers.create_model(name, features_only=True, feature_cls="fx", img_size=64).eval()
    torch.manual_seed(0)  # the same initial weights
    getter = crossformers.create_model(name, features_only=True, img_size=64).eval()
    x = torch.randn(1, 1 if name == "fcaformer_nano" else 3, 72, 56)
    with torch.no_grad():
        for a, b in zip(fx(x), getter(x), strict=True):
            if a.shape != b.shape:
                a = a.permute(0, 3, 1, 2)
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg_matches_model(name):
    """timm's test_model_default_cfgs on the meta device (no memory, no compute): forward_features at the default
    input size has the cfg's pool_size in the layout ``output_fmt`` declares, classifier/first conv names exist, and
    a reset classifier follows the model's device, dtype and mode."""
    from timm.layers import get_channel_dim, get_spatial_dim

    tname = crossformers.factory.timm_name(name)
    model = timm.create_model(tname, device="meta").eval()
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    cfg = model.pretrained_cfg
    assert model.in_chans == cfg["input_size"][0]
    state = model.state_dict()
    for key in ("classifier", "first_conv"):
        names = (cfg[key],) if isinstance(cfg[key], str) else cfg[key]
        assert all(n + ".weight" in state for n in names), key
    x = torch.randn(1, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
    if isinstance(model, crossformers.models._base.HierarchicalModel):  # the standard 4-stage pyramids
        fmt = model.output_fmt
        assert fmt == ("NHWC" if name.startswith("crossformer") else "NCHW")
        sy, sx = get_spatial_dim(fmt)
        assert (feats.shape[sy], feats.shape[sx]) == tuple(cfg["pool_size"])
        assert feats.shape[get_channel_dim(fmt)] == model.num_features
        model.reset_classifier(0, "")
        assert model(x).shape == feats.shape
    model.to(dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(3)
    head = [p for p in model.get_classifier().parameters()]
    assert head and all(p.device.type == "meta" and p.dtype == torch.float64 for p in head)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_prune_intermediate_layers_keeps_the_taps(name):
    """timm's test_prune_intermediate_layers_contract on the small config: stop_early taps and the taps of a model
    pruned to each index equal the unpruned model's; pruning the last index with the head kept changes no output;
    with the norm pruned, the features of a hierarchical model end at the tap; a pruned model still trains."""
    import copy

    model, chans = small(name)
    model.eval()
    x = torch.randn(2, chans, 64, 64)
    last = len(model.feature_info) - 1
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        kept = copy.deepcopy(model)
        kept.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(kept(x), expected)
    for i in range(last + 1):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i])
            torch.testing.assert_close(pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0],
                                       taps[i])
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i], prune_norm=True)
            feats = pruned.forward_features(x)
            if i < last and torch.is_tensor(feats) and feats.ndim == 4:
                if feats.shape != taps[i].shape:
                    feats = feats.permute(0, 3, 1, 2)  # NHWC
                torch.testing.assert_close(feats, taps[i])
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
        feats = pruned.forward_features(x)
        sum(f.sum() for f in selected + (list(feats) if isinstance(feats, (list, tuple)) else [feats])).backward()
        if not name.startswith("crossvit"):  # CrossViT leaves the fusion into the untapped branch unused (as timm's)
            unused = [n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None]
            assert not unused, f"pruned to {i}, unused: {unused}"


@pytest.mark.parametrize("name", ["crossvit_9_240", "crossvit_18_dagger_408"])  # one _cfg serves every variant
def test_crossvit_declares_a_fixed_input_size_as_timm_does(name):
    """Like timm's crossvit_*, the default mode resizes every input to the branches' native sizes, so the cfg declares
    ``fixed_input_size`` and timm tests it at its own size; ``dynamic_img_size=True`` lifts it (timm's traits)."""
    from timm.models import get_model_input_config

    tname = crossformers.factory.timm_name(name)
    model = timm.create_model(tname, device="meta")
    assert model.pretrained_cfg["fixed_input_size"] is True
    assert get_model_input_config(model)["fixed_input_size"] is True
    dyn = timm.create_model(tname, device="meta", dynamic_img_size=True)
    assert get_model_input_config(dyn)["fixed_input_size"] is False
