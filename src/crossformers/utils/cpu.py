"""The CPU's model name, signature and /proc/cpuinfo fields, read once per process without running anything:
:func:`cpu_model_name`, :func:`cpu_signature`, :func:`cpuinfo_field`."""
from __future__ import annotations

import functools
import platform

__all__ = ["cpu_model_name", "cpu_signature", "cpuinfo_field"]


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """Each /proc/cpuinfo key (lower case) with its first value ({} where the file cannot be read). Read once: the
    calibration's machine key asks for it whenever a model chooses its linear path."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def cpuinfo_field(key: str) -> str | None:
    """The first value of ``key`` in /proc/cpuinfo (e.g. ``"flags"``, ``"cpu family"``), None where absent."""
    return _cpuinfo().get(key.lower())


def cpu_model_name() -> str:
    """The "model name" line of /proc/cpuinfo, else ``platform.processor()`` / ``platform.machine()``."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_signature() -> str:
    """Vendor, family and model numbers from /proc/cpuinfo, e.g. ``"AuthenticAMD family 25 model 17"`` ("" where it
    cannot be read). Virtual machines often report only a generic model name ("AMD EPYC"); these numbers still tell
    the microarchitecture (family 25 model 17: Zen 4), so timings name them too."""
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    if family is None or model is None:
        return ""
    return f"{cpuinfo_field('vendor_id') or '?'} family {family} model {model}"
