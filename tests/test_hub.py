"""Converted folders (crossformers.hub, `crossformers convert`): official checkpoint -> folder -> timm's local-dir
loading in a fresh process with the same logits; the weights-folder lookup of pretrained=True; clear errors for
broken folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import crossformers
from crossformers.cli import main
from crossformers.engine.convert import convert, save_local_dir
from crossformers.errors import CheckpointError, PretrainedUnavailableError
from crossformers.hub import load_local_dir

from parity_fixtures import PARITY, load_case, official_state_dict

CASE = "fcaformer_tiny128"


def _args(meta: dict) -> dict:
    kw = meta["reference_kwargs"]
    return dict(img_size=kw["img_size"], num_classes=kw["num_classes"], embed_dim=kw["embed_dims"],
                depths=kw["depths"], num_heads=kw["num_heads"], cab_max_d=kw["cab_max_d"])


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[Path, dict, dict]:
    """(official .pth as the authors' code saves it, fixture metadata, fixture tensors)."""
    meta, t = load_case(CASE)
    path = tmp_path_factory.mktemp("official") / "fcaformer_official.pth"
    torch.save({"model": official_state_dict(t), "epoch": 299}, path)
    return path, meta, t


@pytest.fixture(scope="module")
def folder(official, tmp_path_factory) -> Path:
    """The official checkpoint converted with the CLI (with label names)."""
    path, meta, _ = official
    root = tmp_path_factory.mktemp("converted")
    labels = root / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(meta["reference_kwargs"]["num_classes"])) + "\n")
    out = root / "fca"
    assert main(["convert", str(path), "--model", "fcaformer_l1", "--model-kwargs", json.dumps(_args(meta)),
                 "--label-names", str(labels), "--output", str(out)]) == 0
    return out


def _broken(folder: Path, tmp_path: Path) -> Path:
    """A writable copy of the converted folder."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


def test_converted_folder_is_timm_hub_format(folder: Path, official):
    _, meta, _ = official
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "fcaformer_l1"
    assert cfg["num_classes"] == 5 and cfg["num_features"] == 64
    assert cfg["label_names"] == [f"class {i}" for i in range(5)]
    assert cfg["model_args"]["embed_dim"] == [16, 32, 48, 64] and cfg["model_args"]["img_size"] == [128, 128]
    pre = cfg["pretrained_cfg"]
    assert pre["input_size"] == [3, 128, 128]  # the checkpoint's resolution, not the variant's 224
    assert (pre["mean"], pre["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert (pre["crop_pct"], pre["interpolation"], pre["num_classes"]) == (0.875, "bicubic", 5)
    assert "tag" not in pre and "file" not in pre and "source" not in pre
    # already in our layout: exactly the keys of our model, none of the official ones
    ours = crossformers.create_model("fcaformer_l1", **_args(meta)).state_dict()
    saved = load_file(str(folder / "model.safetensors"))
    assert sorted(saved) == sorted(ours)
    assert all(saved[k].shape == ours[k].shape for k in ours)


def test_round_trip_official_checkpoint_in_fresh_process(folder: Path, official):
    """official .pth -> convert -> load through timm's local-dir syntax in a new interpreter -> the official
    model's logits (the parity fixture's reference output)."""
    _, meta, _ = official
    script = f"""
import sys, torch, timm
from safetensors.torch import load_file
t = load_file({str(PARITY / (CASE + '.safetensors'))!r})
import crossformers
a = crossformers.create_model("local-dir:{folder}").eval()
b = timm.create_model("local-dir:{folder}", pretrained=True).eval()
with torch.no_grad():
    for m in (a, b):
        assert m.num_classes == 5 and m.pretrained_cfg["label_names"][4] == "class 4"
        torch.testing.assert_close(m(t["input"]), t["logits"], atol={meta['tolerance']['atol']},
                                   rtol={meta['tolerance']['rtol']})
print("same logits")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ),
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "same logits"


def test_timm_without_pretrained_builds_architecture_only(folder: Path):
    """timm's semantics: `local-dir:` without pretrained=True gives the folder's architecture and class count with
    fresh weights (crossformers.create_model loads the weights by default)."""
    saved = load_file(str(folder / "model.safetensors"))
    fresh = timm.create_model(f"local-dir:{folder}")
    loaded = crossformers.create_model(f"local-dir:{folder}")
    assert fresh.num_classes == loaded.num_classes == 5
    assert not torch.equal(fresh.state_dict()["head.fc.weight"], saved["head.fc.weight"])
    assert torch.equal(loaded.state_dict()["head.fc.weight"], saved["head.fc.weight"])


def test_new_class_count_drops_the_head_only(folder: Path):
    saved = load_file(str(folder / "model.safetensors"))
    model = crossformers.create_model(f"local-dir:{folder}", num_classes=3)
    sd = model.state_dict()
    assert sd["head.fc.weight"].shape == (3, 64)
    assert torch.equal(sd["stem.0.conv.weight"], saved["stem.0.conv.weight"])


def test_load_local_dir_returns_model_cfg_and_labels(folder: Path, official):
    _, meta, t = official
    model, cfg, labels = load_local_dir(folder)
    assert not model.training
    assert labels == [f"class {i}" for i in range(5)]
    assert tuple(cfg["input_size"]) == (3, 128, 128) and cfg["interpolation"] == "bicubic"
    with torch.no_grad():
        torch.testing.assert_close(model(t["input"]), t["logits"], **meta["tolerance"])


def test_pretrained_looks_in_the_weights_folder(folder: Path, official, tmp_path: Path, monkeypatch):
    _, meta, t = official
    root = tmp_path / "weights"
    (root / "fcaformer_l1").mkdir(parents=True)
    for f in folder.iterdir():
        (root / "fcaformer_l1" / f.name).write_bytes(f.read_bytes())
    monkeypatch.delenv("CROSSFORMERS_WEIGHTS", raising=False)
    with pytest.raises(PretrainedUnavailableError, match=r"\$CROSSFORMERS_WEIGHTS/fcaformer_l1/"):
        crossformers.create_model("fcaformer_l1", pretrained=True, **_args(meta))
    monkeypatch.setenv("CROSSFORMERS_WEIGHTS", str(root))
    model = crossformers.create_model("fcaformer_l1", pretrained=True, **_args(meta)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(t["input"]), t["logits"], **meta["tolerance"])
    # a folder for another architecture under this name is refused, naming the file and where it belongs
    cfg = json.loads((root / "fcaformer_l1" / "config.json").read_text())
    cfg["architecture"] = "fcaformer_l2"
    (root / "fcaformer_l1" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"fcaformer_l1/config.json is for architecture 'fcaformer_l2', not "
                                              r"fcaformer_l1: move it to \$CROSSFORMERS_WEIGHTS/fcaformer_l2/"):
        crossformers.create_model("fcaformer_l1", pretrained=True, **_args(meta))


# ---------------------------------------------------------------------------------------------------- errors
def test_missing_config(folder: Path, tmp_path: Path):
    bad = _broken(folder, tmp_path)
    (bad / "config.json").unlink()
    with pytest.raises(CheckpointError, match=rf"^{bad}/config.json is missing: {bad} is not a converted model folder;"
                                              r" convert it again with `crossformers convert SOURCE --output DIR`"):
        crossformers.create_model(f"local-dir:{bad}")


def test_unregistered_architecture(folder: Path, tmp_path: Path):
    bad = _broken(folder, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architecture"] = "fcaformer_l9"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"^{bad}/config.json: architecture 'fcaformer_l9' is not a registered "
                                              r"model \(did you mean fcaformer_l4, fcaformer_l3, fcaformer_l2\?\): `import crossformers` before timm.create_model"):
        crossformers.create_model(f"local-dir:{bad}")


@pytest.mark.parametrize("embed_dim", [[16, 40, 48, 64], [16, 32, 48, 80]])  # the last one changes the head too
def test_wrong_shapes(folder: Path, tmp_path: Path, embed_dim: list[int]):
    bad = _broken(folder, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_args"]["embed_dim"] = embed_dim
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        crossformers.create_model(f"local-dir:{bad}")
    msg = str(err.value)
    assert msg.startswith(f"checkpoint {bad}/model.safetensors does not fit model fcaformer_l1:")
    assert "shape mismatches" in msg and "\n" not in msg
    assert msg.endswith("The folder's config.json (architecture fcaformer_l1, model_args) does not describe its "
                        "model.safetensors: convert it again with `crossformers convert SOURCE --output DIR` "
                        "(docs/sharing.md)")


def test_wrong_class_count_in_config_is_an_error_not_a_new_head(folder: Path, tmp_path: Path):
    bad = _broken(folder, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_classes"] = cfg["model_args"]["num_classes"] = 7
    cfg.pop("label_names")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has a classifier of 5 classes but the model has 7"):
        crossformers.create_model(f"local-dir:{bad}")


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_weights(folder: Path, tmp_path: Path, damage: str):
    bad = _broken(folder, tmp_path)
    f = bad / "model.safetensors"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        expected = (rf"^cannot read {f}: .*\. The file is damaged or incomplete \(interrupted copy or download\?\): "
                    r"copy it again, or convert it again")
    else:
        f.unlink()
        expected = rf"^{f} is missing: the folder has a config but no weights; copy the whole folder, or convert"
    with pytest.raises(CheckpointError, match=expected):
        crossformers.create_model(f"local-dir:{bad}")
    with pytest.raises(CheckpointError, match=expected):  # timm's own path reports the same
        timm.create_model(f"local-dir:{bad}", pretrained=True)


def test_convert_cli_errors(official, folder: Path, tmp_path: Path, capsys):
    path, meta, _ = official
    assert main(["convert", str(path), "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == (
        f"error: {path} is a weight file: name its model with --model NAME (e.g. --model crossformer_small); "
        "`crossformers models` lists them\n")
    assert main(["convert", str(path), "--model", "fcaformer_l1", "--output", str(folder)]) == 2
    assert capsys.readouterr().err == (
        f"error: --output {folder} exists and is not empty: choose a new folder, or pass --overwrite "
        "(overwrite=True) to replace it\n")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # untouched
    # the official checkpoint does not fit the default fcaformer_l1: one line, nothing written
    assert main(["convert", str(path), "--model", "fcaformer_l1", "--output", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {path} does not fit model fcaformer_l1") and err.count("\n") == 1
    assert err.endswith("name the model the checkpoint was trained as, with its constructor arguments in "
                        "--model-kwargs (e.g. img_size, num_classes)\n")
    assert not (tmp_path / "y").exists()


def test_convert_python_api_writes_imagenet_labels(tmp_path: Path):
    """A 1000-class checkpoint gets timm's ImageNet-1k synsets and descriptions as label names."""
    model = crossformers.create_model("fcaformer_nano", num_classes=1000)
    path = tmp_path / "nano.pth"
    torch.save(model.state_dict(), path)
    out = convert(path, tmp_path / "out", model="fcaformer_nano", model_kwargs={"num_classes": 1000})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["label_names"][0] == "n01440764" and cfg["label_descriptions"]["n01440764"].startswith("tench")
    assert cfg["pretrained_cfg"]["input_size"] == [1, 56, 56]


def test_round_trip_crossformer_official_and_crossvit(tmp_path: Path):
    """The other families: CrossFormer's official fixture and a CrossViT (timm registry name with the cf_ prefix)."""
    meta, t = load_case("crossformer_v1_tiny64")
    kw = meta["reference_kwargs"]
    args = dict(img_size=kw["img_size"], num_classes=kw["num_classes"], embed_dim=kw["embed_dim"],
                depths=kw["depths"], num_heads=kw["num_heads"], group_size=kw["group_size"],
                interval=kw["crs_interval"], mlp_ratio=kw["mlp_ratio"], patch_size=kw["patch_size"],
                merge_size=kw["merge_size"], acl=kw["use_acl"])
    path = tmp_path / "crossformer.pth"
    torch.save({"model": official_state_dict(t)}, path)
    out = convert(path, tmp_path / "cf", model="crossformer_tiny", model_kwargs=args)
    with torch.no_grad():
        torch.testing.assert_close(crossformers.create_model(f"local-dir:{out}").eval()(t["input"]), t["logits"],
                                   **meta["tolerance"])
    cv = crossformers.create_model("crossvit_9_240", num_classes=4, img_size=96).eval()
    out = save_local_dir(cv, tmp_path / "cv", model_args={"num_classes": 4, "img_size": 96},
                                          label_names=list("abcd"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "cf_crossvit_9_240" and cfg["pretrained_cfg"]["input_size"] == [3, 96, 96]
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(timm.create_model(f"local-dir:{out}", pretrained=True).eval()(x), cv(x))


def test_detection_backbone_accepts_the_folder(folder: Path, official):
    """`crossformers.detection.backbone` takes a converted folder like a run directory: same weights, feature maps."""
    from crossformers.detection import backbone

    _, meta, t = official
    ref = crossformers.create_model("fcaformer_l1", **_args(meta))
    crossformers.load_checkpoint(ref, official_state_dict(t))
    ours, theirs = backbone(ref).eval(), backbone(f"local-dir:{folder}").eval()
    with torch.no_grad():
        for a, b in zip(ours(t["input"]), theirs(t["input"]), strict=True):
            assert torch.equal(a, b)
    assert [f.shape[1] for f in backbone(folder)(t["input"])] == [16, 32, 48, 64]
