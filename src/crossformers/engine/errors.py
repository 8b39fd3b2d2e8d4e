"""Errors raised by the training / evaluation engine.

All derive from :class:`crossformers.errors.CrossformersError`, so the command line reports them as one
``error: <message>`` line with exit code 2.
"""
from __future__ import annotations

from ..errors import CheckpointError, CrossformersError

__all__ = ["ConfigError", "ModelSpecError", "OutputExistsError", "TrainingError", "NonFiniteLossError",
           "ImageReadError", "PartialPredictionError"]


class ConfigError(CrossformersError, ValueError):
    """An invalid training / evaluation option (the message names the option and a valid value)."""


class OutputExistsError(CrossformersError, FileExistsError):
    """The output directory already holds a run and ``resume`` was not requested."""


class TrainingError(CrossformersError, RuntimeError):
    """Training cannot continue (the message says why and what was kept)."""


class NonFiniteLossError(TrainingError):
    """The loss (or the weights) became NaN/inf; the last good checkpoint is kept untouched."""


class ImageReadError(CrossformersError, OSError):
    """An image file given for prediction is missing or cannot be decoded (the message names the file)."""


class ModelSpecError(CheckpointError):
    """A model spec that contradicts its arguments (weights or constructor arguments for a run directory, a weight
    file given as the model, EMA weights for a model name); the message says which to drop or how to pass it."""


class PartialPredictionError(ImageReadError):
    """Some images given for prediction could not be read; every other image was classified.

    Attributes:
        predictions: one entry per input image, in input order: its top-k ``(class, probability)`` list, or None
            for an image that could not be read.
        failures: ``(image, reason)`` of each unreadable image, in input order.
    """

    def __init__(self, message: str, predictions: list, failures: list[tuple[str, str]]):
        super().__init__(message)
        self.predictions = predictions
        self.failures = failures
