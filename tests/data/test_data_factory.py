"""build_dataset / dataset_defaults lookup, subsets and an end-to-end batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crossformers.data import (
    DataError,
    FashionMNIST,
    LabeledSubset,
    build_dataset,
    build_loader,
    build_transform,
    canonical_dataset_name,
    dataset_defaults,
    stratified_indices,
    take_subset,
)

needs_real = pytest.mark.usefixtures("fmnist")  # skips without the data, fails on CI (tests/conftest.py)


def test_names() -> None:
    for name in ("fashion-mnist", "fashion_mnist", "FMNIST", " Fashion-MNIST "):
        assert canonical_dataset_name(name) == "fashion-mnist"
    assert canonical_dataset_name("imagenet") is None


def test_unknown_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as exc:
        build_dataset("cifar10", "train")
    msg = str(exc.value)
    assert "'cifar10' is neither a built-in dataset nor an existing directory" in msg
    assert "fashion-mnist" in msg and "fmnist" in msg and "train/ and val/" in msg
    with pytest.raises(DataError, match="neither a built-in"):
        dataset_defaults("cifar10")


def test_fashion_mnist_defaults() -> None:
    d = dataset_defaults("fmnist")
    assert d["num_classes"] == 10 and d["in_chans"] == 1 and d["img_size"] == 28
    assert d["input_size"] == (1, 28, 28) and d["mean"] == (0.2860,) and d["std"] == (0.3530,)
    assert d["classes"][0] == "T-shirt/top" and d["crop_pct"] == 1.0


def test_stratified_indices() -> None:
    targets = [0] * 10 + [1] * 3 + [2] * 10
    idx = stratified_indices(targets, 9)
    assert idx == sorted(idx) and np.bincount(np.asarray(targets)[idx]).tolist() == [3, 3, 3]
    idx = stratified_indices(targets, 15)  # class 1 runs out: the others fill in
    assert np.bincount(np.asarray(targets)[idx]).tolist() == [6, 3, 6]
    assert stratified_indices(targets, 100) == list(range(23))


@needs_real
def test_end_to_end_fashion_mnist_batch() -> None:
    d = dataset_defaults("fashion-mnist")
    tf = build_transform(
        True, d["input_size"], d["mean"], d["std"], scale=(0.6, 1.0), auto_augment="rand-m9-mstd0.5", re_prob=0.25
    )
    ds = build_dataset("fashion_mnist", "val", transform=tf, limit=50, stratified=True)
    assert isinstance(ds, LabeledSubset) and len(ds) == 50 and ds.classes == d["classes"]
    assert np.bincount(ds.targets).tolist() == [5] * 10
    x, y = next(iter(build_loader(ds, 16, is_training=True, seed=0)))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    first = take_subset(FashionMNIST(split="val"), 7)
    assert first.targets == FashionMNIST(split="val", limit=7).targets
    with pytest.raises(DataError, match="Subset size"):
        take_subset(first, -2)
