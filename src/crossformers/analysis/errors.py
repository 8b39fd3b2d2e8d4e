"""Errors raised by :mod:`crossformers.analysis` for bad input.

All derive from :class:`crossformers.errors.CrossformersError` (and ``ValueError``), so the command line prints them
as one ``error: <message>`` line with exit code 2.
"""
from __future__ import annotations

from ..errors import CrossformersError

__all__ = ["AnalysisError", "NoAttentionError", "UnsupportedModelError", "EmptyInputError", "QueryError",
           "CamUnavailableError"]


class AnalysisError(CrossformersError, ValueError):
    """Base class of the analysis errors (an argument that cannot be analysed; the message says how to fix it)."""


class NoAttentionError(AnalysisError):
    """A requested block has no attention (e.g. a ConvNeXt block of a hybrid FcaFormer), or the model has no
    attention blocks crossformers knows how to read."""


class UnsupportedModelError(AnalysisError):
    """The analysis does not apply to this model (e.g. cross-token shares of a model that is not an FcaFormer)."""


class EmptyInputError(AnalysisError):
    """No images (or no models) were given."""


class QueryError(AnalysisError):
    """A query position that is malformed or outside the model's input image."""


class CamUnavailableError(AnalysisError):
    """Class activation maps need the ``grad-cam`` package (``pip install grad-cam``), or the layer is unusable."""
