"""Dense prediction with crossformers backbones: feature extractors, and torchvision detectors built on them."""
from .backbones import (
    PYRAMID_STRIDES,
    BackboneError,
    PyramidBackbone,
    SimpleFeaturePyramid,
    backbone,
    default_out_indices,
    pyramid_backbone,
)
from .complexity import count_macs, detector_complexity, segmenter_complexity
from .dense import (
    DENSE_BACKBONES,
    DenseCheckpointWarning,
    DenseLoadReport,
    backbone,  # noqa: F811 - the authors' dense backbones by name, else the classifier's features
    load_dense_weights,
)
from .detectors import BackboneWithFPN, mask_rcnn, retinanet, retinanet_anchor_generator

__all__ = ["backbone", "pyramid_backbone", "retinanet", "mask_rcnn", "BackboneWithFPN", "retinanet_anchor_generator", "PyramidBackbone", "SimpleFeaturePyramid", "BackboneError",
           "default_out_indices", "PYRAMID_STRIDES", "count_macs", "detector_complexity", "segmenter_complexity",
           "load_dense_weights", "DenseLoadReport", "DenseCheckpointWarning", "DENSE_BACKBONES"]
