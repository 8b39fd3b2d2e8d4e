"""Subsets that keep ``classes`` / ``targets`` (for quick tests and small runs)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset, Subset

from .errors import DataError

__all__ = ["LabeledSubset", "stratified_indices", "take_subset"]


class LabeledSubset(Subset):
    """``torch.utils.data.Subset`` that also exposes the parent's labels.

    Attributes:
        classes: the parent's class names (all of them, also those absent from the subset).
        class_to_idx: the parent's mapping, if it has one.
        targets: labels of the selected samples, as a list of int.
        samples: ``(path, label)`` pairs of the selected samples if the parent has ``samples``
            (file-backed datasets), else absent.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, [int(i) for i in indices])
        if not hasattr(dataset, "targets"):
            raise DataError(
                f"{type(dataset).__name__} has no 'targets' attribute: LabeledSubset needs a labelled dataset."
            )
        self.classes: list[str] = list(getattr(dataset, "classes", []))
        self.class_to_idx: dict[str, int] = dict(getattr(dataset, "class_to_idx", {}))
        parent_targets = dataset.targets
        self.targets: list[int] = [int(parent_targets[i]) for i in self.indices]
        parent_samples = getattr(dataset, "samples", None)
        if parent_samples is not None:
            self.samples = [parent_samples[i] for i in self.indices]


def stratified_indices(targets: Sequence[int] | np.ndarray, n: int) -> list[int]:
    """Pick ``n`` indices spread evenly over the classes, deterministically.

    Classes are visited round-robin, each contributing its next sample in dataset order, so the
    class counts differ by at most one (unless a class runs out of samples).

    Args:
        targets: label of every sample, shape ``(N,)``.
        n: how many indices to return; clipped to ``N``.

    Returns:
        Sorted list of ``min(n, N)`` indices.
    """
    t = np.asarray(targets, dtype=np.int64)
    if t.ndim != 1:
        raise DataError(f"targets must be 1-D (one label per sample), got shape {t.shape}.")
    rank = np.empty_like(t)
    for c in np.unique(t):
        mask = t == c
        rank[mask] = np.arange(int(mask.sum()))
    order = np.lexsort((t, rank))  # primary key: rank within class, then class id
    return sorted(order[: max(0, int(n))].tolist())


def take_subset(dataset: Dataset, n: int, stratified: bool = False) -> LabeledSubset:
    """First ``n`` samples of ``dataset``, or (``stratified=True``) ``n`` samples balanced over classes.

    Args:
        dataset: a dataset with ``targets`` (and usually ``classes``).
        n: subset size, >= 0; larger than the dataset means all of it.
        stratified: balance classes with :func:`stratified_indices` instead of taking the first ``n``.

    Returns:
        A :class:`LabeledSubset` with ``classes`` and ``targets``.

    Raises:
        DataError: ``n`` is not a non-negative int, or the dataset has no ``targets``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"Subset size must be a non-negative int, got {n!r}: e.g. take_subset(ds, 1000).")
    if not hasattr(dataset, "targets"):
        raise DataError(f"{type(dataset).__name__} has no 'targets' attribute: take_subset needs a labelled dataset.")
    total = len(dataset)  # type: ignore[arg-type]
    indices = stratified_indices(dataset.targets, n) if stratified else list(range(min(n, total)))
    return LabeledSubset(dataset, indices)
