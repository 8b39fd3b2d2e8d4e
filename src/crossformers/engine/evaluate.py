"""Evaluation of a trained model or an official checkpoint on a dataset split: :func:`evaluate`.

Preprocessing follows the checkpoint: our checkpoints carry the exact training-time eval pipeline in ``meta.json``;
a model created by name (optionally with an official checkpoint file) uses its ``pretrained_cfg`` (input size,
mean/std, ``crop_pct``, interpolation), i.e. the authors' evaluation protocol.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import build_dataset, build_loader, build_transform
from ..errors import CheckpointError
from ..fileio import atomic_write_text
from .distributed import check_amp, resolve_device
from .loading import load_model, model_in_chans
from .metrics import plot_confusion_matrix, topk_correct
from .modeling import check_model_input, model_preprocessing

__all__ = ["evaluate", "resolve_model", "write_eval_outputs"]


def resolve_model(
    model: nn.Module | str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    use_ema: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Turn what the user gave into ``(model, info)`` with :func:`crossformers.engine.loading.load_model`.

    Args:
        model: an ``nn.Module``; one of our checkpoint / run directories; a converted folder
            (``crossformers convert``); or a model name (crossformers or ``timm:<name>``).
        checkpoint: with a model name: an official or state-dict weight file (converted on load).
        pretrained: with a model name: the authors' released weights.
        use_ema: with our checkpoint: the EMA weights.

    Returns:
        The model (eval mode, CPU unless it was elsewhere) and a dict with ``name``, ``classes`` (or None) and
        ``source``.

    Raises:
        ModelSpecError, CheckpointError, UnknownModelError: as raised by the loader.
    """
    loaded = load_model(model, checkpoint, pretrained=pretrained, use_ema=use_ema)
    return loaded.model, {"name": loaded.name, "classes": loaded.classes, "source": loaded.source}


def evaluate(
    model: nn.Module | str | os.PathLike,
    data: str,
    split: str = "val",
    batch_size: int = 128,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    use_ema: bool = False,
    workers: int = 0,
    limit: int | None = None,
    device: str = "auto",
    amp: bool = False,
    output: str | os.PathLike | None = None,
    preprocessing: dict[str, Any] | None = None,
    progress: bool | None = None,
    model_transform: Callable[[nn.Module], nn.Module] | None = None,
) -> dict[str, Any]:
    """Evaluate a classifier on a dataset split.

    Args:
        model: an ``nn.Module``, one of our checkpoint / run directories (``best/`` preferred), or a model name
            (crossformers or ``timm:<name>``) used with ``checkpoint`` / ``pretrained``.
        data: ``'fashion-mnist'`` or an image-folder root (``root/<split>/<class>/<image>``).
        split: ``'val'``, ``'train'`` or ``'test'``.
        batch_size: images per forward pass.
        checkpoint: official / state-dict weights for a model given by name.
        pretrained: load the authors' released weights for a model given by name.
        use_ema: evaluate the EMA weights of our checkpoint.
        workers: DataLoader worker processes.
        limit: evaluate a class-balanced subset of this many images.
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        amp: bfloat16 autocast.
        output: directory to write ``metrics.json``, ``confusion_matrix.json`` and ``confusion_matrix.png`` (files
            replaced atomically); ``None`` writes nothing.
        preprocessing: override keys of the eval pipeline (``input_size``, ``mean``, ``std``, ``interpolation``,
            ``crop_pct``); default from the checkpoint / ``pretrained_cfg``.
        progress: tqdm bar (``None`` = only on a terminal).
        model_transform: applied to the loaded model (eval mode, on ``device``) before evaluation, e.g.
            ``lambda m: crossformers.inference.to_precision(m, "bf16")``; it must keep the fp32 image interface.

    Returns:
        ``top1`` and ``top5`` (%), ``loss`` (mean cross-entropy, nats), ``per_class_accuracy`` (class name -> %),
        ``confusion_matrix`` (numpy int64, rows = true class, columns = predicted), ``classes``, ``num_images``,
        ``seconds`` (wall time of the loop, s), ``images_per_s`` (images/s including data loading),
        ``preprocessing``, ``model``, ``source``, ``split``, ``data``.

    Raises:
        CheckpointError: class count / names of the checkpoint differ from the dataset's.
        DataError: dataset problems (missing, empty class folders, corrupt images).
        InputSizeError: the model cannot take the preprocessing's input size.
        ConfigError: ``amp`` on a CPU without bf16 kernels (:func:`~crossformers.engine.distributed.check_amp`).
    """
    dev = resolve_device(device)
    check_amp(amp, dev)  # an option this CPU cannot run well fails before the checkpoint is read
    net, info = resolve_model(model, checkpoint=checkpoint, pretrained=pretrained, use_ema=use_ema)
    chans = model_in_chans(net)
    pre = model_preprocessing(net, in_chans=chans, overrides=preprocessing)
    tf = build_transform(False, tuple(pre["input_size"]), pre["mean"], pre["std"],
                         interpolation=pre["interpolation"], crop_pct=pre["crop_pct"])
    ds = build_dataset(data, split, transform=tf, limit=limit, stratified=limit is not None)
    classes = list(getattr(ds, "classes", []))
    num_out = getattr(net, "num_classes", None)
    if isinstance(num_out, int) and num_out != len(classes):
        raise CheckpointError(
            f"model {info['name']} ({info['source']}) predicts {num_out} classes but {data} has {len(classes)}: "
            "evaluate a checkpoint trained on this dataset, or fine-tune with `crossformers train --pretrained`")
    if info["classes"] is not None and info["classes"] != classes:
        diff = [f"{a!r}/{b!r}" for a, b in zip(info["classes"], classes, strict=False) if a != b][:3]
        raise CheckpointError(
            f"the checkpoint's class names differ from {data}'s (e.g. {', '.join(diff)}): labels would be "
            "mismatched; evaluate on the dataset the model was trained on")
    net.to(dev)
    check_model_input(net, pre["input_size"], info["name"])
    if model_transform is not None:
        net = model_transform(net)
    loader = build_loader(ds, batch_size, False, num_workers=workers, pin_memory=dev.type == "cuda")

    n_cls = len(classes)
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.int64)
    loss_sum, c1, c5, count = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, y in tqdm(loader, desc=f"eval {split}", unit="batch", disable=None if progress is None else not progress,
                         leave=False):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            a, b = topk_correct(logits, y, (1, 5))
            c1, c5, count = c1 + a, c5 + b, count + len(y)
            pred = logits.argmax(dim=-1)
            confusion += torch.bincount((y * n_cls + pred).cpu(), minlength=n_cls * n_cls).view(n_cls, n_cls)
    seconds = time.perf_counter() - t0
    cm = confusion.numpy()
    support = cm.sum(axis=1)
    per_class = {c: (100.0 * float(cm[i, i]) / float(support[i]) if support[i] else None) for i, c in enumerate(classes)}
    result: dict[str, Any] = {
        "model": info["name"],
        "source": info["source"],
        "data": str(data),
        "split": split,
        "num_images": count,
        "top1": 100.0 * c1 / max(count, 1),
        "top5": 100.0 * c5 / max(count, 1),
        "loss": loss_sum / max(count, 1),
        "per_class_accuracy": per_class,
        "classes": classes,
        "confusion_matrix": cm,
        "seconds": seconds,
        "images_per_s": count / seconds if seconds > 0 else None,
        "preprocessing": pre,
        "ema": use_ema,
    }
    if output is not None:
        write_eval_outputs(result, output)
    return result


def write_eval_outputs(result: dict[str, Any], output: str | os.PathLike) -> Path:
    """Write ``metrics.json``, ``confusion_matrix.json`` and ``confusion_matrix.png`` of an :func:`evaluate` result
    into ``output`` (created if needed; files replaced atomically). Returns the directory."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "confusion_matrix"}
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    cm = np.asarray(result["confusion_matrix"])
    atomic_write_text(out / "confusion_matrix.json", json.dumps(
        {"classes": result["classes"], "rows": "true class", "columns": "predicted class", "matrix": cm.tolist()}) + "\n")
    plot_confusion_matrix(cm, result["classes"], out / "confusion_matrix.png",
                          title=f"{result['model']} on {result['data']} ({result['split']}): top-1 {result['top1']:.2f}%")
    return out
