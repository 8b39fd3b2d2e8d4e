"""The CPU's model name and signature, read without running anything: :func:`cpu_model_name`,
:func:`cpu_signature`."""
from __future__ import annotations

import platform

__all__ = ["cpu_model_name", "cpu_signature"]


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


def cpu_signature() -> str:
    """Vendor, family and model numbers from /proc/cpuinfo, e.g. ``"AuthenticAMD family 25 model 17"`` ("" where it
    cannot be read). Virtual machines often report only a generic model name ("AMD EPYC"); these numbers still tell
    the microarchitecture (family 25 model 17: Zen 4), so timings name them too."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return ""
    if "cpu family" not in fields or "model" not in fields:
        return ""
    return f"{fields.get('vendor_id', '?')} family {fields['cpu family']} model {fields['model']}"
