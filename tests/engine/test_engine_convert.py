"""Our runs as timm / Hub folders (`crossformers convert RUN`): run -> folder -> fresh-process load with the same
logits, the run's preprocessing and class names in config.json, and `eval` / `predict` on the folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from crossformers.cli import main
from crossformers.engine import evaluate, load_trained, predict


@pytest.fixture(scope="module")
def converted(trained_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shared") / "run-best"
    assert main(["convert", str(trained_run), "--output", str(out)]) == 0
    return out


def test_run_folder_config_carries_preprocessing_and_classes(trained_run: Path, converted: Path):
    meta = json.loads((trained_run / "best" / "meta.json").read_text())
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["architecture"] == "test_vit"  # the run's timm:test_vit, under timm's registry name
    assert cfg["num_classes"] == 10 and cfg["label_names"] == meta["classes"]
    assert cfg["model_args"]["in_chans"] == 1 and cfg["model_args"]["img_size"] == [32, 32]
    pre = meta["preprocessing"]
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation"):
        assert cfg["pretrained_cfg"][key] == pre[key], key


def test_round_trip_run_in_fresh_process(trained_run: Path, converted: Path, tmp_path: Path):
    """run -> convert -> crossformers.create_model / timm.create_model('local-dir:...') in a new interpreter ->
    the logits of the run's own checkpoint."""
    model, _ = load_trained(trained_run)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    save_file({"x": x, "logits": expected}, str(tmp_path / "io.safetensors"))
    script = f"""
import torch, timm
from safetensors.torch import load_file
import crossformers
t = load_file({str(tmp_path / 'io.safetensors')!r})
for m in (crossformers.create_model("local-dir:{converted}"), timm.create_model("local-dir:{converted}", pretrained=True)):
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(t["x"]), t["logits"], rtol=0, atol=0)
print("same logits")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ),
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "same logits"


def test_last_ema_weights(trained_run: Path, tmp_path: Path):
    out = tmp_path / "ema"
    assert main(["convert", str(trained_run / "last"), "--ema", "--output", str(out)]) == 0
    import crossformers

    ema, _ = load_trained(trained_run / "last", use_ema=True)
    loaded = crossformers.create_model(f"local-dir:{out}").eval()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), ema(x))


def test_eval_and_predict_accept_the_folder(trained_run: Path, converted: Path, image_folder: Path, fmnist: str,
                                            capsys):
    files = sorted((image_folder / "val" / "bag").glob("*.png"))[:2]
    assert predict(converted, files, topk=3, device="cpu") == predict(trained_run, files, topk=3, device="cpu")
    ours = evaluate(trained_run, fmnist, limit=20, batch_size=10, device="cpu")
    theirs = evaluate(converted, fmnist, limit=20, batch_size=10, device="cpu")
    assert (theirs["top1"], theirs["loss"], theirs["classes"]) == (ours["top1"], ours["loss"], ours["classes"])
    assert main(["eval", str(converted), "--data", fmnist, "--limit", "10", "--batch-size", "10"]) == 0
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "model.safetensors"]  # nothing written
    capsys.readouterr()
    assert main(["predict", str(converted), str(files[0]), "--topk", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"{files[0]}: ")


def test_predict_on_damaged_folder_is_one_error_line(converted: Path, image_folder: Path, tmp_path: Path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((converted / "config.json").read_bytes())
    data = (converted / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) - 100])
    img = sorted((image_folder / "val" / "bag").glob("*.png"))[0]
    assert main(["predict", str(bad), str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {bad / 'model.safetensors'}: ") and err.count("\n") == 1
    assert err.endswith("copy it again, or convert it again with `crossformers convert SOURCE --output DIR` "
                        "(docs/sharing.md)\n")


def test_convert_run_rejects_model_flag(trained_run: Path, tmp_path: Path, capsys):
    assert main(["convert", str(trained_run), "--model", "fcaformer_nano", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"error: {trained_run} is a run folder that records its model: drop "
                                       "--model/--model-kwargs\n")


def test_run_folder_is_not_a_local_dir(trained_run: Path):
    import crossformers
    from crossformers.errors import CheckpointError

    with pytest.raises(CheckpointError, match=rf"^{trained_run} is one of our run/checkpoint folders, not a converted "
                                              rf"one: use it as is \(crossformers eval/predict\), or convert it with "
                                              rf"`crossformers convert {trained_run} --output DIR` and load DIR$"):
        crossformers.create_model(f"local-dir:{trained_run}")
