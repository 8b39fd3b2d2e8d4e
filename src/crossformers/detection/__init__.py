"""Dense prediction with crossformers backbones: feature extractors (defined in :mod:`crossformers.dense`, shared with
segmentation, re-exported here), torchvision detectors built on them, and their training / evaluation tasks
(``crossformers dense train --task detection|instance-segmentation``)."""
from ..dense import (
    PYRAMID_STRIDES,
    BackboneError,
    DenseCheckpointWarning,
    DenseLoadReport,
    PyramidBackbone,
    SimpleFeaturePyramid,
    backbone,
    default_out_indices,
    load_dense_weights,
    pyramid_backbone,
)
from .complexity import count_macs, detector_complexity, segmenter_complexity
from .detectors import BackboneWithFPN, mask_rcnn, retinanet, retinanet_anchor_generator
from .tasks import DetectionTask, InstanceSegmentationTask  # registers the "detection" / "instance-segmentation" tasks

__all__ = ["backbone", "pyramid_backbone", "retinanet", "mask_rcnn", "BackboneWithFPN", "retinanet_anchor_generator",
           "PyramidBackbone", "SimpleFeaturePyramid", "BackboneError", "default_out_indices", "PYRAMID_STRIDES",
           "count_macs", "detector_complexity", "segmenter_complexity", "load_dense_weights", "DenseLoadReport",
           "DenseCheckpointWarning", "DetectionTask", "InstanceSegmentationTask"]
