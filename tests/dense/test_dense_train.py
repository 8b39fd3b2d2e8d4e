"""Dense training end to end on tiny data and backbones: one step + evaluation per task, exact resume, schedules,
layer decay, the `crossformers dense` command (train, eval, predict, bad input)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from crossformers.cli import main
from crossformers.dense.train import DenseTrainConfig, DenseTrainer, dense_evaluate, dense_predict, dense_train
from crossformers.engine.distributed import DistInfo
from crossformers.engine.errors import ConfigError, OutputExistsError

from dense_synthetic import TINY_BACKBONE

TASKS = {
    "detection": dict(task="detection", img_size=64),
    "instance-segmentation": dict(task="instance-segmentation", img_size=64, head_width=16, rois_per_image=32),
    "semantic-segmentation": dict(task="semantic-segmentation", img_size=64),
}


def _cfg(root: Path, out: Path, **kw) -> DenseTrainConfig:
    base = dict(model="crossformer_tiny", model_kwargs=dict(TINY_BACKBONE), data=str(root), output=str(out),
                epochs=1, batch_size=2, lr=1e-4, warmup_steps=0, limit_train=2, device="cpu", log_interval=1,
                fpn_channels=32, detections_per_img=10)
    base.update(kw)
    return DenseTrainConfig(**base)


@pytest.mark.parametrize("task", list(TASKS))
def test_one_step_and_evaluation_per_task(task, coco_root, seg_root, tmp_path):
    root = seg_root if task == "semantic-segmentation" else coco_root
    cfg = _cfg(root, tmp_path / "run", **TASKS[task])
    result = dense_train(cfg, progress=False)
    assert result["step"] == 1 and result["epoch"] == 1
    keys = {"detection": ["val_bbox_AP", "val_bbox_AP50"],
            "instance-segmentation": ["val_bbox_AP", "val_segm_AP", "val_segm_AP50"],
            "semantic-segmentation": ["val_mIoU", "val_mAcc", "val_aAcc"]}[task]
    for k in keys:
        assert 0.0 <= result[k] <= 1.0
    run = tmp_path / "run"
    for name in ("best/model.safetensors", "last/train_state.pt", "metrics.csv", "curves.png", "config.yaml"):
        assert (run / name).is_file(), name
    if task == "instance-segmentation":  # the narrow RoI heads were built and trained
        w = load_file(str(run / "last" / "model.safetensors"))
        assert w["roi_heads.box_head.fc7.weight"].shape == (16, 16)
        assert w["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[:2] == (3, 16)
    meta = json.loads((run / "best" / "meta.json").read_text())
    assert meta["task"] == task and meta["classes"][-1] == "bright"
    # the saved run evaluates to the same numbers
    ev = dense_evaluate(run, device="cpu")
    for k in keys:
        assert ev[k[4:]] == pytest.approx(result[k], abs=1e-6)
    if task == "semantic-segmentation":  # slide mode runs too; prediction writes the drawing and the label map
        assert 0.0 <= dense_evaluate(run, device="cpu", eval_mode="slide")["mIoU"] <= 1.0
        image = root / "images" / "val" / "s0.png"
        rows = dense_predict(run, [image], tmp_path / "pred", device="cpu")
        from PIL import Image

        labels = np.array(Image.open(tmp_path / "pred" / "s0_labels.png"))
        assert labels.shape == (64, 96) and labels.max() <= 2
        assert rows[0]["pixel_fraction_by_label"] == pytest.approx(
            {int(c): float((labels == c).mean()) for c in np.unique(labels)}, abs=1e-4)
        assert Image.open(tmp_path / "pred" / "s0.png").mode == "RGB"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def test_interrupted_and_resumed_run_ends_with_identical_weights(coco_root, tmp_path):
    kw = dict(task="detection", img_size=64, limit_train=4, epochs=1, ema_decay=0.9, sched="step",
              decay_milestones=[0.5])
    full = dense_train(_cfg(coco_root, tmp_path / "full", **kw), progress=False)
    assert full["step"] == 2
    part = dense_train(_cfg(coco_root, tmp_path / "part", max_steps=1, **kw), progress=False)  # stops mid-epoch
    assert part["stopped_early"] and part["step"] == 1
    resumed = dense_train(_cfg(coco_root, tmp_path / "part", resume=str(tmp_path / "part"), **kw), progress=False)
    assert resumed["step"] == 2 and resumed["val_bbox_AP"] == full["val_bbox_AP"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_file(str(tmp_path / "full" / "last" / "model_ema.safetensors"))
    ema_b = load_file(str(tmp_path / "part" / "last" / "model_ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    header, row = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    full_header, full_row = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    assert header == full_header
    n_time = 2  # epoch_time_s and train_images_per_s differ; every loss and metric is the same
    assert row.split(",")[:-n_time - 1] == full_row.split(",")[:-n_time - 1]


def _trainer(root, tmp_path, **kw) -> DenseTrainer:
    t = DenseTrainer(_cfg(root, tmp_path / "t", **kw).validate(), DistInfo(), False)
    t._setup()
    t.run_folder.unlock()
    return t


@pytest.mark.parametrize("sched", ["step", "poly"])
def test_step_and_poly_schedules(sched, seg_root, tmp_path):
    t = _trainer(seg_root, tmp_path, task="semantic-segmentation", sched=sched, epochs=10, limit_train=2, lr=1.0,
                 min_lr=0.0, warmup_steps=2, warmup_lr=0.0, decay_milestones=[0.5, 0.8], poly_power=1.0)
    assert t.total_steps == 10
    lrs = []
    for step in range(10):
        t.scheduler.step_update(step)
        lrs.append(t.optimizer.param_groups[0]["lr"])
    assert lrs[:2] == pytest.approx([0.0, 0.5])  # linear warmup
    if sched == "step":  # x0.1 at 50% and 80% of the 10 steps
        assert lrs[2:] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])
    else:  # (1 - t/T) over the 8 steps after warmup
        assert lrs[2:] == pytest.approx([1 - i / 8 for i in range(8)])


def test_layer_decay_scales_backbone_stages_and_not_the_head(coco_root, tmp_path):
    t = _trainer(coco_root, tmp_path, task="detection", layer_decay=0.5, lr=1.0)
    scale_of = {}
    names = {id(p): n for n, p in t.model.named_parameters()}
    for g in t.optimizer.param_groups:
        for p in g["params"]:
            scale_of[names[id(p)]] = g["lr_scale"]
    stem = next(v for k, v in scale_of.items() if "patch_embed" in k)
    last_stage = next(v for k, v in scale_of.items() if "stages.3.blocks" in k)
    head = next(v for k, v in scale_of.items() if k.startswith("head."))
    assert head == 1.0 and stem < last_stage < 1.0


def test_bad_options_are_config_errors(coco_root, tmp_path):
    with pytest.raises(ConfigError, match="head 'upernet' does not fit task detection"):
        _cfg(coco_root, tmp_path / "x", head="upernet").validate()
    with pytest.raises(ConfigError, match="mixup: classification augmentation"):
        _cfg(coco_root, tmp_path / "x", mixup=0.8).validate()
    with pytest.raises(ConfigError, match="unknown dense task 'panoptic'"):
        _cfg(coco_root, tmp_path / "x", task="panoptic").validate()
    with pytest.raises(ConfigError, match="multiple of 32"):
        _cfg(coco_root, tmp_path / "x", task="semantic-segmentation", img_size=70).validate()
    with pytest.raises(ConfigError, match="1 image.s. per process .1 process.es..; UPerNet's pyramid pooling"):
        DenseTrainer(_cfg(coco_root, tmp_path / "x", task="semantic-segmentation", batch_size=1),
                     DistInfo(), progress=False)
    with pytest.raises(ConfigError, match="finetune_eval_mode is for classifiers"):
        _cfg(coco_root, tmp_path / "x", finetune_eval_mode=True).validate()
    with pytest.raises(ConfigError, match="lr_schedule_unit='epoch' is for the cosine schedule only"):
        _cfg(coco_root, tmp_path / "x", sched="poly", lr_schedule_unit="epoch").validate()


def test_cli_config_file_and_its_repeat(coco_root, tmp_path, capsys, retain_memory_calls):
    """`dense train --config FILE.yaml` takes any dense option from the file (flags override it); the run writes
    RUN/config.yaml, and `--config RUN/config.yaml --output NEW` resolves to the same options."""
    import yaml

    from crossformers.dense.cli import dense_config_from_args
    from crossformers.engine.config_file import load_config_file

    cfg_file = tmp_path / "det.yaml"
    cfg_file.write_text(yaml.safe_dump(dict(task="detection", model="crossformer_tiny", model_kwargs=TINY_BACKBONE,
                                            data=str(coco_root), img_size=64, epochs=1, batch_size=2, limit_train=2,
                                            fpn_channels=32, device="cpu", sched="step", decay_rate=0.5)))
    run = tmp_path / "run"
    before = len(retain_memory_calls)
    assert main(["dense", "train", "--config", str(cfg_file), "--batch-size", "1", "--output", str(run)]) == 0
    assert retain_memory_calls[before:] == [True]  # the training command keeps freed memory (conftest records it)
    saved = load_config_file(run / "config.yaml", DenseTrainConfig)
    assert saved["sched"] == "step" and saved["decay_rate"] == 0.5 and saved["batch_size"] == 1  # the flag won
    assert "crossformers dense train --config config.yaml" in (run / "config.yaml").read_text()
    import argparse

    again = dense_config_from_args(argparse.Namespace(config=str(run / "config.yaml"), output=str(tmp_path / "b")),
                                   ["output"])
    assert dataclasses_equal_but_output(again, DenseTrainConfig.from_dict(json.loads((run / "config.json").read_text())))
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: detection\nfpn_chanels: 32\n")
    capsys.readouterr()
    assert main(["dense", "train", "--config", str(bad), "--output", str(tmp_path / "c")]) == 2
    assert "unknown option 'fpn_chanels' (did you mean fpn_channels" in capsys.readouterr().err


def dataclasses_equal_but_output(a: DenseTrainConfig, b: DenseTrainConfig) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("output"), db.pop("output")
    return da == db


def test_cli_train_eval_predict_and_bad_data(coco_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["dense", "train", "--task", "instance-segmentation", "--model", "crossformer_tiny", "--model-kwargs",
            json.dumps(TINY_BACKBONE), "--data", str(coco_root), "--img-size", "64", "--batch-size", "2",
            "--epochs", "1", "--limit-train", "2", "--fpn-channels", "32", "--device", "cpu", "--output", str(run)]
    assert main(args) == 0
    assert "best segm_AP" in capsys.readouterr().out
    assert main(["dense", "eval", str(run), "--device", "cpu", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"bbox_AP", "segm_AP", "segm_APl"} <= metrics.keys()
    assert (run / "eval-val" / "metrics.json").is_file()
    # `crossformers eval` on a dense run gives the same COCO metrics
    assert main(["eval", str(run), "--data", str(coco_root), "--device", "cpu", "--json",
                 "--output", str(tmp_path / "ev")]) == 0
    assert json.loads(capsys.readouterr().out)["segm_AP"] == pytest.approx(metrics["segm_AP"])
    images = [str(coco_root / "images" / "val" / "im0.png"), str(coco_root / "images" / "val" / "im1.png")]
    preds = tmp_path / "preds"
    assert main(["dense", "predict", str(run), *images, "--output", str(preds), "--score-thresh", "0", "--device",
                 "cpu"]) == 0
    rows = json.loads((preds / "predictions.json").read_text())
    assert [r["image"] for r in rows] == images and all("detections" in r for r in rows)
    from PIL import Image

    assert Image.open(preds / "im0.png").size == (96, 80)
    # nothing is overwritten: a second prediction into the same folder is refused
    with pytest.raises(OutputExistsError):
        dense_predict(run, images, preds, device="cpu")
    # bad data: one error line, exit code 2, the run folder untouched
    (coco_root / "images" / "train" / "im1.png").unlink()
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 of 4 image file(s)") and "im1.png" in err[0]
    assert not (tmp_path / "run2").exists()
    assert main([*args]) == 2  # the existing run is not overwritten
    assert "already exists and is not empty" in capsys.readouterr().err


def test_curves_name_the_dense_loss(seg_root, tmp_path, monkeypatch):
    """curves.png of a dense run labels its loss axis with the task's summed losses, not cross-entropy."""
    import importlib

    engine_train = importlib.import_module("crossformers.engine.train")  # the module (the package exports train())
    seen = []
    real = engine_train.plot_curves
    monkeypatch.setattr(engine_train, "plot_curves", lambda *a, **k: (seen.append(k["loss_label"]), real(*a, **k)))
    dense_train(_cfg(seg_root, tmp_path / "run", task="semantic-segmentation", img_size=64), progress=False)
    assert seen and all(label == "loss (sum of the task's losses)" for label in seen)
    assert (tmp_path / "run" / "curves.png").is_file()


@pytest.mark.parametrize("task", ["semantic-segmentation", "instance-segmentation"])
def test_two_processes_under_torchrun_train_and_gather_the_evaluation(task, coco_root, seg_root, tmp_path):
    """`torchrun --nproc_per_node 2 ... dense train`: the global batch is split over the ranks, rank 0 alone writes the
    run, and the validation each rank ran on its half of the images is gathered into the same numbers a single
    process computes for the saved weights (so a wrong gather or a dropped image shows)."""
    import os
    import subprocess
    import sys

    root = seg_root if task == "semantic-segmentation" else coco_root
    run = tmp_path / "ddp"
    # Semantic FPN (GroupNorm) trains on 1 image per process; UPerNet's BatchNorm would need 2 (a ConfigError)
    extra = ["--head-width", "16", "--rois-per-image", "32"] if task == "instance-segmentation" else ["--head", "fpn"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "crossformers", "dense", "train", "--task", task, "--model", "crossformer_tiny", "--model-kwargs",
           json.dumps(TINY_BACKBONE), "--data", str(root), "--img-size", "64", "--batch-size", "2", "--epochs", "1",
           "--lr", "1e-4", "--warmup-steps", "0", "--fpn-channels", "32", "--device", "cpu", "--no-progress",
           "--output", str(run), *extra]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es), 1 images per process per step" in proc.stderr
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    ev = dense_evaluate(run / "last", device="cpu")
    keys = ["mIoU", "mAcc", "aAcc"] if task == "semantic-segmentation" else ["bbox_AP", "segm_AP"]
    for k in keys:
        assert row[f"val_{k}"] == pytest.approx(ev[k], abs=1e-6), k
    assert ev["num_images"] == 2
