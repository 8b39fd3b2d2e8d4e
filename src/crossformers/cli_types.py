"""argparse value types shared by the ``crossformers`` subcommands (each raises ``ArgumentTypeError`` with a fix)."""
from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["json_object", "positive_int", "non_negative_int"]


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line, e.g. ``'{"num_classes": 10}'`` (model kwargs)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"num_classes\": 10}'")
    return value


def _whole_number(text: str, minimum: int, requirement: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"invalid value {value}: {requirement}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (sizes in pixels, batch sizes)."""
    return _whole_number(text, 1, "must be positive")


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (counts where 0 means "none", e.g. warm-up calls, ``--batch-size 0`` to skip)."""
    return _whole_number(text, 0, "must be >= 0")
