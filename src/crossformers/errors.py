"""Exception types of crossformers.

Every error a user can cause carries one message that names the problem and the fix.
"""
from __future__ import annotations


class CrossformersError(Exception):
    """Base class of the errors crossformers raises on bad input."""


class UnknownModelError(CrossformersError, ValueError):
    """A model name that is not registered (the message suggests close names)."""


class CheckpointError(CrossformersError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class PretrainedUnavailableError(CrossformersError, RuntimeError):
    """``pretrained=True`` could not be honoured (no direct URL, or no network)."""


class InputSizeError(CrossformersError, ValueError):
    """An input the model cannot process (too small, wrong channel count)."""


class PrecisionError(CrossformersError, ValueError):
    """A numeric precision (bf16, int8) this device, installation or model cannot run (the message names the fix)."""
