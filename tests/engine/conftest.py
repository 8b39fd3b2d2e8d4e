"""Fixtures of the engine tests: tiny training configs, a small image folder and one finished run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossformers.engine import TrainConfig
from threads import one_intra_op_thread

# timm's test_vit (0.27 M params, LayerNorm only) trains a step in a few ms on a CPU; at 32x32 it has 4 patches.
FAST_MODEL = "timm:test_vit"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_intra_op_thread():
        yield


@pytest.fixture
def tiny_config(tmp_path: Path, fmnist: str):
    """Factory of a fast TrainConfig (test_vit at 32 px on a Fashion-MNIST subset, no warmup)."""

    def make(name: str = "run", **overrides) -> TrainConfig:
        values = dict(model=FAST_MODEL, data=fmnist, img_size=32, epochs=1, batch_size=16, limit_train=64,
                      limit_val=32, warmup_steps=0, lr=1e-3, output=str(tmp_path / name), device="cpu")
        values.update(overrides)
        return TrainConfig(**values)

    return make


def write_image_folder(root: Path, classes: tuple[str, ...] = ("bag", "shoe", "shirt"), n_train: int = 8,
                       n_val: int = 4) -> Path:
    """``root/{train,val}/<class>/<i>.png`` with random 28x28 grey images (class-dependent brightness)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(rng.normal(60 + 60 * c, 30, (28, 28)), 0, 255).astype(np.uint8)
                Image.fromarray(arr, mode="L").save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A valid 3-class image folder (8 train / 4 val images per class)."""
    return write_image_folder(tmp_path_factory.mktemp("folder") / "ds")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, fmnist: str) -> Path:
    """A finished 1-epoch run of test_vit on 64 Fashion-MNIST images, with EMA (shared, read-only)."""
    from crossformers.engine import train

    out = tmp_path_factory.mktemp("trained") / "run"
    with one_intra_op_thread():
        train(TrainConfig(model=FAST_MODEL, data=fmnist, img_size=32, epochs=1, batch_size=16, limit_train=64,
                          limit_val=32, warmup_steps=0, ema_decay=0.9, output=str(out), device="cpu"),
              progress=False)
    return out
