"""A disk cache of ahead-of-time compiled packages (AOTInductor ``.pt2`` files), keyed by what they were compiled from.

:func:`~crossformers.inference.compile_for_inference` compiles each input shape ahead of time, which takes tens of
seconds on a 2-core CPU. Give it a cache directory (its ``cache_dir`` argument, or the environment variable
``CROSSFORMERS_COMPILE_CACHE``) and each package is kept there. A later process that exports the same program on the
same machine and software loads the package (about a second) instead of compiling it again.

"The same program" is a SHA-256 (:func:`package_key`) over:

- the exported graph's code, its signature, its inputs' shapes, strides and dtypes, and its range constraints (a
  free batch dimension);
- every parameter, buffer and constant: name, dtype, shape and bytes (frozen weights and biases are in the package);
- the inductor options and the oneDNN packing choice;
- the versions of torch and crossformers, the source of :mod:`crossformers.inference.compile`, and this machine
  (:func:`~crossformers.layers.linear_calibration.machine_key`).

A package holds a shared library and the model's weights. Loading one runs its code, so point the cache only at a
directory you own. Packages are written under a temporary name and renamed, so a crash never leaves a partial file.
Nothing is evicted: a package is about the size of the model's weights, and deleting the directory reclaims the
space.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import torch

from ..layers.linear_calibration import machine_key

__all__ = ["CACHE_ENV", "resolve_cache_dir", "package_key"]

#: the environment variable naming the default cache directory (unset or empty: no cache)
CACHE_ENV = "CROSSFORMERS_COMPILE_CACHE"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path | None:
    """``cache_dir`` as a path, or the directory named by ``CROSSFORMERS_COMPILE_CACHE`` when it is None (None
    when that is unset or empty: no cache)."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV, "").strip() or None
    return None if cache_dir is None else Path(cache_dir).expanduser()


def _version() -> str:
    try:
        return importlib.metadata.version("crossformers")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
        return "source"


def _hash_tensor(h: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def _input_specs(program: torch.export.ExportedProgram) -> str:
    """Shape (symbolic where free), stride and dtype of every graph input: the graph's code alone does not say them,
    and a package is compiled for them."""
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                specs.append(f"{node.name}:{val.dtype}:{tuple(map(str, val.shape))}:{tuple(map(str, val.stride()))}")
            else:
                specs.append(f"{node.name}:{val!r}")
    return ";".join(specs)


def package_key(program: torch.export.ExportedProgram, options: dict[str, Any]) -> str | None:
    """The cache key of compiling ``program`` with ``options`` (see the module docs): 64 hex digits, or None when
    the program holds a constant that is neither a tensor nor a plain value (nothing is cached for it then)."""
    from . import compile as compile_module  # its source is part of the key (the lowering it patches)

    h = hashlib.sha256()
    for part in (torch.__version__, _version(), machine_key(), repr(sorted(options.items())),
                 Path(compile_module.__file__).read_text(), program.graph_module.code, str(program.graph_signature),
                 repr(program.range_constraints), _input_specs(program)):
        h.update(part.encode())
        h.update(b"\0")
    values = {**program.state_dict, **program.constants}
    for name in sorted(values):
        value = values[name]
        if isinstance(value, torch.Tensor):
            _hash_tensor(h, name, value)
        elif value is None or isinstance(value, (bool, int, float, str)):
            h.update(f"{name}={value!r}".encode())
        else:  # e.g. a script object of packed weights: its content cannot be hashed here
            return None
    return h.hexdigest()
