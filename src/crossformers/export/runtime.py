"""Run an exported ONNX classifier with its input sizes checked first.

A graph exported with ``--dynamic`` serves a set of sizes (e.g. H, W multiples of 128 from 256 for a hybrid
FcaFormer), and a fixed export one size; onnxruntime reports any other size as a raw Reshape/Gather/dimension
error from deep inside the graph. :class:`OnnxClassifier` reads the served sizes that :func:`export_model` stored in
the file's metadata (``crossformers.size_rule``) and refuses other inputs before running, naming the sizes the file
serves and the nearest one to resize or pad to.

>>> from crossformers.export import OnnxClassifier
>>> clf = OnnxClassifier("fcaformer_l1.onnx")
>>> clf.served_sizes
'H, W multiples of 128, at least 256 x 256'
>>> logits = clf(images)  # (B, C, H, W) float32 numpy array or tensor -> (B, classes) numpy array
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from ..utils.onnx_session import open_session
from .core import ExportError

__all__ = ["OnnxClassifier", "run_onnx"]


class OnnxClassifier:
    """An exported ``.onnx`` classifier run with onnxruntime, with an up-front check of the input shape.

    Args:
        path: a file written by :func:`crossformers.export.export_model` (format ``'onnx'``).
        providers: onnxruntime execution providers (default CPU).

    Attributes:
        size_rule: the stored rule (``channels``, ``batch`` (None = any), and either ``period``/``minimum`` or a fixed
            ``height``/``width``); None for files without it (exported elsewhere or by an older version: inputs
            are then passed to onnxruntime unchecked).
        served_sizes: the sizes the file serves, in words.
        metadata: all ``metadata_props`` of the file (model name, mean, std, ...).

    Raises:
        ExportError: the file is missing, onnxruntime is not installed, or onnxruntime cannot load the file.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        self.session = open_session(path, ExportError, "running an ONNX export", providers=providers)
        self.path = str(path)
        self.input_name = self.session.get_inputs()[0].name
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        rule = self.metadata.get("crossformers.size_rule")
        self.size_rule: dict[str, Any] | None = json.loads(rule) if rule else None
        self.served_sizes = self._describe()

    def _describe(self) -> str:
        r = self.size_rule
        if r is None:
            return "unknown (no crossformers.size_rule in the file's metadata)"
        if "height" in r:
            return f"{r['height']}x{r['width']} only"
        return r.get("describe") or f"H, W multiples of {r['period']}, at least {r['minimum']}"

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise if an input of ``shape`` (B, C, H, W) is not one the file serves.

        Raises:
            ExportError: wrong rank, channel count, batch size (fixed-batch files) or image size; the message names
                what the file serves and, for a size, the nearest served size to resize or pad to.
        """
        r = self.size_rule
        if len(shape) != 4:
            raise ExportError(f"{self.path} takes a batch of images (B, C, H, W), got shape {tuple(shape)}")
        if r is None:
            return
        b, c, h, w = (int(v) for v in shape)
        if c != r["channels"]:
            raise ExportError(f"{self.path} takes {r['channels']}-channel images, got {c} channels")
        if r.get("batch") is not None and b != r["batch"]:
            raise ExportError(f"{self.path} was exported for batch {r['batch']} only, got {b}: split or pad the "
                              "batch, or export with --dynamic for any batch size")
        if "height" in r:
            if (h, w) != (r["height"], r["width"]):
                raise ExportError(f"{self.path} serves {self.served_sizes}, got {h}x{w}: resize the images to "
                                  f"{r['height']}x{r['width']}, or export with --dynamic (where the model allows)")
            return
        (ph, pw), (mh, mw) = r["period"], r["minimum"]
        if h % ph or w % pw or h < mh or w < mw:
            nh, nw = max(mh, -(-h // ph) * ph), max(mw, -(-w // pw) * pw)
            raise ExportError(f"{self.path} serves {self.served_sizes}, got {h}x{w}: resize or pad the images to "
                              f"e.g. {nh}x{nw}")

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits (B, classes) for normalised images (B, C, H, W) (see ``metadata`` for mean/std).

        Raises:
            ExportError: the input is not one the file serves (see :meth:`check`).
        """
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        self.check(x.shape)
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def run_onnx(path: str | os.PathLike, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """One-shot :class:`OnnxClassifier`: ``run_onnx("model.onnx", images)`` -> logits (B, classes).

    Raises:
        ExportError: see :class:`OnnxClassifier` and :meth:`OnnxClassifier.check`.
    """
    return OnnxClassifier(path)(images)
