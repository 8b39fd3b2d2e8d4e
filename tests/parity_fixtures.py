"""Helpers to read the parity fixtures in ../shared/parity (beside the repository)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("CROSSFORMERS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
PARITY = SHARED / "parity"


def load_case(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(json metadata, tensors) of one parity fixture; skips only if ../shared is absent."""
    meta_path = PARITY / f"{case}.json"
    if not meta_path.is_file():
        pytest.fail(f"parity fixture {meta_path} missing: tests expect ../shared/parity beside the repository")
    from safetensors.torch import load_file

    return json.loads(meta_path.read_text()), load_file(str(PARITY / f"{case}.safetensors"))


def official_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference model's state dict as the official code would save it."""
    return {k[len("state_dict/"):]: v for k, v in tensors.items() if k.startswith("state_dict/")}


def official_keys(variant: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a full-size official checkpoint, from parity/keys/<variant>.txt."""
    out = {}
    for line in (PARITY / "keys" / f"{variant}.txt").read_text().splitlines():
        key, shape = line.split("\t")
        dims = shape.strip("()").replace(" ", "")
        out[key] = tuple(int(d) for d in dims.split(",") if d)
    return out
