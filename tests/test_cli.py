"""The `crossformers` command: train -> eval -> predict end to end, `models`, and every bad-input case reported as
one `error:` line with exit code 2 and nothing overwritten."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from crossformers import cli
from crossformers.inference import precision
from crossformers.inference.precision import precision_support
from threads import one_intra_op_thread

FAST = ["--model", "timm:test_vit", "--img-size", "32", "--batch-size", "16", "--limit-train", "64",
        "--limit-val", "32", "--warmup-steps", "0", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    with one_intra_op_thread():
        yield


def _folder(root: Path, classes=("bag", "shoe", "shirt"), n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8) // (c + 1), mode="L").save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, fmnist) -> Path:
    """A finished 1-epoch test_vit run made through the CLI (read-only for the tests)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    with one_intra_op_thread():
        assert cli.main(["train", *FAST, "--epochs", "1", "--output", str(out), "--no-progress"]) == 0
    return out


def _run(args, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_error(code: int, err: str, *fragments: str, only_line: bool = True) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: "), err
    assert sum(ln.startswith("error:") for ln in lines) == 1, err
    if only_line:
        assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ end to end
def test_train_eval_predict_end_to_end(tmp_path, fmnist):
    """The real console entry point (`python -m crossformers`) on the real small model, fcaformer_nano."""
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "crossformers", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=600)

    out = tmp_path / "nano"
    p = run("train", "--model", "fcaformer_nano", "--data", fmnist, "--limit-train", "512", "--limit-val", "256",
            "--epochs", "1", "--batch-size", "64", "--warmup-steps", "2", "--lr", "2e-3", "--ema-decay", "0.9",
            "--output", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "best val top-1" in p.stdout
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "curves.png", "last/model.safetensors",
                 "last/model_ema.safetensors", "last/train_state.pt", "last/meta.json", "best/model.safetensors"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "best" / "meta.json").read_text())
    native = list(timm.models.get_pretrained_cfg("fcaformer_nano").input_size)  # (1, 56, 56): the model's own size
    assert meta["model"] == "fcaformer_nano" and meta["preprocessing"]["input_size"] == native

    p = run("eval", out, "--data", fmnist, "--limit", "256", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads(p.stdout)
    assert metrics["num_images"] == 256 and metrics["top1"] == pytest.approx(meta["metrics"]["val_top1"])
    assert np.array(metrics["confusion_matrix"]).sum() == 256
    assert (out / "eval-val" / "confusion_matrix.png").is_file()

    from crossformers.data import FashionMNIST

    ds = FashionMNIST(split="val", limit=2)
    images = []
    for i in range(2):
        ds[i][0].save(tmp_path / f"img{i}.png")
        images.append(tmp_path / f"img{i}.png")
    p = run("predict", out, *images, "--topk", "3", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    preds = json.loads(p.stdout)
    assert [len(r["predictions"]) for r in preds] == [3, 3]
    assert all(pr["class"] in meta["classes"] for r in preds for pr in r["predictions"])


def test_console_script_installed():
    script = Path(sys.executable).parent / "crossformers"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    p = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("crossformers ")


def test_eval_and_predict_text_output(run_dir, fmnist, tmp_path, capsys):
    code, out, err = _run(["eval", run_dir, "--data", fmnist, "--limit", "20", "--output", tmp_path / "ev"], capsys)
    assert code == 0, err
    assert "top-1" in out and "T-shirt/top" in out
    assert (tmp_path / "ev" / "confusion_matrix.json").is_file()
    Image.new("L", (28, 28), 128).save(tmp_path / "grey.png")
    code, out, err = _run(["predict", run_dir, tmp_path / "grey.png", "--topk", "2"], capsys)
    assert code == 0 and out.startswith(f"{tmp_path / 'grey.png'}: ") and out.count("(") == 2


def test_eval_and_predict_keep_freed_memory_unless_told_not_to(run_dir, fmnist, tmp_path, capsys,
                                                                retain_memory_calls):
    """Inference commands call retain_freed_memory() first, as training does (recorded by conftest): glibc otherwise
    page-faults freed activations back in every forward pass (docs/profiling.md)."""
    Image.new("L", (28, 28), 128).save(tmp_path / "grey.png")
    for command in (["eval", run_dir, "--data", fmnist, "--limit", "10", "--json"],
                    ["predict", run_dir, tmp_path / "grey.png", "--topk", "1"]):
        before = len(retain_memory_calls)
        code, _, err = _run(command, capsys)
        assert code == 0, err
        assert retain_memory_calls[before:] == [True]
        code, _, err = _run([*command, "--no-retain-freed-memory"], capsys)
        assert code == 0, err
        assert retain_memory_calls[before:] == [True]  # no second call


@pytest.mark.skipif(precision_support("bf16") is not None, reason="this CPU has no oneDNN bf16 support")
def test_eval_in_bf16_beside_fp32(run_dir, fmnist, capsys):
    code, out, err = _run(["eval", run_dir, "--data", fmnist, "--limit", "20", "--json", "--no-progress"], capsys)
    assert code == 0, err
    fp32 = json.loads(out)
    code, out, err = _run(["eval", run_dir, "--data", fmnist, "--limit", "20", "--precision", "bf16",
                           "--no-progress"], capsys)
    assert code == 0, err
    assert "in bf16 on" in out
    bf16 = json.loads((run_dir / "eval-val-bf16" / "metrics.json").read_text())  # beside, not over, fp32's
    assert bf16["precision"] == "bf16" and bf16["num_images"] == 20
    assert abs(bf16["top1"] - fp32["top1"]) <= 10.0  # at most 2 of 20 images change class
    assert abs(bf16["loss"] - fp32["loss"]) <= 0.05 * fp32["loss"]


@pytest.mark.skipif(precision_support("int8") is not None, reason="int8 needs x86, torchao and a C++ compiler")
def test_predict_in_int8(run_dir, tmp_path, capsys, monkeypatch):
    Image.new("L", (28, 28), 128).save(tmp_path / "grey.png")
    code, out, err = _run(["predict", run_dir, tmp_path / "grey.png", "--topk", "3", "--json"], capsys)
    assert code == 0, err
    expected = json.loads(out)[0]["predictions"]
    # int8 on the uncompiled quantized graph (same arithmetic, no C++ compile in the default suite)
    monkeypatch.setattr(cli, "to_precision", lambda m, p: precision.to_precision(m, p, compile=False))
    code, out, err = _run(["predict", run_dir, tmp_path / "grey.png", "--topk", "3", "--json", "--precision",
                           "int8"], capsys)
    assert code == 0, err
    got = json.loads(out)[0]["predictions"]
    assert got[0]["class"] == expected[0]["class"]
    assert abs(got[0]["probability"] - expected[0]["probability"]) < 0.1


def test_precision_the_machine_cannot_run_is_one_error_line(run_dir, fmnist, tmp_path, capsys, monkeypatch):
    code, _, err = _run(["eval", run_dir, "--data", fmnist, "--precision", "bf16", "--amp"], capsys)
    _assert_error(code, err, "--amp and --precision bf16", "drop --amp")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    Image.new("L", (28, 28), 128).save(tmp_path / "grey.png")
    code, _, err = _run(["predict", run_dir, tmp_path / "grey.png", "--precision", "bf16", "--device", "cpu"], capsys)
    _assert_error(code, err, "no bf16 support", "use --precision fp32")


def test_resume_through_cli_uses_saved_options(tmp_path, fmnist, capsys):
    out = tmp_path / "r"
    code, _, err = _run(["train", *FAST, "--epochs", "2", "--max-steps", "3", "--output", out], capsys)
    assert code == 0, err
    code, stdout, err = _run(["train", "--resume", out], capsys)  # no other flag: everything from config.json
    assert code == 0, err
    assert "resumed from" in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 8
    assert json.loads((out / "config.json").read_text())["max_steps"] is None


def test_training_keeps_freed_memory_unless_told_not_to(tmp_path, fmnist, capsys, retain_memory_calls):
    """`crossformers train` calls retain_freed_memory() before training (recorded by conftest instead of changing this
    process's allocator); --no-retain-freed-memory keeps glibc's defaults. So does `dense train` (parsing here; its
    call is checked in tests/dense/test_dense_train.py)."""
    before = len(retain_memory_calls)
    code, _, err = _run(["train", *FAST, "--epochs", "1", "--max-steps", "1", "--output", tmp_path / "a"], capsys)
    assert code == 0, err
    assert retain_memory_calls[before:] == [True]
    code, _, err = _run(["train", *FAST, "--epochs", "1", "--max-steps", "1", "--output", tmp_path / "b",
                         "--no-retain-freed-memory"], capsys)
    assert code == 0, err
    assert retain_memory_calls[before:] == [True]  # no second call
    parser = cli.build_parser()
    assert parser.parse_args(["dense", "train"]).retain_freed_memory is True
    assert parser.parse_args(["dense", "train", "--no-retain-freed-memory"]).retain_freed_memory is False


def test_models_table(capsys):
    code, out, err = _run(["models", "--pattern", "fcaformer_nano"], capsys)
    assert code == 0, err
    header, row = out.strip().splitlines()
    assert header.split()[:4] == ["model", "params", "(M)", "GMACs"]
    name, params, gmacs, size = row.split()
    assert name == "fcaformer_nano" and float(params) == pytest.approx(1.59, abs=0.01) and float(gmacs) > 0
    assert size == "x".join(map(str, timm.models.get_pretrained_cfg("fcaformer_nano").input_size))
    code, out, _ = _run(["models", "--pattern", "fcaformer_nano", "--json", "--no-macs"], capsys)
    assert json.loads(out)[0]["gmacs"] is None


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_model(tmp_path, fmnist, capsys):
    code, _, err = _run(["train", "--model", "fcaformer_nan", "--data", fmnist, "--output", tmp_path / "x"], capsys)
    _assert_error(code, err, "unknown model 'fcaformer_nan'", "fcaformer_nano")
    code, _, err = _run(["train", "--model", "timm:test_vitt", "--data", fmnist, "--output", tmp_path / "x"], capsys)
    _assert_error(code, err, "unknown timm model 'test_vitt'", "timm:test_vit")
    code, _, err = _run(["eval", "fcaformer_l9", "--data", fmnist], capsys)
    _assert_error(code, err, "unknown model 'fcaformer_l9'")
    assert not (tmp_path / "x").exists()


def test_missing_dataset(tmp_path, capsys):
    code, _, err = _run(["train", *FAST, "--data", tmp_path / "nowhere", "--output", tmp_path / "x"], capsys)
    _assert_error(code, err, "nowhere", "neither a built-in dataset nor an existing directory")


def test_empty_class_folder(tmp_path, capsys):
    root = _folder(tmp_path / "ds")
    (root / "train" / "empty").mkdir()
    (root / "val" / "empty").mkdir()
    code, _, err = _run(["train", *FAST, "--data", root, "--output", tmp_path / "x"], capsys)
    _assert_error(code, err, "no images", "empty")


def test_corrupt_image(tmp_path, run_dir, capsys):
    root = _folder(tmp_path / "ds")
    bad = root / "train" / "bag" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot an image at all")
    code, _, err = _run(["train", *FAST, "--data", root, "--check-images", "--output", tmp_path / "x"], capsys)
    _assert_error(code, err, "zz_broken.png", "corrupt")
    # without the check the loader hits it during the first epoch: still one line naming the file
    code, _, err = _run(["train", *FAST, "--data", root, "--limit-train", "none", "--batch-size", "19",
                         "--epochs", "1", "--output", tmp_path / "y"], capsys)
    _assert_error(code, err, "zz_broken.png", only_line=False)
    assert not (tmp_path / "y" / "last").exists()
    code, out, err = _run(["predict", run_dir, bad], capsys)
    _assert_error(code, err, "zz_broken.png", "no image was classified")
    assert out == ""
    # next to good images: those are still printed, the bad one is reported, exit code 2
    good = sorted((root / "val" / "bag").glob("*.png"))[:2]
    code, out, err = _run(["predict", run_dir, good[0], bad, good[1], "--topk", "2"], capsys)
    _assert_error(code, err, "1 of 3 images could not be read (the other 2 were classified)", "zz_broken.png")
    lines = out.splitlines()
    assert [ln.split(": ")[0] for ln in lines] == [str(good[0]), str(good[1])]
    assert all(ln.count("(") == 2 for ln in lines)  # two classes with probabilities each
    code, out, err = _run(["predict", run_dir, good[0], bad, "--json"], capsys)
    _assert_error(code, err, "zz_broken.png")
    rows = json.loads(out)
    assert rows[0]["image"] == str(good[0]) and len(rows[0]["predictions"]) == 5
    assert rows[1]["image"] == str(bad) and "zz_broken.png" in rows[1]["error"] and "predictions" not in rows[1]
    code, _, err = _run(["predict", run_dir, tmp_path / "missing.jpg"], capsys)
    _assert_error(code, err, "image not found", "missing.jpg")


def test_checkpoint_of_another_model_or_class_count(tmp_path, run_dir, fmnist, capsys):
    code, _, err = _run(["train", "--model", "timm:test_convnext", "--img-size", "32", "--data", fmnist,
                         "--pretrained", run_dir, "--output", tmp_path / "x"], capsys)
    _assert_error(code, err, "checkpoint of model timm:test_vit, not timm:test_convnext")
    # an official-style weight file of another architecture
    torch.save({"model": torch.nn.Linear(3, 4).state_dict()}, tmp_path / "other.pth")
    code, _, err = _run(["eval", "fcaformer_nano", "--checkpoint", tmp_path / "other.pth", "--data", fmnist], capsys)
    _assert_error(code, err, "does not fit model")
    # another variant of the same family with the same class count: the real difference is named, not the classes
    import crossformers

    torch.save(crossformers.create_model("fcaformer_l1", num_classes=10, in_chans=1).state_dict(), tmp_path / "l1.pth")
    code, _, err = _run(["eval", "fcaformer_nano", "--checkpoint", tmp_path / "l1.pth", "--data", fmnist], capsys)
    _assert_error(code, err, "does not fit model fcaformer_nano", "stem.0.conv.weight (32, 1, 3, 3) vs (16, 1, 3, 3)",
                  "Its features are 320 wide where fcaformer_nano's are 160: it belongs to another architecture or "
                  "variant")
    assert "classes" not in err
    # a checkpoint that pickles objects: refused without passing on torch's advice to unpickle it anyway
    torch.save({"model": torch.nn.Linear(3, 4).state_dict(), "args": argparse.Namespace(lr=0.1)},
               tmp_path / "pickled.pth")
    code, _, err = _run(["eval", "fcaformer_nano", "--checkpoint", tmp_path / "pickled.pth", "--data", fmnist], capsys)
    _assert_error(code, err, "is not a plain tensor checkpoint", "pickled Python objects (such as argparse.Namespace)",
                  "torch.save(model.state_dict(), 'weights.pth')")
    assert "weights_only" not in err and "trust" not in err
    # a 10-class checkpoint on a 3-class dataset
    code, _, err = _run(["eval", run_dir, "--data", _folder(tmp_path / "ds")], capsys)
    _assert_error(code, err, "predicts 10 classes", "has 3")
    code, _, err = _run(["eval", tmp_path / "nothing-here", "--data", fmnist], capsys)
    _assert_error(code, err, "unknown model")
    # resuming a run as another model changes nothing in the run
    before = _snapshot(run_dir)
    code, _, err = _run(["train", "--resume", run_dir, "--model", "timm:test_convnext", "--epochs", "2"], capsys)
    _assert_error(code, err, "cannot resume from", "holds model timm:test_vit")
    assert _snapshot(run_dir) == before


def test_wrong_channel_count(tmp_path, run_dir, fmnist, capsys):
    code, _, err = _run(["train", *FAST, "--data", fmnist, "--in-chans", "2", "--output", tmp_path / "x"], capsys)
    _assert_error(code, err, "in_chans must be 1 (grey) or 3 (RGB)")
    # fine-tuning a 1-channel checkpoint as a 3-channel model
    code, _, err = _run(["train", *FAST, "--data", fmnist, "--in-chans", "3", "--pretrained", run_dir,
                         "--output", tmp_path / "y"], capsys)
    _assert_error(code, err, "patch_embed.proj.weight")


def test_input_too_small(tmp_path, fmnist, capsys):
    code, _, err = _run(["train", "--model", "fcaformer_nano", "--img-size", "2", "--data", fmnist,
                         "--output", tmp_path / "x"], capsys)
    _assert_error(code, err, "smaller than", "minimum")
    code, _, err = _run(["train", "--model", "timm:test_convnext", "--img-size", "8", "--data", fmnist,
                         "--output", tmp_path / "y"], capsys)
    _assert_error(code, err, "cannot process 1-channel 8x8 input", "--img-size")


def test_output_exists_without_resume(run_dir, fmnist, capsys):
    before = _snapshot(run_dir)
    code, _, err = _run(["train", *FAST, "--data", fmnist, "--output", run_dir], capsys)
    _assert_error(code, err, "already exists and is not empty", f"--resume {run_dir}", "--output")
    assert _snapshot(run_dir) == before
    code, _, err = _run(["train", "--resume", run_dir.parent / "no-such-run"], capsys)
    _assert_error(code, err, "does not exist")


def test_nan_loss_keeps_last_checkpoint(tmp_path, fmnist, capsys):
    out = tmp_path / "nan"
    code, _, err = _run(["train", *FAST, "--data", fmnist, "--epochs", "3", "--max-steps", "4", "--output", out],
                        capsys)
    assert code == 0, err
    before = _snapshot(out / "last")
    code, _, err = _run(["train", "--resume", out, "--lr", "1e30"], capsys)
    _assert_error(code, err, "became NaN", "lower --lr or enable --clip-grad",
                  f"the last good checkpoint is kept at {out / 'last'}", only_line=False)
    assert _snapshot(out / "last") == before
    # a run that diverges before its first checkpoint says so
    code, _, err = _run(["train", *FAST, "--data", fmnist, "--lr", "1e30", "--output", tmp_path / "fresh"], capsys)
    _assert_error(code, err, "became NaN", "no checkpoint had been saved yet", only_line=False)


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "somewhere"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "--data" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--epochs", "many"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and "--epochs" in err
