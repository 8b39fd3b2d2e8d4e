"""`train --config FILE.yaml`: option names/types checked (one `error:` line naming the key), flags override the
file, and RUN/config.yaml repeats a run."""
from __future__ import annotations

from pathlib import Path

import pytest

from crossformers import cli
from crossformers.engine import ConfigError, TrainConfig
from crossformers.engine.config_file import (
    check_option_types,
    config_to_yaml,
    load_config_file,
    merge_train_options,
)


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_keys_are_option_names(tmp_path):
    p = _write(tmp_path, "model: fcaformer_l2\nbatch-size: 64\nlr: 1.0e-3\nscale: [0.5, 1]\nclip_grad: null\n"
                         "model_kwargs: {fca: false}\namp: true\nwarmup_epochs: 2\n")
    values = load_config_file(p)
    assert values == {"model": "fcaformer_l2", "batch_size": 64, "lr": 1e-3, "scale": (0.5, 1), "clip_grad": None,
                      "model_kwargs": {"fca": False}, "amp": True, "warmup_epochs": 2}
    cfg = TrainConfig().replace(**values)
    assert cfg.scale == (0.5, 1) and cfg.batch_size == 64


@pytest.mark.parametrize(("text", "message"), [
    ("epoch: 3\n", "unknown option 'epoch' (did you mean epochs"),
    ("epochs: ten\n", "option 'epochs' must be int, got 'ten'"),
    ("epochs: 2.5\n", "option 'epochs' must be int, got 2.5"),
    ("lr: true\n", "option 'lr' must be float, got True"),
    ("amp: 1\n", "option 'amp' must be bool, got 1"),
    ("img_size: [224]\n", "option 'img_size' must be int or null, got [224]"),
    ("scale: [0.5]\n", "option 'scale' must be a list of 2 numbers, got [0.5]"),
    ("model_kwargs: 3\n", "option 'model_kwargs' must be a mapping, got 3"),
    ("- epochs\n", "must hold a mapping of option: value"),
    ("epochs: [1\n", "is not valid YAML"),
])
def test_bad_files_name_the_key(tmp_path, text, message):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(p)
    assert message in str(info.value) and str(p) in str(info.value)


def test_cli_bad_config_is_one_error_line(tmp_path, capsys):
    p = _write(tmp_path, "epochs: 3\nbatch_sise: 8\n")
    assert cli.main(["train", "--config", str(p), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: config file {p}: unknown option 'batch_sise' (did you mean batch_size?)\n"
    assert not (tmp_path / "run").exists()
    assert cli.main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read config file {tmp_path / 'missing.yaml'}")


def test_flags_override_file_and_file_overrides_recipe(tmp_path):
    p = _write(tmp_path, "epochs: 3\nlr: 0.01\nbatch_size: 256\n")
    args = cli.build_parser().parse_args(["train", "--config", str(p), "--epochs", "2"])
    cfg = cli.train_config_from_args(args)
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (2, 0.01, 256)
    assert cfg.weight_decay == TrainConfig().weight_decay  # neither file nor flag: default
    # recipe < file < flags; the recipe's lr rule follows the file's batch size
    p = _write(tmp_path, "batch_size: 256\nmodel: crossformer_small\n", "r.yaml")
    cfg, notes = merge_train_options({"epochs": 1}, p, "crossformer_imagenet")
    assert (cfg.epochs, cfg.batch_size, cfg.drop_path_rate) == (1, 256, 0.2)
    assert cfg.lr == pytest.approx(5e-4 * 256 / 512)
    assert notes == ["recipe crossformer_imagenet: overridden by explicit options: batch_size, epochs"]


def test_yaml_round_trip_of_every_option():
    cfg = TrainConfig(model="fcaformer_l1", model_kwargs={"fca": False, "depths": [1, 2]}, img_size=64, lr=1.5625e-05,
                      warmup_lr=1e-8, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3), clip_grad=None, layer_decay=0.75,
                      amp=True, auto_augment="rand-m9-mstd0.5-inc1", warmup_steps=0, max_steps=7)
    text = config_to_yaml(cfg)
    assert text.startswith("# crossformers training options")
    values = check_option_types(__import__("yaml").safe_load(text))
    assert TrainConfig().replace(**values) == cfg


def test_run_writes_config_yaml_that_repeats_it(tmp_path, fmnist, capsys):
    """A recipe run (CrossViT's: repeated augmentation) writes RUN/config.yaml; `--config RUN/config.yaml --output
    NEW` resolves to the same options (the recipe's lr rule is not applied twice)."""
    fast = ["--model", "timm:test_vit", "--img-size", "32", "--batch-size", "16", "--limit-train", "32",
            "--limit-val", "16", "--warmup-steps", "0", "--device", "cpu", "--epochs", "1", "--max-steps", "1",
            "--no-amp", "--data", fmnist]
    first = tmp_path / "first"
    assert cli.main(["train", "--recipe", "crossvit_imagenet", *fast, "--output", str(first)]) == 0
    err = capsys.readouterr().err
    assert "recipe crossvit_imagenet: overridden by explicit options: amp, batch_size, epochs" in err
    assert "not applied: lr_schedule_unit" not in err  # applied now (only the crop of timm:test_vit differs)
    original = load_config_file(first / "config.yaml")
    assert original["lr_schedule_unit"] == "epoch"  # the recipe's per-epoch schedule, repeated by the file
    assert original["lr"] == pytest.approx(5e-4 * 16 / 512) and original["aug_repeats"] == 3
    assert TrainConfig.from_json(first / "config.json") == TrainConfig().replace(**original)

    second = tmp_path / "second"
    assert cli.main(["train", "--config", str(first / "config.yaml"), "--output", str(second)]) == 0
    repeat = load_config_file(second / "config.yaml")
    assert repeat.pop("output") == str(second) and original.pop("output") == str(first)
    assert repeat == original
