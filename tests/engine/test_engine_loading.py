"""The one loader (spec -> model + preprocessing): every kind of spec, its one set of errors, and the preprocessing
rule built on timm's ``resolve_model_data_config``."""
from __future__ import annotations

import pytest
import torch
from timm.data import resolve_model_data_config
from torch import nn

import crossformers
from crossformers.engine import ModelSpecError, load_model, save_checkpoint
from crossformers.engine.modeling import model_preprocessing
from crossformers.errors import CheckpointError, UnknownModelError

NAME = "crossformer_tiny"
KW = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), img_size=64, num_classes=3)
PRE = dict(input_size=[3, 64, 64], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], interpolation="bilinear",
           crop_pct=1.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = crossformers.create_model(NAME, **KW)
    root = tmp_path_factory.mktemp("loading") / "run"
    save_checkpoint(root / "best", model, dict(model=NAME, model_kwargs=KW, classes=["a", "b", "c"],
                                               preprocessing=PRE))
    return root, model


def test_run_directory(run_dir):
    root, model = run_dir
    lm = load_model(root)
    assert (lm.name, lm.label, lm.classes) == (NAME, NAME, ["a", "b", "c"])
    assert lm.source == str(root / "best") and lm.meta["model"] == NAME
    assert not lm.model.training
    assert lm.preprocessing == PRE
    torch.testing.assert_close(lm.model.state_dict(), model.state_dict())
    assert load_model(root, img_size=96).preprocessing["input_size"] == [3, 96, 96]  # preprocessing only


def test_model_name_random_init_and_img_size():
    lm = load_model(NAME, model_kwargs=KW, img_size=96)
    assert (lm.name, lm.source, lm.classes, lm.label) == (NAME, "random init", None, f"{NAME} (random init)")
    assert lm.preprocessing["input_size"] == [3, 96, 96]  # preprocessed at the size asked for
    lm = load_model(NAME, model_kwargs={k: v for k, v in KW.items() if k != "img_size"}, img_size=96, label="x")
    assert lm.preprocessing["input_size"] == [3, 96, 96] and lm.label == "x"


def test_official_weight_file_for_a_name(run_dir, tmp_path):
    _, model = run_dir
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, path)
    lm = load_model(NAME, path, model_kwargs=KW)
    assert (lm.source, lm.label) == (str(path), NAME)
    torch.testing.assert_close(lm.model.state_dict(), model.state_dict())


def test_module_is_used_as_is():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    net.pretrained_cfg = dict(first_conv="0", input_size=(3, 32, 32), architecture="toy")
    lm = load_model(net)
    assert lm.model is net and lm.source == "module" and lm.name == "toy" and not net.training
    assert lm.preprocessing["input_size"] == [1, 32, 32]  # channels from the first conv


@pytest.mark.parametrize("kwargs,message", [
    (dict(checkpoint="w.pth"), "drop the checkpoint w.pth (--checkpoint) (they apply to model names only)"),
    (dict(pretrained=True), "drop pretrained (--pretrained) (they apply to model names only)"),
    (dict(model_kwargs={}), "drop the model arguments [] (--model-kwargs) (they apply to model names only)"),
])
def test_run_directory_fixes_model_and_weights(run_dir, kwargs, message):
    root, _ = run_dir
    with pytest.raises(ModelSpecError) as e:
        load_model(root, **kwargs)
    assert str(e.value) == (f"{root} is a crossformers run directory (or checkpoint), which fixes the model and its "
                            f"weights: {message}")


def test_spec_errors(tmp_path):
    weights = tmp_path / "w.safetensors"
    with pytest.raises(ModelSpecError) as e:
        load_model(weights)
    assert str(e.value) == (f"{weights} is a weight file, not a model: pass the model name and the file as the "
                            f"checkpoint (CLI: MODEL --checkpoint {weights}; Python: checkpoint_path=)")
    with pytest.raises(ModelSpecError, match=r"^--ema \(use_ema\) needs one of our checkpoints"):
        load_model(NAME, use_ema=True)
    with pytest.raises(UnknownModelError, match="crossformer_tiny"):
        load_model("crossformer_tine")
    assert issubclass(ModelSpecError, CheckpointError)  # callers catching CheckpointError keep working


def test_preprocessing_follows_timm_resolve_model_data_config():
    model = crossformers.create_model("fcaformer_l1", embed_dim=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                                      num_heads=(0, 0, 2, 2))
    cfg = resolve_model_data_config(model)
    pre = model_preprocessing(model)
    assert pre == dict(input_size=list(cfg["input_size"]), mean=list(cfg["mean"]), std=list(cfg["std"]),
                       interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"])
    grey = model_preprocessing(model, in_chans=1, img_size=32, overrides={"crop_pct": 1.0})
    assert grey["input_size"] == [1, 32, 32] and grey["crop_pct"] == 1.0
    assert grey["mean"] == [pytest.approx(sum(cfg["mean"]) / 3)] and grey["std"] == [pytest.approx(sum(cfg["std"]) / 3)]
