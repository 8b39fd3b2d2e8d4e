"""build_loader / set_epoch: order is a function of (seed, epoch), exact mid-epoch skip, distributed shards."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from crossformers.data import DataError, ResumableSampler, batches_per_epoch, build_loader, set_epoch


class Indices(Dataset):
    """Item i is (tensor(i), i % 10): batches reveal the sample order."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.targets = [i % 10 for i in range(n)]
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor(i), self.targets[i]


def order(loader: DataLoader) -> list[int]:
    return [int(i) for x, _ in loader for i in x]


def epoch_order(epoch: int, seed: int = 0, n: int = 103, bs: int = 8, **kw) -> list[int]:
    loader = build_loader(Indices(n), bs, is_training=True, seed=seed, **kw)
    set_epoch(loader, epoch)
    return order(loader)


def test_same_seed_and_epoch_same_order() -> None:
    a = epoch_order(3)
    # a fresh loader (as after a restart) and a loader that went through epochs 0..2 agree on epoch 3
    loader = build_loader(Indices(103), 8, is_training=True, seed=0)
    for e in range(3):
        set_epoch(loader, e)
        order(loader)
    set_epoch(loader, 3)
    assert order(loader) == a
    assert epoch_order(3, num_workers=0) == a


def test_different_epoch_or_seed_different_order() -> None:
    a = epoch_order(0)
    assert epoch_order(1) != a and epoch_order(0, seed=1) != a
    assert sorted(a) != a  # shuffled
    assert len(a) == 96 and len(set(a)) == 96  # drop_last defaults to True for training


def test_global_rng_untouched() -> None:
    torch.manual_seed(123)
    random.seed(123)
    expected_torch, expected_py = torch.rand(1), random.random()
    torch.manual_seed(123)
    random.seed(123)
    epoch_order(2)
    assert torch.equal(torch.rand(1), expected_torch) and random.random() == expected_py


def test_eval_loader_sequential_keeps_last_batch() -> None:
    loader = build_loader(Indices(21), 8, is_training=False)
    assert order(loader) == list(range(21)) and len(loader) == 3


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("k", [0, 1, 5, 12])
def test_start_batch_skips_exactly(drop_last: bool, k: int) -> None:
    bs = 8
    full = build_loader(Indices(101), bs, is_training=True, seed=7, drop_last=drop_last)
    set_epoch(full, 4)
    batches = [x.tolist() for x, _ in full]
    assert len(batches) == batches_per_epoch(full) == (12 if drop_last else 13)
    resumed = build_loader(Indices(101), bs, is_training=True, seed=7, drop_last=drop_last, epoch=4, start_batch=k)
    assert len(resumed) == len(batches) - k
    assert [x.tolist() for x, _ in resumed] == batches[k:]
    # the skip applies to one epoch only
    set_epoch(resumed, 5)
    set_epoch(full, 5)
    assert order(resumed) == order(full)


def test_start_batch_via_set_epoch_and_bounds() -> None:
    loader = build_loader(Indices(40), 8, is_training=True, seed=1)
    set_epoch(loader, 2)
    full = order(loader)
    set_epoch(loader, 2, start_batch=3)
    assert order(loader) == full[24:]
    set_epoch(loader, 2, start_batch=5)
    assert order(loader) == [] and len(loader) == 0
    with pytest.raises(DataError, match="start_batch=6 is beyond the epoch"):
        set_epoch(loader, 2, start_batch=6)
    with pytest.raises(DataError, match="epoch must be an int >= 0"):
        set_epoch(loader, -1)


def test_workers_reproduce_order() -> None:
    assert epoch_order(2, n=40, num_workers=2) == epoch_order(2, n=40)


def test_distributed_shards_without_process_group() -> None:
    n, bs, world = 50, 4, 3
    shards = []
    for rank in range(world):
        loader = build_loader(
            Indices(n), bs, is_training=True, distributed=True, seed=3, num_replicas=world, rank=rank, drop_last=False
        )
        assert isinstance(loader.sampler, DistributedSampler) and isinstance(loader.sampler, ResumableSampler)
        set_epoch(loader, 1)
        shards.append(order(loader))
    assert all(len(s) == 17 for s in shards)  # ceil(50 / 3), padded
    assert set().union(*shards) == set(range(n))
    # same as torch's DistributedSampler for that (seed, epoch)
    ref = DistributedSampler(Indices(n), num_replicas=world, rank=1, shuffle=True, seed=3)
    ref.set_epoch(1)
    assert shards[1] == list(ref)
    # resume rank 1 at batch 2
    loader = build_loader(
        Indices(n),
        bs,
        True,
        distributed=True,
        seed=3,
        num_replicas=world,
        rank=1,
        drop_last=False,
        epoch=1,
        start_batch=2,
    )
    assert order(loader) == shards[1][8:]


def test_single_process_matches_one_replica_distributed() -> None:
    a = epoch_order(5)
    b = epoch_order(5, distributed=True, num_replicas=1, rank=0)
    assert a == b


def test_loader_errors() -> None:
    with pytest.raises(DataError, match="torch.distributed is not initialised"):
        build_loader(Indices(10), 2, True, distributed=True)
    with pytest.raises(DataError, match="0 <= rank < num_replicas"):
        build_loader(Indices(10), 2, True, distributed=True, num_replicas=2, rank=2)
    with pytest.raises(DataError, match="need distributed=True"):
        build_loader(Indices(10), 2, True, num_replicas=2, rank=0)
    with pytest.raises(DataError, match="batch_size must be"):
        build_loader(Indices(10), 0, True)
    with pytest.raises(DataError, match="dataset is empty"):
        build_loader(Indices(0), 2, True)


def test_repeat_aug_sampler_is_timms_order_and_resumes():
    """Repeated augmentation (CrossViT's RASampler): timm's RepeatAugSampler order at epoch seed+epoch, the copies of
    an image dealt to different ranks, and a mid-epoch start yields the rest of the same order."""
    from timm.data.distributed_sampler import RepeatAugSampler

    from crossformers.data import ResumableRepeatAugSampler

    data = list(range(600))
    ranks = [build_loader(data, 10, True, distributed=True, num_replicas=3, rank=r, seed=5, aug_repeats=3)
             for r in range(3)]
    for loader in ranks:
        assert isinstance(loader.sampler, ResumableRepeatAugSampler)
        set_epoch(loader, 2)
    orders = [list(iter(loader.sampler)) for loader in ranks]
    for r, order in enumerate(orders):
        ref = RepeatAugSampler(data, num_replicas=3, rank=r, num_repeats=3)
        ref.set_epoch(5 + 2)
        assert order == list(iter(ref))
        assert len(order) == 512 // 3  # selected_round 256, as samplers.py:37 of CrossViT
    assert orders[0][:5] == orders[1][:5] == orders[2][:5]  # the 3 copies of an image go to the 3 ranks
    assert batches_per_epoch(ranks[0]) == 170 // 10
    loader = build_loader(data, 10, True, distributed=True, num_replicas=3, rank=1, seed=5, aug_repeats=3)
    set_epoch(loader, 2, start_batch=4)
    assert [int(i) for b in loader for i in b] == orders[1][40:170]
    single = build_loader(data, 8, True, seed=0, aug_repeats=3)
    idx = list(iter(single.sampler))
    assert len(idx) == 512 and idx[0] == idx[1] == idx[2] != idx[3]  # one process: copies in a row
    with pytest.raises(DataError, match="aug_repeats must be an int >= 0"):
        build_loader(data, 8, True, aug_repeats=-1)
