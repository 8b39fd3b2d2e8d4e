"""Published ImageNet-1k figures of the registered models (cited in ``docs/reference.md``).

Kept here, not in each model's ``pretrained_cfg``, so that the profiler and its accuracy/cost plot read one table.
Sources: CrossFormer (ICLR 2022) and CrossFormer++ (TPAMI 2023) papers and official configs; FcaFormer (arXiv:2211.07198)
paper and official code; CrossViT accuracies as published by timm for its ``crossvit_*`` weights (MACs from the CrossViT
paper, ICCV 2021). MACs are multiply-adds (the papers' "FLOPs").
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Published", "PUBLISHED", "FAMILIES", "published", "family_of"]


@dataclass(frozen=True)
class Published:
    """Published figures of one model.

    Attributes:
        family: paper family used to group the plot ('CrossFormer', 'CrossFormer++', 'FcaFormer', 'CrossViT',
            'CrossViT-dagger').
        top1: ImageNet-1k top-1 accuracy, percent.
        params_m: parameters, millions.
        gmacs: MACs at ``img_size``, 10^9 (None when not published).
        img_size: evaluation input side, pixels.
        source: where the figures come from.
    """

    family: str
    top1: float
    params_m: float
    gmacs: float | None
    img_size: int
    source: str


_CF = "CrossFormer paper (ICLR 2022)"
_CFPP = "CrossFormer++ paper (TPAMI 2023)"
_FCA = "FcaFormer paper (arXiv:2211.07198) and official README"
_CV = "timm ImageNet results (top-1); CrossViT paper, ICCV 2021 (MACs)"

PUBLISHED: dict[str, Published] = {
    "crossformer_tiny": Published("CrossFormer", 81.5, 27.8, 2.9, 224, _CF),
    "crossformer_small": Published("CrossFormer", 82.5, 30.7, 4.9, 224, _CF),
    "crossformer_base": Published("CrossFormer", 83.4, 52.0, 9.2, 224, _CF),
    "crossformer_large": Published("CrossFormer", 84.0, 92.0, 16.1, 224, _CF),
    "crossformer_pp_small": Published("CrossFormer++", 83.2, 23.3, 4.9, 224, _CFPP),
    "crossformer_pp_base": Published("CrossFormer++", 84.2, 52.0, 9.5, 224, _CFPP),
    "crossformer_pp_large": Published("CrossFormer++", 84.7, 92.0, 16.6, 224, _CFPP),
    "crossformer_pp_huge": Published("CrossFormer++", 84.9, 96.0, 21.8, 224, _CFPP),
    "fcaformer_l0": Published("FcaFormer (plain)", 74.3, 5.9, None, 224, "FcaFormer paper (arXiv:2211.07198), Sec. 3.2 (plain L0)"),
    "fcaformer_l1": Published("FcaFormer", 80.3, 6.2, 1.4, 224, _FCA),
    "fcaformer_l2": Published("FcaFormer", 83.1, 16.3, 3.6, 224, _FCA),
    "fcaformer_l3": Published("FcaFormer", 84.2, 27.9, 6.7, 224, _FCA),
    "fcaformer_l4": Published("FcaFormer", 84.9, 65.6, 14.5, 224, _FCA),
    "crossvit_tiny_240": Published("CrossViT", 73.35, 7.01, 1.6, 240, _CV),
    "crossvit_small_240": Published("CrossViT", 81.04, 26.86, 5.6, 240, _CV),
    "crossvit_base_240": Published("CrossViT", 82.21, 105.03, 21.2, 240, _CV),
    "crossvit_9_240": Published("CrossViT", 73.99, 8.55, 1.8, 240, _CV),
    "crossvit_15_240": Published("CrossViT", 81.52, 27.53, 5.8, 240, _CV),
    "crossvit_18_240": Published("CrossViT", 82.39, 43.27, 9.0, 240, _CV),
    "crossvit_9_dagger_240": Published("CrossViT-dagger", 76.99, 8.78, 2.0, 240, _CV),
    "crossvit_15_dagger_240": Published("CrossViT-dagger", 82.30, 28.21, 6.1, 240, _CV),
    "crossvit_18_dagger_240": Published("CrossViT-dagger", 82.49, 44.27, 9.5, 240, _CV),
    "crossvit_15_dagger_408": Published("CrossViT-dagger", 83.84, 28.50, None, 408, _CV),
    "crossvit_18_dagger_408": Published("CrossViT-dagger", 84.20, 44.61, None, 408, _CV),
}

FAMILIES = ("CrossFormer", "CrossFormer++", "FcaFormer", "FcaFormer (plain)", "CrossViT", "CrossViT-dagger")


def published(name: str) -> Published | None:
    """Published figures of crossformers model ``name`` (None for models without published ImageNet results, such
    as ``fcaformer_nano``)."""
    return PUBLISHED.get(name)


def family_of(name: str) -> str:
    """Family label of a model name (from the table, else guessed from the name prefix; 'other' if unknown)."""
    if name in PUBLISHED:
        return PUBLISHED[name].family
    for prefix, family in (("crossformer_pp", "CrossFormer++"), ("crossformer", "CrossFormer"),
                           ("fcaformer", "FcaFormer"), ("crossvit", "CrossViT")):
        if name.split(":")[-1].startswith(prefix):
            return family
    return "other"
