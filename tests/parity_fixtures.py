"""Helpers to read the parity fixtures in ``tests/fixtures/parity`` (see the README there for their origin)."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import crossformers

PARITY = Path(__file__).resolve().parent / "fixtures" / "parity"


def load_case(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(json metadata, tensors) of one parity fixture; fails (never skips) if the file is missing."""
    meta_path = PARITY / f"{case}.json"
    if not meta_path.is_file():
        pytest.fail(f"parity fixture {meta_path} missing: it is part of the repository (tests/fixtures/parity)")
    from safetensors.torch import load_file

    return json.loads(meta_path.read_text()), load_file(str(PARITY / f"{case}.safetensors"))


def official_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference model's state dict as the official code would save it."""
    return {k[len("state_dict/"):]: v for k, v in tensors.items() if k.startswith("state_dict/")}


def loaded_case(case: str, make_model: Callable[[dict], torch.nn.Module]
                ) -> tuple[dict, dict[str, torch.Tensor], torch.nn.Module]:
    """(json metadata, tensors, ``make_model(metadata)`` with the fixture's official state dict loaded through
    :func:`crossformers.load_checkpoint`, i.e. through the model's checkpoint converter)."""
    meta, tensors = load_case(case)
    model = make_model(meta)
    crossformers.load_checkpoint(model, official_state_dict(tensors))
    return meta, tensors, model


def save_official_pth(path: Path, tensors: dict[str, torch.Tensor], **extra) -> Path:
    """Write the fixture's weights as the authors' training scripts save them, ``{"model": state_dict, **extra}``."""
    torch.save({"model": official_state_dict(tensors), **extra}, path)
    return path


def official_keys(variant: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a full-size official checkpoint, from ``fixtures/parity/keys/<variant>.txt``."""
    out = {}
    for line in (PARITY / "keys" / f"{variant}.txt").read_text().splitlines():
        key, shape = line.split("\t")
        dims = shape.strip("()").replace(" ", "")
        out[key] = tuple(int(d) for d in dims.split(",") if d)
    return out
