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

A package is about the size of the model's weights (111 MB for CrossFormer-T), so the cache is bounded: after a new
package is written, the least recently used ones are deleted until the packages take at most
``CROSSFORMERS_COMPILE_CACHE_MAX_MB`` MiB (default :data:`DEFAULT_MAX_MB`; ``0`` keeps everything). Loading a package
marks it used (its modification time). The package just written is always kept, even when it alone is larger.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CrossformersError
from ..layers.linear_calibration import machine_key

__all__ = ["CACHE_ENV", "CACHE_MAX_ENV", "DEFAULT_MAX_MB", "CompileCacheError", "resolve_cache_dir", "package_key",
           "cache_limit_bytes", "mark_used", "evict"]

#: the environment variable naming the default cache directory (unset or empty: no cache)
CACHE_ENV = "CROSSFORMERS_COMPILE_CACHE"
#: the environment variable bounding the packages' total size, in MiB (0: no bound)
CACHE_MAX_ENV = "CROSSFORMERS_COMPILE_CACHE_MAX_MB"
#: the bound without that variable, in MiB: room for dozens of small models' packages or a few of the largest
DEFAULT_MAX_MB = 5120


class CompileCacheError(CrossformersError, ValueError):
    """The compile cache's settings are unusable (e.g. a size bound that is not a number)."""


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path | None:
    """``cache_dir`` as a path, or the directory named by ``CROSSFORMERS_COMPILE_CACHE`` when it is None (None
    when that is unset or empty: no cache).

    Raises:
        CompileCacheError: there is a cache and ``CROSSFORMERS_COMPILE_CACHE_MAX_MB`` is not a size (checked here,
            before any compiling, rather than when the first package is written).
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV, "").strip() or None
    if cache_dir is None:
        return None
    cache_limit_bytes()
    return Path(cache_dir).expanduser()


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


def cache_limit_bytes() -> int | None:
    """The bound on the packages' total size in bytes (``CROSSFORMERS_COMPILE_CACHE_MAX_MB`` MiB, default
    :data:`DEFAULT_MAX_MB`), or None for no bound (the variable is ``0``).

    Raises:
        CompileCacheError: the variable is not a whole number of MiB, or is negative.
    """
    text = os.environ.get(CACHE_MAX_ENV, "").strip()
    try:
        mib = DEFAULT_MAX_MB if not text else int(text)
        if mib < 0:
            raise ValueError
    except ValueError:
        raise CompileCacheError(f"{CACHE_MAX_ENV}={text!r} is not a size in MiB: set it to a whole number >= 0 "
                                "(0 keeps every package)") from None
    return None if mib == 0 else mib << 20


def mark_used(path: str | os.PathLike) -> None:
    """Record that the package at ``path`` was used now (its modification time), so that :func:`evict` keeps it over
    packages used longer ago. A file that is gone or read-only is left as it is."""
    try:
        os.utime(path)
    except OSError:
        pass


def evict(cache_dir: str | os.PathLike, keep: str | os.PathLike | None = None,
          limit_bytes: int | None = None) -> list[Path]:
    """Delete the least recently used packages (``*.pt2`` in ``cache_dir``) until the rest take at most
    ``limit_bytes`` (default :func:`cache_limit_bytes`; None: delete nothing). ``keep`` (the package just written)
    is never deleted. Files another process deletes meanwhile are skipped; a file that cannot be deleted still
    counts against the bound.

    Returns:
        The deleted paths, least recently used first.
    """
    if limit_bytes is None:
        limit_bytes = cache_limit_bytes()
    if limit_bytes is None:
        return []
    keep = None if keep is None else Path(keep).resolve()
    packages = []
    for path in Path(cache_dir).glob("*.pt2"):
        try:
            stat = path.stat()
        except OSError:
            continue
        packages.append((stat.st_mtime, stat.st_size, path))
    packages.sort(key=lambda entry: entry[0], reverse=True)  # most recently used first
    total, removed = 0, []
    for _, size, path in packages:
        total += size
        if total > limit_bytes and path.resolve() != keep:
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:  # another process deleted it meanwhile
                pass
            except OSError:  # cannot be deleted: it still takes its space
                continue
            total -= size
    return removed[::-1]
