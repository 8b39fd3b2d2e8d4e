"""Checkpoint directories: layout, safe loading, atomic replacement, RNG snapshots, rebuilding a trained model."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from crossformers.engine import checkpoint_io as cio
from crossformers.engine import load_trained
from crossformers.engine.modeling import build_model
from crossformers.errors import CheckpointError

PRE = {"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "interpolation": "bicubic", "crop_pct": 1.0}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("timm:test_vit", num_classes=3, in_chans=1, img_size=32)


def _meta(**extra):
    return {"model": "timm:test_vit", "model_kwargs": {"num_classes": 3, "in_chans": 1, "img_size": 32},
            "classes": ["a", "b", "c"], "preprocessing": PRE, "epoch": 1, "step": 4, "metrics": {"val_top1": 50.0},
            **extra}


def _files(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_layout_and_safe_loading(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": cio.capture_rng_state(), "position": {"epoch": 1, "step": 4}}
    d = cio.save_checkpoint(tmp_path / "last", model, _meta(), ema_model=_model(1), train_state=state)
    assert sorted(os.listdir(d)) == ["meta.json", "model.safetensors", "model_ema.safetensors", "train_state.pt"]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["model"] == "timm:test_vit" and meta["classes"] == ["a", "b", "c"]
    assert meta["preprocessing"] == PRE and meta["has_ema"] is True and meta["step"] == 4
    weights = load_file(str(d / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    loaded = torch.load(d / "train_state.pt", weights_only=True)  # only plain containers and tensors inside
    assert loaded["position"] == {"epoch": 1, "step": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temporary leftovers


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cio.save_checkpoint(tmp_path / "last", _model(0), _meta(), train_state={"x": torch.zeros(1)})
    before = _files(tmp_path / "last")

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(cio.torch, "save", crash)  # dies after model.safetensors was written into the temp dir
    with pytest.raises(OSError, match="simulated"):
        cio.save_checkpoint(tmp_path / "last", _model(1), _meta(step=99), train_state={"x": torch.ones(1)})
    assert _files(tmp_path / "last") == before
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_crash_between_renames_is_recovered(tmp_path, monkeypatch):
    cio.save_checkpoint(tmp_path / "last", _model(0), _meta())
    before = _files(tmp_path / "last")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # after last -> .last.old, before tmp -> last
            raise KeyboardInterrupt("killed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(cio.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        cio.save_checkpoint(tmp_path / "last", _model(1), _meta(step=99))
    monkeypatch.setattr(cio.os, "replace", real_replace)
    assert not (tmp_path / "last").exists()
    # readers find the backup, and the next save restores it before replacing
    assert _files(cio.resolve_checkpoint_dir(tmp_path, prefer="last")) == before
    cio.save_checkpoint(tmp_path / "last", _model(2), _meta(step=100))
    assert json.loads((tmp_path / "last" / "meta.json").read_text())["step"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = cio.capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    cio.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


def test_load_trained(tmp_path):
    model = _model(0)
    ema = _model(5)
    cio.save_checkpoint(tmp_path / "run" / "best", model, _meta(), ema_model=ema)
    net, meta = load_trained(tmp_path / "run")
    assert not net.training and meta["checkpoint_dir"].endswith("best")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), model.state_dict().values(), strict=True))
    assert net.pretrained_cfg["mean"] == (0.5,) and net.pretrained_cfg["input_size"] == (1, 32, 32)
    net_ema, _ = load_trained(tmp_path / "run" / "best", use_ema=True)
    assert all(torch.equal(a, b) for a, b in zip(net_ema.state_dict().values(), ema.state_dict().values(), strict=True))


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_trained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a crossformers checkpoint"):
        load_trained(tmp_path / "empty")
    cio.save_checkpoint(tmp_path / "c", _model(), _meta())
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_trained(tmp_path / "c", use_ema=True)
    with pytest.raises(CheckpointError, match="no train_state.pt"):
        cio.load_train_state(tmp_path / "c")


def _set(meta: dict, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    for p in parents:
        meta = meta[p]
    if value is _DELETE:
        del meta[key]
    else:
        meta[key] = value


_DELETE = object()


@pytest.mark.parametrize("field, value, message", [
    # the cases: each used to end in a traceback (ValueError, TypeError, KeyError) in load_trained / predict
    ("model_kwargs", "x", '"model_kwargs" must be a JSON object of model constructor arguments, got "x"'),
    ("model_kwargs", [1, 2], '"model_kwargs" must be a JSON object of model constructor arguments, got [1, 2]'),
    ("classes", _DELETE, '"classes" must be a non-empty list of class names (strings), it is missing'),
    ("preprocessing.input_size", "abc", '"preprocessing.input_size" must be [channels, height, width]: three ints '
                                        '>= 1, got "abc"'),
    ("model", 7, '"model" must be a model name (string), got 7'),
    ("model_kwargs.num_classes", "3", '"model_kwargs.num_classes" must be an int >= 1, got "3"'),
    ("model_kwargs.img_size", [32], '"model_kwargs.img_size" must be an int >= 1 or two of them (pixels), got [32]'),
    ("model_kwargs.drop_path_rate", 1.5, '"model_kwargs.drop_path_rate" must be a number in [0, 1), got 1.5'),
    ("classes", ["a", "b"], '"classes" must be a list of 3 names (model_kwargs.num_classes), got ["a", "b"]'),
    ("classes", ["a", "a", "b"], '"classes" must be distinct class names, got ["a", "a", "b"]'),
    ("classes", ["a", 2, "c"], '"classes" must be a non-empty list of class names (strings), got ["a", 2, "c"]'),
    ("preprocessing", None, '"preprocessing" must be a JSON object with input_size (and optionally mean, std, '
                            'interpolation, crop_pct), got null'),
    ("preprocessing.input_size", _DELETE, '"preprocessing.input_size" must be [channels, height, width]: three ints '
                                          '>= 1, it is missing'),
    ("preprocessing.input_size", [3, 32, 32], '"preprocessing.input_size" must be [1, height, width] '
                                              '(model_kwargs.in_chans), got [3, 32, 32]'),
    ("preprocessing.input_size", [1, 0, 32], '"preprocessing.input_size" must be [channels, height, width]: three '
                                             'ints >= 1, got [1, 0, 32]'),
    ("preprocessing.mean", [0.5, 0.5], '"preprocessing.mean" must be a list of 1, 3 or 1 finite numbers, got '
                                       '[0.5, 0.5]'),
    ("preprocessing.std", [0.0], '"preprocessing.std" must be a list of 1, 3 or 1 finite numbers > 0, got [0.0]'),
    ("preprocessing.interpolation", "cubic", '"preprocessing.interpolation" must be one of bilinear, bicubic, '
                                             'nearest, lanczos, box, hamming, got "cubic"'),
    ("preprocessing.crop_pct", 0, '"preprocessing.crop_pct" must be a number in (0, 1], got 0'),
    ("epoch", -1, '"epoch" must be an int >= 0, got -1'),
    ("step", 2.5, '"step" must be an int >= 0, got 2.5'),
    ("metrics", [], '"metrics" must be a JSON object, got []'),
    ("config", "x", '"config" must be a JSON object, got "x"'),
    ("has_ema", "no", '"has_ema" must be true or false, got "no"'),
    ("num_classes", 4, '"num_classes" must be the number of classes (3), got 4'),
    ("format_version", 2, '"format_version" must be an int from 1 to 1'),
])
def test_meta_fields_are_validated(tmp_path, field, value, message):
    d = cio.save_checkpoint(tmp_path / "c", _model(), _meta(num_classes=3))
    meta = json.loads((d / "meta.json").read_text())
    _set(meta, field, value)
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        load_trained(d)
    text = str(err.value)
    assert text.startswith(f"{d / 'meta.json'}: {message}"), text
    assert text.endswith("(the file is damaged or was not written by crossformers: restore it, or re-save the "
                         "checkpoint)")
    assert "\n" not in text


def test_bad_meta_is_one_error_line_in_predict_and_eval(tmp_path, capsys):
    from PIL import Image

    from crossformers import cli

    d = cio.save_checkpoint(tmp_path / "run" / "best", _model(), _meta())
    meta = json.loads((d / "meta.json").read_text())
    meta["preprocessing"]["input_size"] = "abc"
    (d / "meta.json").write_text(json.dumps(meta))
    Image.new("L", (32, 32)).save(tmp_path / "x.png")
    for argv in (["predict", str(tmp_path / "run"), str(tmp_path / "x.png")],
                 ["eval", str(tmp_path / "run"), "--data", str(tmp_path)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {d / 'meta.json'}: \"preprocessing.input_size\" must be")
