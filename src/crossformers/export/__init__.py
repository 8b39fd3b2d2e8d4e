"""Export crossformers classifiers to ONNX or ``torch.export`` and verify the result.

>>> from crossformers.export import export_model
>>> report = export_model("crossvit_15_240", format="onnx", dynamic=True, output="crossvit.onnx")
>>> print(report.summary())

Command line: ``crossformers export MODEL_OR_CHECKPOINT --format onnx|torch.export [--img-size H W] [--output PATH]
[--dynamic]``.
"""
from .core import FORMATS, Check, ExportError, ExportReport, SizeGuard, export_model
from .shapes import SizeRule, dynamic_size_rule

__all__ = ["export_model", "ExportReport", "Check", "ExportError", "FORMATS", "SizeRule", "SizeGuard",
           "dynamic_size_rule"]
