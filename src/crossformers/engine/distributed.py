"""Multi-process data-parallel training under ``torchrun``.

Launch with e.g. ``torchrun --nproc_per_node 2 -m crossformers train ...``. ``torchrun`` sets the environment
variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; when they are present :func:`init_distributed` creates the
process group (``nccl`` on CUDA, ``gloo`` on CPU), and the training loop wraps the model in
``DistributedDataParallel`` and shards every epoch with a distributed sampler.

Conventions:

* ``--batch-size`` is the GLOBAL batch: each of the ``world_size`` processes loads ``batch_size / world_size``
  images per step (it must divide evenly), so a run gives the same optimisation whatever the process count.
* Only rank 0 logs, shows progress bars and writes files (checkpoints, metrics, curves).
* BatchNorm layers are converted to ``SyncBatchNorm`` only with the ``nccl`` backend; ``gloo`` (CPU) has no
  SyncBatchNorm kernel, so on CPU each process normalises with its own batch statistics (the result then depends on
  the process count, unlike for LayerNorm-only models such as ViTs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..utils.cpu import cpu_bf16_problem
from .errors import ConfigError

__all__ = ["DistInfo", "resolve_device", "check_amp", "init_distributed", "cleanup_distributed", "barrier",
           "all_reduce_sum", "all_gather_objects", "maybe_sync_batchnorm", "launched_by_torchrun"]


@dataclass
class DistInfo:
    """Where this process runs.

    Attributes:
        rank: global process index (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: process index on this machine (selects the GPU).
        device: the torch device of this process.
        backend: ``'nccl'``, ``'gloo'`` or ``None`` when not distributed.
        initialized_here: :func:`init_distributed` created the process group (and :func:`cleanup_distributed`
            destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        """True when running in a process group (also with a single process under ``torchrun``)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes a ``torchrun`` launch (``RANK`` and ``WORLD_SIZE`` set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_amp(amp: bool, device: torch.device) -> None:
    """Refuse bf16 autocast (``--amp``) on a CPU without oneDNN bf16 kernels
    (:func:`crossformers.utils.cpu.cpu_bf16_problem`): it would run, but through PyTorch's fallback loops, 12-43x
    slower than fp32 (training steps on an AVX2-only AMD EPYC Zen 3).

    Raises:
        ConfigError: ``amp`` on such a CPU; the message names the fix (train or evaluate without ``--amp``).
    """
    if not amp or device.type != "cpu":
        return
    problem = cpu_bf16_problem()
    if problem is not None:
        raise ConfigError(f"--amp (bf16 autocast): {problem}, so bf16 runs through slow fallback loops (12-43x the "
                          "fp32 time measured on an AVX2 CPU): run without it (--no-amp, or amp: false in a config "
                          "file; the CrossFormer and CrossViT recipes turn it on)")


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """Turn ``'auto' | 'cpu' | 'cuda' | 'cuda:N'`` into a device.

    ``auto`` picks ``cuda:<local_rank>`` when CUDA is available, else the CPU. Plain ``cuda`` under ``torchrun``
    means ``cuda:<local_rank>``.

    Raises:
        ConfigError: CUDA requested but not available, or an unknown spec.
    """
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available here: use --device cpu or auto")
        return torch.device(f"cuda:{local_rank}") if spec == "cuda" else torch.device(spec)
    raise ConfigError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")


def init_distributed(device_spec: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Initialise ``torch.distributed`` if launched by ``torchrun``; otherwise describe a single process.

    Args:
        device_spec: see :func:`resolve_device`.
        timeout_s: collective-operation timeout in seconds.

    Returns:
        A :class:`DistInfo`. An already initialised process group is reused (and left alone at cleanup).
    """
    if not launched_by_torchrun():
        return DistInfo(device=resolve_device(device_spec))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return DistInfo(rank, world, local_rank, device, dist.get_backend(), initialized_here=False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend, initialized_here=True)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op when not distributed)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index or 0])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op when not distributed); returns it."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: object, info: DistInfo) -> list:
    """Gather one picklable object per process, in rank order (``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def maybe_sync_batchnorm(model: nn.Module, info: DistInfo) -> nn.Module:
    """Convert BatchNorm to SyncBatchNorm for multi-process ``nccl`` runs; unchanged otherwise (see module docs)."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and info.backend == "nccl" and info.world_size > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
