"""`crossformers analyze ...` end to end on a tiny checkpoint of ours and on small models by name: readable PNGs and
JSON, and bad input reported as one `error:` line with exit code 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import crossformers
from crossformers import cli
from crossformers.analysis.cam import CAM_METHODS
from crossformers.analysis.cli import CAM_METHOD_NAMES
from crossformers.engine.checkpoint_io import save_checkpoint

from analysis_helpers import one_thread  # noqa: F401 (autouse fixture)

CLASSES = [f"class{i}" for i in range(10)]
SMALL_CROSSFORMER = json.dumps(dict(embed_dim=32, depths=[2, 1, 2, 1], num_heads=[1, 1, 2, 2], num_classes=3))
SMALL_CROSSVIT = json.dumps(dict(embed_dim=[16, 32], depth=[[1, 1, 0]], num_heads=[2, 2], num_classes=3))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A checkpoint of a randomly initialised fcaformer_nano (grey 56 x 56 input), in our run layout."""
    torch.manual_seed(0)
    model = crossformers.create_model("fcaformer_nano")
    run = tmp_path_factory.mktemp("ckpt") / "run"
    pre = dict(input_size=[1, 56, 56], mean=[0.286], std=[0.353], interpolation="bicubic", crop_pct=1.0)
    save_checkpoint(run / "best", model, dict(model="fcaformer_nano", model_kwargs=dict(num_classes=10, in_chans=1),
                                              classes=CLASSES, preprocessing=pre))
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Two grey 28 x 28 images and one RGB 30 x 40 image (another size: resized by the preprocessing)."""
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L").save(d / "a.png")
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L").save(d / "b.png")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), mode="RGB").save(d / "c.png")
    return [str(d / n) for n in ("a.png", "b.png", "c.png")]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


def test_attention_on_our_checkpoint(run_dir, images, tmp_path, capsys):
    code, out, err = _run(["analyze", "attention", str(run_dir), "--images", *images, "--queries", "28,28", "5,50",
                           "--output", str(tmp_path)], capsys)
    assert code == 0, err
    assert "c.png: 30x40 (HxW) image resized to 56x56" in err
    w, h = _png(tmp_path / "attention.png")
    assert w > 600 and h > 600
    res = json.loads((tmp_path / "attention.json").read_text())
    assert res["model"] == "fcaformer_nano" and len(res["maps"]) == 3 * 2 * 6
    m = res["maps"][3]
    assert m["block"] == "stages.2.blocks.3" and sum(v for k, v in m["mass"].items() if ":" not in k) == (
        pytest.approx(1.0))
    assert f"wrote {tmp_path / 'attention.png'}" in out


def test_distance_amplitude_cross_tokens(run_dir, images, tmp_path, capsys):
    for cmd, stem in (("distance", "distance"), ("amplitude", "amplitude"), ("cross-tokens", "cross_tokens")):
        code, out, err = _run(["analyze", cmd, str(run_dir), str(run_dir), "--labels", "one", "two",
                               "--images", *images[:2], "--output", str(tmp_path)], capsys)
        assert code == 0, err
        _png(tmp_path / f"{stem}.png")
        res = json.loads((tmp_path / f"{stem}.json").read_text())
        assert [m["label"] for m in res["models"]] == ["one", "two"]
    dist = json.loads((tmp_path / "distance.json").read_text())["models"][0]["blocks"]
    assert all(b["mean_distance_px"] > 0 for b in dist) and dist[0]["meta"]["stride_px"] == [16.0, 16.0]
    amp = json.loads((tmp_path / "amplitude.json").read_text())["models"][0]["blocks"]
    assert len(amp) == 8 and amp[0]["kind"] == "convnext"
    ct = json.loads((tmp_path / "cross_tokens.json").read_text())["models"][0]
    assert ct["sources"] == ["stages.2.blocks.0", "stages.2.blocks.1", "stages.2.blocks.2", "stages.3.blocks.0"]


def test_crossformer_and_crossvit_by_name(images, tmp_path, capsys):
    code, _, err = _run(["analyze", "attention", "crossformer_tiny", "--model-kwargs", SMALL_CROSSFORMER,
                         "--img-size", "64", "--images", images[0], "--output", str(tmp_path / "cf")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "cf" / "attention.json").read_text())
    assert res["label"] == "crossformer_tiny (random init)" and res["input_size"] == [3, 64, 64]
    assert [m["meta"]["lda"] for m in res["maps"][:2]] == [False, True]
    code, _, err = _run(["analyze", "amplitude", "crossformer_tiny", "crossformer_pp_small", "--model-kwargs",
                         SMALL_CROSSFORMER, json.dumps(dict(embed_dim=32, depths=[1, 1, 4, 1], num_heads=[1, 1, 2, 2])),
                         "--img-size", "64", "--images", images[0], "--output", str(tmp_path / "amp")], capsys)
    assert code == 0, err
    models = json.loads((tmp_path / "amp" / "amplitude.json").read_text())["models"]
    assert [any(b["acl"] for b in m["blocks"]) for m in models] == [False, True]
    code, _, err = _run(["analyze", "attention", "crossvit_tiny_240", "--model-kwargs", SMALL_CROSSVIT,
                         "--img-size", "48", "--images", images[0], "--output", str(tmp_path / "cv")], capsys)
    assert code == 0, err
    maps = json.loads((tmp_path / "cv" / "attention.json").read_text())["maps"]
    assert [m["kind"] for m in maps] == ["cross", "cross"] and maps[0]["query_centre_px"] is None
    _png(tmp_path / "cv" / "attention.png")


def test_dataset_images(run_dir, fmnist, tmp_path, capsys):
    code, _, err = _run(["analyze", "distance", str(run_dir), "--data", fmnist, "--num-images", "3",
                         "--output", str(tmp_path)], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "distance.json").read_text())["models"][0]["num_images"] == 3


def test_cam(run_dir, images, tmp_path, capsys):
    pytest.importorskip("pytorch_grad_cam")
    assert set(CAM_METHOD_NAMES) == set(CAM_METHODS)
    code, _, err = _run(["analyze", "cam", str(run_dir), "--images", *images, "--layer", "stages.2",
                         "--output", str(tmp_path)], capsys)
    assert code == 0, err
    _png(tmp_path / "cam.png")
    res = json.loads((tmp_path / "cam.json").read_text())
    assert res["layers"] == ["stages.2"] and len(res["classes"]) == 3 and res["classes"][0] in CLASSES


@pytest.mark.parametrize("argv,message", [
    (["--blocks", "stages.0.blocks.0"], "block stages.0.blocks.0 (convnext) has no attention: choose one of "
                                        "stages.2.blocks.0"),
    (["--blocks", "stages.1.*"], "no attention block matches"),
    ([], "no images: pass --images FILE ... or --data NAME"),
    (["--images", "missing.png"], "image not found"),
    (["--queries", "60,3"], "outside the 56x56 px model input"),
    (["--queries", "3"], "is not 'y,x' in pixels"),
    (["--model-kwargs", "{}"], "drop the model arguments [] (--model-kwargs) (they apply to model names only)"),
    (["--data", "fashion-mnist", "--num-images", "0"], "--num-images must be >= 1"),
])
def test_bad_input_is_one_error_line(run_dir, images, tmp_path, capsys, argv, message):
    if "--images" not in argv and argv[:1] != ["--data"] and argv:
        argv = argv + ["--images", images[0]]
    code, _, err = _run(["analyze", "attention", str(run_dir), *argv, "--output", str(tmp_path)], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "attention.png").exists()


def test_bad_input_other_commands(images, tmp_path, capsys):
    code, _, err = _run(["analyze", "cross-tokens", "crossvit_tiny_240", "--model-kwargs", SMALL_CROSSVIT,
                         "--img-size", "48", "--images", images[0], "--output", str(tmp_path)], capsys)
    assert code == 2 and "is not an FcaFormer" in err
    with pytest.raises(SystemExit) as e:  # argparse: an empty --images list
        cli.main(["analyze", "attention", "fcaformer_nano", "--images", "--output", str(tmp_path)])
    assert e.value.code == 2 and capsys.readouterr().err.count("error:") == 1
    with pytest.raises(SystemExit) as e:
        cli.main(["analyze", "cam", "fcaformer_nano", "--images", images[0], "--method", "nope"])
    assert e.value.code == 2
