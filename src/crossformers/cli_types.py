"""Shared by the ``crossformers`` subcommands (the main CLI and the ``cli`` modules of the packages): argparse value
types (each raises ``ArgumentTypeError`` with a fix) and the logging set-up."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

__all__ = ["json_object", "positive_int", "non_negative_int", "setup_logging", "add_command_group"]


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


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (main() may be called repeatedly with a
    redirected stderr, e.g. in tests)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Log crossformers messages as plain lines to stderr."""
    logger = logging.getLogger("crossformers")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


def add_command_group(subparsers: argparse._SubParsersAction, name: str, dest: str, metavar: str = "COMMAND",
                      **parser_kwargs: Any) -> argparse._SubParsersAction:
    """Add ``crossformers NAME SUBCOMMAND ...``: a parser ``name`` (``parser_kwargs``: ``help``, ``description``)
    whose own subcommands are required and stored in ``dest``; returns the group to add them to."""
    p = subparsers.add_parser(name, **parser_kwargs)
    group = p.add_subparsers(dest=dest, metavar=metavar, parser_class=type(p))
    group.required = True
    return group


def add_retain_memory_flag(parser: argparse.ArgumentParser) -> None:
    """``--retain-freed-memory`` / ``--no-retain-freed-memory`` (default on) for the commands that run models many
    times (train, eval, predict), whose handlers call :func:`crossformers.inference.retain_freed_memory` when it is
    set."""
    parser.add_argument("--retain-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="keep freed memory in the process for the next tensors (glibc: no fresh mappings, no "
                             "trimming): faster steps and forward passes, resident size stays at its peak "
                             "(default: on)")
