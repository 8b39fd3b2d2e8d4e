"""Dense backbones shared by :mod:`crossformers.detection` and :mod:`crossformers.segmentation`: every
crossformers model as NCHW feature maps (:func:`backbone`: the authors' dense backbone where they published one,
else the classifier's features) and as a 4-level pyramid at strides 4-32 (:func:`pyramid_backbone`, with ViTDet's
:class:`SimpleFeaturePyramid` for plain models)."""
from ..models.dense_checkpoint import DenseCheckpointWarning, DenseLoadReport, load_dense_weights
from .authors import backbone, dense_name
from .backbones import (
    PYRAMID_STRIDES,
    BackboneError,
    PyramidBackbone,
    SimpleFeaturePyramid,
    default_out_indices,
    feature_sizes,
    pyramid_backbone,
)

__all__ = ["backbone", "dense_name", "pyramid_backbone", "PyramidBackbone", "SimpleFeaturePyramid", "BackboneError",
           "default_out_indices", "feature_sizes", "PYRAMID_STRIDES", "load_dense_weights", "DenseLoadReport",
           "DenseCheckpointWarning"]
