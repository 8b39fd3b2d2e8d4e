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
