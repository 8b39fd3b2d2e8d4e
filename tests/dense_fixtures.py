"""Helpers for the dense-backbone parity fixtures in ``tests/fixtures/parity/dense`` (see the README there).

The fixtures store no weights and no input: both are regenerated here from seeds, by rules of our own, so the files
stay small. The same functions made the fixtures (run against the authors' code outside the repository).
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch

DENSE = Path(__file__).resolve().parent / "fixtures" / "parity" / "dense"
KEYS = Path(__file__).resolve().parent / "fixtures" / "parity" / "keys"

#: values kept per output map (a fixed-stride sample of the flattened map)
SAMPLES_PER_MAP = 1024


def read_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every line ``key<TAB>(d0, d1, ...)`` of ``fixtures/parity/keys/<name>.txt``."""
    out = []
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        key, shape = line.split("\t")
        out.append((key, tuple(int(d) for d in shape.strip("()").replace(" ", "").split(",") if d)))
    return out


def _generator(seed: int, key: str) -> torch.Generator:
    # one stream per key, so a tensor's values depend only on (seed, key), not on the order of the keys
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


def seeded_weights(keys: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """A state dict for a key manifest, every tensor drawn from a per-key seeded stream.

    Rules (by the key's last component and rank): BatchNorm statistics near (0, 1) and ``num_batches_tracked`` 0;
    1-D ``weight`` (norm affine) uniform in [0.8, 1.2]; layer scales (``gamma*``) uniform in [0.3, 0.7]; scale
    factors uniform in [0.8, 1.2]; bias tables (``attention_biases``, ``s_token_bias``) N(0, 0.5^2); other 1-D
    tensors (biases) N(0, 0.1^2); other tensors uniform with variance 1 / fan_in.
    """
    sd = {}
    for key, shape in keys:
        leaf = key.rsplit(".", 1)[-1]
        g = _generator(seed, key)
        u = torch.rand(shape, generator=g)
        if leaf == "num_batches_tracked":
            sd[key] = torch.zeros(shape, dtype=torch.long)
            continue
        if leaf == "running_var":
            t = 0.6 + 0.8 * u
        elif leaf == "running_mean":
            t = 0.2 * (u - 0.5)
        elif leaf.startswith("gamma"):
            t = 0.3 + 0.4 * u
        elif "scale_factors" in leaf:
            t = 0.8 + 0.4 * u
        elif leaf in ("attention_biases", "s_token_bias"):
            t = 0.5 * torch.randn(shape, generator=g)
        elif leaf == "weight" and len(shape) == 1:
            t = 0.8 + 0.4 * u
        elif len(shape) <= 1:
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            t = (2 * u - 1) * math.sqrt(3.0 / fan_in)
        sd[key] = t.float()
    return sd


def seeded_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The input image batch of a fixture: ``torch.randn(shape)`` from a generator seeded with ``seed``."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def sample_map(t: torch.Tensor, n: int = SAMPLES_PER_MAP) -> tuple[torch.Tensor, int]:
    """(every ``stride``-th value of the flattened map, stride): about ``n`` values spread over the whole map."""
    stride = max(1, t.numel() // n)
    return t.reshape(-1)[::stride].contiguous(), stride


def load_dense_case(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(json metadata, stored samples) of one dense parity fixture; fails (never skips) if it is missing."""
    meta = DENSE / f"{case}.json"
    if not meta.is_file():
        pytest.fail(f"dense parity fixture {meta} missing: it is part of the repository")
    from safetensors.torch import load_file

    return json.loads(meta.read_text()), load_file(str(DENSE / f"{case}.safetensors"))


def crossformer_authors_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CrossFormer(++) dense backbone state dict in the authors' ``crossformer_backbone_det.py`` names: stage i's
    patch merging is ``layers.{i-1}.downsample.reductions`` (it ends the previous stage there), ACL is
    ``ex_conv`` / ``ex_ln``."""
    official = {}
    for k, v in state.items():
        k = k.replace(".acl.conv.", ".ex_conv.").replace(".acl.norm.", ".ex_ln.")
        if ".downsample." in k:
            stage = int(k.split(".")[1])
            k = k.replace(f"stages.{stage}.downsample.projs.", f"layers.{stage - 1}.downsample.reductions.")
            k = k.replace(f"stages.{stage}.downsample.norm.", f"layers.{stage - 1}.downsample.norm.")
        official[k.replace("stages.", "layers.", 1)] = v
    return official
