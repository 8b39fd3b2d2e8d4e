"""DataLoaders whose sample order is a pure function of (seed, epoch) and that can resume mid-epoch.

Single-process and distributed loaders share one sampler, :class:`ResumableSampler` (a
``torch.utils.data.DistributedSampler``; one replica when not distributed), so:

* epoch ``e`` is shuffled with ``torch.Generator().manual_seed(seed + e)`` (DistributedSampler's
  rule): a run resumed at epoch ``e`` sees exactly the order of an uninterrupted run;
* ``set_epoch(loader, e, start_batch=k)`` skips the first ``k`` batches of epoch ``e``;
* the loader's own ``torch.Generator`` (which seeds worker processes, hence the random
  augmentation in workers) is reseeded from ``(seed, epoch)`` too, and the global RNGs are
  never consumed by the loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .errors import DataError

__all__ = ["ResumableSampler", "ResumableRepeatAugSampler", "batches_per_epoch", "build_loader", "set_epoch"]


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the loader generator for an epoch (distinct from the sampler's ``seed + epoch``)."""
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA6B + 0x632BE5AB) % (2**63)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch at a given position.

    Args:
        dataset: the dataset (only ``len`` is used).
        num_replicas: number of processes (1 when not distributed).
        rank: this process's rank in ``0..num_replicas-1``.
        shuffle: shuffle with a generator seeded by ``seed + epoch``; else ``0..N-1`` order.
        seed: base seed, identical on all ranks.
        drop_last: drop the tail so every rank gets the same number of *distinct* samples; when
            False (default) the tail is padded by repeating the first samples (DistributedSampler's
            behaviour, which slightly biases distributed evaluation).

    ``len(sampler)`` is the number of indices this rank yields for the current epoch after
    the skipped ones.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start_index = 0

    def set_start_index(self, start_index: int) -> None:
        """Skip the first ``start_index`` indices (of this rank) of the current epoch.

        Raises:
            DataError: ``start_index`` outside ``0..num_samples``.
        """
        if not 0 <= start_index <= self.num_samples:
            raise DataError(
                f"Cannot skip {start_index} samples: this rank has only {self.num_samples} per epoch; "
                "check the resumed batch index and batch size."
            )
        self.start_index = int(start_index)

    def __iter__(self):  # type: ignore[override]
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class ResumableRepeatAugSampler(ResumableSampler):
    """Repeated augmentation (Hoffer et al. 2020; DeiT's ``RASampler``, as used by CrossViT) that can resume.

    Each epoch takes the shuffled indices, repeats each one ``num_repeats`` times in a row and deals them out over the
    replicas, so the copies of an image land in different processes (one process: consecutive batches), then keeps
    the first ``num_selected_samples`` per rank (about ``len(dataset) / num_replicas``: an epoch costs as much as
    without repeats). The order is timm's :class:`~timm.data.distributed_sampler.RepeatAugSampler` with its epoch
    set to ``seed + epoch``; ``start_index`` skips indices as in :class:`ResumableSampler`.

    Args:
        dataset: the dataset (only ``len`` is used).
        num_replicas, rank: processes and this process's rank.
        shuffle: shuffle before repeating. seed: base seed, identical on all ranks.
        num_repeats: copies of each image per epoch (>= 2).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 num_repeats: int = 3) -> None:
        from timm.data.distributed_sampler import RepeatAugSampler

        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.num_repeats = int(num_repeats)
        self._repeat = RepeatAugSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                        num_repeats=self.num_repeats)
        self.num_samples = len(self._repeat)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):  # type: ignore[override]
        self._repeat.set_epoch(self.seed + self.epoch)
        indices = list(iter(self._repeat))
        return iter(indices[self.start_index :])


def build_loader(
    dataset: Dataset,
    batch_size: int,
    is_training: bool,
    num_workers: int = 0,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool | None = None,
    *,
    epoch: int = 0,
    start_batch: int = 0,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    persistent_workers: bool = False,
    aug_repeats: int = 0,
) -> DataLoader:
    """Build a deterministic, resumable DataLoader.

    Args:
        dataset: map-style dataset yielding ``(image_tensor, label)``.
        batch_size: samples per batch (per process when distributed), >= 1.
        is_training: shuffle (order set by ``seed`` and the epoch) if True, dataset order if False.
        num_workers: DataLoader worker processes (0 = load in the main process).
        distributed: shard the data over ``torch.distributed`` processes (a ``DistributedSampler``).
        seed: base seed for shuffling and worker seeding; use the same value on all ranks.
        drop_last: drop the last incomplete batch; ``None`` = ``is_training`` (keeps Mixup batches even).
        epoch: epoch the loader is prepared for (same as calling :func:`set_epoch` afterwards).
        start_batch: skip this many batches of ``epoch`` (mid-epoch resume).
        num_replicas: world size; default ``dist.get_world_size()`` when distributed. Passing it with
            ``rank`` works without an initialised process group (tests, custom launchers).
        rank: this process's rank; default ``dist.get_rank()`` when distributed.
        pin_memory: passed to DataLoader.
        collate_fn: passed to DataLoader (default collation if None).
        persistent_workers: keep workers alive across epochs. Off by default: workers are seeded
            when they start, so only fresh workers pick up the per-epoch seed needed for exact resume.
        aug_repeats: repeated augmentation for training: each image this many times per epoch
            (:class:`ResumableRepeatAugSampler`); 0 or 1 = off.

    Returns:
        A DataLoader whose ``sampler`` is a :class:`ResumableSampler`; call
        ``set_epoch(loader, epoch)`` before each epoch. ``len(loader)`` counts the remaining batches.

    Raises:
        DataError: empty dataset, bad batch size / worker count / replica settings, ``distributed=True``
            without an initialised process group (and no ``num_replicas``/``rank``), or ``start_batch``
            beyond the epoch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"num_workers must be an int >= 0, got {num_workers!r}: use 0 to load in the main process.")
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{type(dataset).__name__} has no len(): build_loader needs a map-style dataset.") from None
    if n == 0:
        raise DataError("The dataset is empty: check its root folder, split and limit.")
    if drop_last is None:
        drop_last = is_training
    if distributed:
        if num_replicas is None or rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise DataError(
                    "distributed=True but torch.distributed is not initialised: call "
                    "torch.distributed.init_process_group() first, or pass num_replicas= and rank= explicitly."
                )
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
    else:
        if (num_replicas or 1) != 1 or (rank or 0) != 0:
            raise DataError(f"num_replicas={num_replicas}, rank={rank} need distributed=True; drop them or set it.")
        num_replicas, rank = 1, 0
    if not (isinstance(num_replicas, int) and num_replicas >= 1 and isinstance(rank, int) and 0 <= rank < num_replicas):
        raise DataError(
            f"Need num_replicas >= 1 and 0 <= rank < num_replicas, got num_replicas={num_replicas}, rank={rank}."
        )

    if isinstance(aug_repeats, bool) or not isinstance(aug_repeats, int) or aug_repeats < 0:
        raise DataError(f"aug_repeats must be an int >= 0 (0 = off, e.g. 3), got {aug_repeats!r}.")
    if is_training and aug_repeats > 1:
        sampler: ResumableSampler = ResumableRepeatAugSampler(dataset, num_replicas=num_replicas, rank=rank,
                                                              shuffle=True, seed=seed, num_repeats=aug_repeats)
    else:
        sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=is_training, seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,
        generator=torch.Generator(),
        persistent_workers=persistent_workers and num_workers > 0,
    )
    set_epoch(loader, epoch, start_batch=start_batch)
    return loader


def batches_per_epoch(loader: DataLoader) -> int:
    """Number of batches in a full epoch of ``loader`` on this rank (ignoring any skipped start).

    Raises:
        DataError: the loader was not built by :func:`build_loader`.
    """
    sampler = loader.sampler
    if not isinstance(sampler, ResumableSampler) or loader.batch_size is None:
        raise DataError("batches_per_epoch needs a loader from crossformers.data.build_loader.")
    n, bs = sampler.num_samples, loader.batch_size
    return n // bs if loader.drop_last else math.ceil(n / bs)


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Prepare ``loader`` for ``epoch``, optionally skipping its first ``start_batch`` batches.

    Call before iterating each epoch, distributed or not. The order of epoch ``epoch`` depends
    only on ``(seed, epoch, num_replicas, rank)``, and with ``start_batch=k`` the loader yields
    exactly the batches ``k, k+1, ...`` of that order. The skip applies to this epoch only: the
    next ``set_epoch`` call without ``start_batch`` starts at batch 0 again.

    Args:
        loader: a loader from :func:`build_loader` (any loader whose sampler has ``set_epoch`` is
            accepted when ``start_batch`` is 0).
        epoch: epoch number, >= 0.
        start_batch: batches to skip, ``0..batches_per_epoch(loader)``.

    Raises:
        DataError: negative epoch or ``start_batch``, ``start_batch`` beyond the epoch, or
            ``start_batch > 0`` on a loader not built by :func:`build_loader`.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise DataError(f"epoch must be an int >= 0, got {epoch!r}.")
    if isinstance(start_batch, bool) or not isinstance(start_batch, int) or start_batch < 0:
        raise DataError(f"start_batch must be an int >= 0, got {start_batch!r}.")
    sampler = loader.sampler
    if not isinstance(sampler, ResumableSampler):
        if start_batch:
            raise DataError(
                "start_batch needs a loader from crossformers.data.build_loader (its sampler can skip batches)."
            )
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return
    total = batches_per_epoch(loader)
    if start_batch > total:
        raise DataError(
            f"start_batch={start_batch} is beyond the epoch ({total} batches of {loader.batch_size}): "
            "the checkpoint's batch index does not match this dataset / batch size / world size."
        )
    sampler.set_epoch(epoch)
    sampler.set_start_index(min(start_batch * loader.batch_size, sampler.num_samples))  # type: ignore[operator]
    if loader.generator is not None:
        loader.generator.manual_seed(_epoch_seed(sampler.seed, epoch))
