"""Semantic segmentation on crossformers backbones with segmentation-models-pytorch decoders (FPN, UPerNet).

>>> from crossformers import segmentation
>>> model = segmentation.upernet("crossformer_small", num_classes=150, checkpoint_path="crossformer-s.pth")
"""
from .models import CrossformersEncoder, EncoderDecoder, fpn, upernet
from .tasks import NormalizedSegmenter, SemanticSegmentationTask  # registers the "semantic-segmentation" task

__all__ = ["fpn", "upernet", "CrossformersEncoder", "EncoderDecoder", "NormalizedSegmenter",
           "SemanticSegmentationTask"]
