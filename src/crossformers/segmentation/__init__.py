"""Semantic segmentation on crossformers backbones with segmentation-models-pytorch decoders (FPN, UPerNet).

>>> from crossformers import segmentation
>>> model = segmentation.upernet("crossformer_small", num_classes=150, checkpoint_path="crossformer-s.pth")
"""
from .models import CrossformersEncoder, EncoderDecoder, fpn, upernet

__all__ = ["fpn", "upernet", "CrossformersEncoder", "EncoderDecoder"]
