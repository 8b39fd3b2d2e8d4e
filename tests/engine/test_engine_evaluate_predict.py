"""Evaluation (metrics, confusion matrix, preprocessing protocol) and prediction."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import crossformers
from crossformers.engine import ImageReadError, PartialPredictionError, evaluate, load_trained, predict
from crossformers.errors import CheckpointError


def test_evaluate_checkpoint(trained_run, fmnist, tmp_path):
    r = evaluate(trained_run, fmnist, limit=40, batch_size=16, output=tmp_path / "eval", device="cpu")
    cm = r["confusion_matrix"]
    assert isinstance(cm, np.ndarray) and cm.shape == (10, 10) and cm.sum() == r["num_images"] == 40
    assert r["top1"] == pytest.approx(100.0 * np.trace(cm) / 40)
    assert r["top1"] <= r["top5"] <= 100.0 and r["loss"] > 0 and r["images_per_s"] > 0
    assert set(r["per_class_accuracy"]) == set(r["classes"]) and len(r["classes"]) == 10
    assert r["preprocessing"]["mean"] == [0.286]  # from the checkpoint's meta, not the model's defaults
    saved = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert np.array_equal(np.array(saved["matrix"]), cm) and saved["classes"] == r["classes"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["top1"] == r["top1"]
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # the same number as the training loop's own validation of the best checkpoint (same 32-image subset)
    meta = json.loads((trained_run / "best" / "meta.json").read_text())
    again = evaluate(trained_run, fmnist, limit=32, device="cpu")
    assert again["top1"] == pytest.approx(meta["metrics"]["val_top1"])
    assert again["loss"] == pytest.approx(meta["metrics"]["val_loss"], rel=1e-5)
    ema = evaluate(trained_run, fmnist, limit=32, use_ema=True, device="cpu")
    assert ema["top1"] == pytest.approx(meta["metrics"]["val_top1_ema"])


def test_evaluate_model_name_with_official_checkpoint(fmnist, tmp_path):
    # an "official" file: {'model': state_dict} in a .pth; preprocessing must follow the model's pretrained_cfg
    torch.manual_seed(0)
    ref = crossformers.create_model("fcaformer_nano").eval()
    torch.save({"model": ref.state_dict(), "epoch": 300}, tmp_path / "official.pth")
    r = evaluate("fcaformer_nano", fmnist, checkpoint=tmp_path / "official.pth", limit=20, device="cpu")
    cfg = ref.pretrained_cfg
    assert r["preprocessing"]["input_size"] == list(cfg["input_size"])
    assert r["preprocessing"]["crop_pct"] == cfg["crop_pct"] and r["preprocessing"]["mean"] == list(cfg["mean"])
    direct = evaluate(ref, fmnist, limit=20, device="cpu")
    assert direct["top1"] == r["top1"] and direct["loss"] == pytest.approx(r["loss"])


def test_evaluate_class_mismatch(trained_run, image_folder):
    with pytest.raises(CheckpointError, match="predicts 10 classes but .* has 3"):
        evaluate(trained_run, str(image_folder), device="cpu")


def test_predict(trained_run, image_folder):
    files = sorted((image_folder / "val" / "bag").glob("*.png"))[:3]
    out = predict(trained_run, files, topk=3, device="cpu")
    _, meta = load_trained(trained_run)
    assert len(out) == 3
    for preds in out:
        assert len(preds) == 3
        probs = [p for _, p in preds]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert all(name in meta["classes"] for name, _ in preds)
    # an RGB image is converted to the model's single channel
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image_folder.parent / "rgb.jpg")
    assert len(predict(trained_run, [image_folder.parent / "rgb.jpg"], topk=20, device="cpu")[0]) == 10


def test_predict_bad_images(trained_run, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        predict(trained_run, [bad], device="cpu")
    with pytest.raises(ImageReadError, match="image not found: .*missing.png"):
        predict(trained_run, [tmp_path / "missing.png"], device="cpu")


def test_predict_classifies_the_good_images_next_to_a_corrupt_one(trained_run, image_folder, tmp_path):
    """One corrupt and one missing file among good ones: the good ones get exactly the predictions they get alone,
    the bad ones are named with their reason, and the error carries everything."""
    good = sorted((image_folder / "val" / "bag").glob("*.png"))[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    alone = predict(trained_run, good, topk=3, device="cpu", batch_size=2)
    files = [good[0], bad, good[1], tmp_path / "missing.png", good[2]]
    with pytest.raises(PartialPredictionError) as err:
        predict(trained_run, files, topk=3, device="cpu", batch_size=2)
    e = err.value
    assert isinstance(e, ImageReadError)
    assert [p is None for p in e.predictions] == [False, True, False, True, False]
    for got, want in zip([e.predictions[0], e.predictions[2], e.predictions[4]], alone, strict=True):
        assert [c for c, _ in got] == [c for c, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-6)
    assert [f for f, _ in e.failures] == [str(bad), str(tmp_path / "missing.png")]
    assert "broken.png" in e.failures[0][1] and e.failures[1][1].startswith("image not found")
    assert str(e).startswith("2 of 5 images could not be read (the other 3 were classified): ")
