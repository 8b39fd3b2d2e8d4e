"""Data-parallel training under torchrun (gloo on CPU) matches a single process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from plain_sgd import use_plain_sgd
from safetensors.torch import load_file

from crossformers.engine import ConfigError, TrainConfig, train
from crossformers.engine.distributed import init_distributed, resolve_device

# Why timm:test_vit: it normalises with LayerNorm only. A model with BatchNorm normalises each process's 4 images with
# their own statistics on gloo (no SyncBatchNorm on CPU), so its result legitimately depends on the process count.
# Why `timm:` and not a test-registered name: torchrun starts fresh interpreters that only know registered models.
# Why plain SGD (tests/engine/plain_sgd.py) and not the engine's AdamW: AdamW divides each update by the gradient's
# own running scale, so gradients summed instead of averaged over the processes would give the same weights; with
# SGD the update is -lr * grad and a wrong scale moves the weights by as much again. Why accum_steps 2: the micro-batch
# without gradient synchronisation (DDP's no_sync) must add up to the same gradient as well.
ARGS = dict(model="timm:test_vit", img_size=32, batch_size=8, accum_steps=2, limit_train=64, limit_val=30, epochs=1,
            hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), warmup_steps=1, label_smoothing=0.0, weight_decay=0.0,
            lr=0.5, device="cpu")
PLAIN_SGD = Path(__file__).with_name("plain_sgd.py")

def _flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        out += [flag, *map(str, v)] if isinstance(v, tuple) else [flag, str(v)]
    return out


def test_single_process_is_not_distributed(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert not info.distributed and info.world_size == 1 and info.is_main
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_two_processes_match_one(tmp_path, fmnist, monkeypatch):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(PLAIN_SGD),
           "train", *_flags(ARGS), "--data", fmnist, "--output", str(tmp_path / "two"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es), 4 images per process per step" in proc.stderr  # global batch 8 split over 2 ranks
    use_plain_sgd(monkeypatch)
    train(TrainConfig(**ARGS, data=fmnist, output=str(tmp_path / "one")), progress=False)
    start = TrainConfig(**{**ARGS, "lr": 1e-30, "warmup_lr": 1e-30, "min_lr": 1e-30}, max_steps=1, data=fmnist,
                        output=str(tmp_path / "start"))
    train(start, progress=False)  # the same initial weights, moved by nothing measurable

    two = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    init = load_file(str(tmp_path / "start" / "last" / "model.safetensors"))
    assert two.keys() == one.keys()
    # 4 SGD steps of lr 0.5 move the weights by far more than the tolerance: a gradient of the wrong scale shows
    assert max(float((one[k] - init[k]).abs().max()) for k in one) > 0.05
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=0, atol=2e-5), f"{k}: {(one[k] - two[k]).abs().max()}"
    # the metrics of the epoch too: train loss / top-1 summed over both processes, validation split over both
    # (30 images: rank 0 validates 15, rank 1 15, in batches of 4) and gathered
    rows = {n: json.loads((tmp_path / n / "metrics.jsonl").read_text().splitlines()[-1]) for n in ("one", "two")}
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "step"):
        assert rows["two"][key] == pytest.approx(rows["one"][key], rel=1e-5, abs=1e-6), key
    # rank 0 alone wrote the run files; nothing from rank 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
