"""Data-parallel training under torchrun (gloo on CPU) matches a single process with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from crossformers.engine import ConfigError, TrainConfig, train
from crossformers.engine.distributed import init_distributed, resolve_device

# Why timm:test_vit: it normalises with LayerNorm only. A model with BatchNorm normalises each process's 4 images with
# their own statistics on gloo (no SyncBatchNorm on CPU), so its result legitimately depends on the process count.
# Why `timm:` and not a test-registered name: torchrun starts fresh interpreters that only know registered models.
# Why lr 1e-4: the key bias of attention gets an exactly-zero gradient (softmax is shift invariant), so Adam divides
# rounding noise by its own magnitude and moves it by ~lr in both runs independently; at 1e-4 that stays < 1e-5.
ARGS = dict(model="timm:test_vit", img_size=32, batch_size=8, limit_train=64, limit_val=32, epochs=1, hflip=0.0,
            scale=(1.0, 1.0), ratio=(1.0, 1.0), warmup_steps=2, label_smoothing=0.0, lr=1e-4, device="cpu")


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


def test_two_processes_match_one(tmp_path, fmnist):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "crossformers", "train", *_flags(ARGS), "--data", fmnist, "--output", str(tmp_path / "two"),
           "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es), 4 images per process per step" in proc.stderr  # global batch 8 split over 2 ranks
    train(TrainConfig(**ARGS, data=fmnist, output=str(tmp_path / "one")), progress=False)

    two = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    assert two.keys() == one.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=0, atol=1e-5), f"{k}: {(one[k] - two[k]).abs().max()}"
    # rank 0 alone wrote the run files; nothing from rank 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
