"""Tiny models for the analysis tests (all run in milliseconds on one CPU thread) and brute-force references."""
from __future__ import annotations

import itertools

import pytest
import torch

from crossformers.models.crossformer import CrossFormer
from crossformers.models.crossvit import CrossViT
from crossformers.models.fcaformer import FcaFormer, FcaFormerPlain


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads; on the shared 2-core machine extra threads only wait. Imported by
    every test module of this folder (a conftest.py here would shadow tests/conftest.py, which other tests import)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def brute_force_groups(H: int, W: int, G: int, I: int, lda: bool) -> set[frozenset]:  # noqa: E741
    """Groups as sets of real (non-padding) tokens, straight from CrossFormer Sec. 3.2: SDA = G x G windows; LDA = inside
    each (G*I) x (G*I) region, tokens whose coordinates are equal modulo I."""
    groups: dict[tuple, set] = {}
    for y, x in itertools.product(range(H), range(W)):
        key = (y // (G * I), x // (G * I), y % I, x % I) if lda else (y // G, x // G)
        groups.setdefault(key, set()).add((y, x))
    return {frozenset(g) for g in groups.values()}


def tiny_crossformer(acl: bool = False, depths=(2, 2, 1, 1), img_size: int = 40) -> CrossFormer:
    """Stage 1 at 40 px is a 10x10 map: SDA G=4 (padded to 12), LDA G=4 I=2 (padded to 16)."""
    return CrossFormer(img_size=img_size, embed_dim=32, depths=depths, num_heads=(1, 1, 1, 1),
                       group_size=(4, 4, 4, 4), interval=(2, 2, 1, 1), patch_size=(4, 8),
                       merge_size=((2,), (2,), (2,)), num_classes=3, acl=acl, drop_path_rate=0.0).eval()


def tiny_fcaformer() -> FcaFormer:
    """Fca blocks in stages 0 (12x12 tokens at 48 px, cross grid 3x3) and 1 (6x6, cross grid 2x2)."""
    return FcaFormer(img_size=48, in_chans=1, num_classes=3, embed_dim=(16, 16, 16, 16), depths=(3, 2, 1, 1),
                     num_heads=(2, 2, 0, 0)).eval()


def tiny_fcaformer_plain() -> FcaFormerPlain:
    return FcaFormerPlain(img_size=32, in_chans=1, num_classes=3, patch_size=8, embed_dim=16, depth=3,
                          num_heads=2).eval()


def tiny_crossvit() -> CrossViT:
    """Branch grids 8x8 (patch 4 at 32 px) and 3x3 (patch 8 at 24 px, the input resized by 0.75)."""
    return CrossViT(img_size=32, img_scale=(1.0, 0.75), patch_size=(4, 8), in_chans=1, num_classes=3,
                    embed_dim=(16, 32), depth=((1, 1, 0),), num_heads=(2, 2), mlp_ratio=(2, 2)).eval()


def zero_attention_logits(model: torch.nn.Module) -> None:
    """Make every attention uniform over its keys: q = k = 0 and all position biases 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".qkv." in name or name.endswith(("rel_pos.table", "cross_bias")) or ".attn.pos.pos3.2." in name:
                p.zero_()
