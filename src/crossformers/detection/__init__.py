"""Dense prediction with crossformers backbones: feature extractors (defined in :mod:`crossformers.dense`, shared with
segmentation; the common ones are re-exported here), torchvision detectors built on them, and their training /
evaluation tasks (``crossformers dense train --task detection|instance-segmentation``)."""
from ..dense.authors import backbone
from ..dense.backbones import BackboneError, PyramidBackbone, pyramid_backbone
from ..models.dense_checkpoint import DenseCheckpointWarning, load_dense_weights
from .complexity import count_macs, detector_complexity, segmenter_complexity
from .detectors import BackboneWithFPN, mask_rcnn, retinanet, retinanet_anchor_generator
from .tasks import DetectionTask, InstanceSegmentationTask  # registers the "detection" / "instance-segmentation" tasks

__all__ = ["backbone", "pyramid_backbone", "retinanet", "mask_rcnn", "BackboneWithFPN", "retinanet_anchor_generator",
           "PyramidBackbone", "BackboneError", "count_macs", "detector_complexity", "segmenter_complexity",
           "load_dense_weights", "DenseCheckpointWarning", "DetectionTask", "InstanceSegmentationTask"]
