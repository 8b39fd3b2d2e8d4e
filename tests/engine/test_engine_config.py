"""TrainConfig: JSON round trip and validation messages."""
from __future__ import annotations

import json

import pytest

from crossformers.engine import ConfigError, TrainConfig


def test_json_round_trip(tmp_path):
    cfg = TrainConfig(model="timm:test_vit", model_kwargs={"patch_size": 4}, img_size=32, scale=(0.5, 1.0),
                      layer_decay=0.75, max_steps=7, amp=True)
    path = tmp_path / "cfg.json"
    text = cfg.to_json(path)
    assert json.loads(text)["scale"] == [0.5, 1.0]
    again = TrainConfig.from_json(path)
    assert again == cfg
    assert TrainConfig.from_json(text) == cfg  # JSON text works too
    assert isinstance(again.scale, tuple)


def test_every_field_is_serialised():
    d = TrainConfig().to_dict()
    for key in ("model", "data", "img_size", "in_chans", "epochs", "batch_size", "lr", "min_lr", "weight_decay",
                "warmup_epochs", "warmup_steps", "label_smoothing", "drop_path_rate", "mixup", "cutmix", "mixup_prob",
                "auto_augment", "re_prob", "hflip", "scale", "ema_decay", "clip_grad", "amp", "accum_steps",
                "layer_decay", "pretrained", "seed", "output", "workers", "limit_train", "limit_val", "log_interval",
                "max_steps", "resume", "device"):
        assert key in d


def test_unknown_key_suggests_close_name():
    with pytest.raises(ConfigError, match=r"epoch.*did you mean epochs"):
        TrainConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 0}, "epochs must be an int >= 1"),
    ({"lr": -1.0}, "lr must be"),
    ({"in_chans": 2}, "in_chans must be 1 .grey. or 3"),
    ({"label_smoothing": 1.0}, "label_smoothing must be in"),
    ({"mixup": 0.8, "batch_size": 7}, "even batch size"),
    ({"device": "tpu"}, "device must be"),
    ({"scale": (1.0, 0.5)}, "scale must be"),
    ({"max_steps": 0}, "max_steps must be"),
])
def test_validation_messages(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes).validate()


def test_bad_json(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_json(p)
    with pytest.raises(ConfigError, match="cannot read config file"):
        TrainConfig.from_json(tmp_path / "missing.json")


@pytest.mark.parametrize("values, message", [
    ({"epochs": "3"}, "epochs must be an int >= 1, got '3'"),
    ({"scale": 5}, "scale must be two positive numbers low <= high, got 5"),
    ({"amp": "yes"}, "amp must be true or false, got 'yes'"),
    ({"in_chans": 1.0}, "in_chans must be 1 .grey. or 3 .RGB. for image data, got 1.0"),
    ({"model_kwargs": "x"}, "model_kwargs must be a dict of constructor arguments, got 'x'"),
    ({"pretrained": 3}, "pretrained must be a non-empty string or None, got 3"),
    ({"lr": "fast"}, "lr must be a finite number >= 0, got 'fast'"),
])
def test_config_json_is_validated_on_read(tmp_path, values, message):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**TrainConfig().to_dict(), **values}))
    with pytest.raises(ConfigError, match=f"^config {p}: {message}$"):
        TrainConfig.from_json(p)
