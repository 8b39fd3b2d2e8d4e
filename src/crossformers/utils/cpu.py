"""The CPU's model name, read without running anything: :func:`cpu_model_name`."""
from __future__ import annotations

import platform

__all__ = ["cpu_model_name"]


def cpu_model_name() -> str:
    """The "model name" line of /proc/cpuinfo, else ``platform.processor()`` / ``platform.machine()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
