"""The dense backbones, defined in :mod:`crossformers.dense.backbones` (shared with segmentation); re-exported here
so that ``crossformers.detection.backbone`` / ``pyramid_backbone`` keep working."""
from ..dense.backbones import (
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
