"""Errors of the profiler (bad options); the CLI prints them as one ``error:`` line."""
from __future__ import annotations

from ..errors import CrossformersError

__all__ = ["ProfilingError"]


class ProfilingError(CrossformersError, ValueError):
    """A profiling request that cannot be honoured (unavailable device or compiler, bad size, dtype or option)."""
