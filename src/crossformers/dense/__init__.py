"""Dense backbones shared by :mod:`crossformers.detection` and :mod:`crossformers.segmentation`: every
crossformers model as NCHW feature maps (:func:`backbone`) and as a 4-level pyramid at strides 4-32
(:func:`pyramid_backbone`, with ViTDet's :class:`SimpleFeaturePyramid` for plain models)."""
from .backbones import (
    PYRAMID_STRIDES,
    BackboneError,
    PyramidBackbone,
    SimpleFeaturePyramid,
    backbone,
    default_out_indices,
    feature_sizes,
    pyramid_backbone,
)

__all__ = ["backbone", "pyramid_backbone", "PyramidBackbone", "SimpleFeaturePyramid", "BackboneError",
           "default_out_indices", "feature_sizes", "PYRAMID_STRIDES"]
