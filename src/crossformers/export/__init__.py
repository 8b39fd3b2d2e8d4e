"""Export crossformers classifiers to ONNX or ``torch.export`` and verify the result.

>>> from crossformers.export import export_model
>>> report = export_model("crossvit_15_240", format="onnx", dynamic=True, output="crossvit.onnx")
>>> print(report.summary())

Command line: ``crossformers export MODEL_OR_CHECKPOINT --format onnx|torch.export [--img-size H W] [--output PATH]
[--dynamic]``.

Running an ONNX file with its served sizes checked up front (a clear error instead of onnxruntime's Reshape/Gather
error for a size the graph does not serve):

>>> from crossformers.export import OnnxClassifier
>>> logits = OnnxClassifier("crossvit.onnx")(images)
"""
from .core import FORMATS, MIN_LOGIT_SCALE, Check, ExportError, ExportReport, SizeGuard, export_model
from .runtime import OnnxClassifier, run_onnx
from .shapes import SizeRule, dynamic_size_rule

__all__ = ["export_model", "ExportReport", "Check", "ExportError", "FORMATS", "MIN_LOGIT_SCALE", "SizeRule",
           "SizeGuard", "dynamic_size_rule", "OnnxClassifier", "run_onnx"]
