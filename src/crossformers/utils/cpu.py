"""The CPU's model name, signature and /proc/cpuinfo fields, read once per process without running anything:
:func:`cpu_model_name`, :func:`cpu_signature`, :func:`cpuinfo_field`; whether it runs bf16 (:func:`cpu_bf16_problem`)
and has VNNI (:func:`cpu_has_vnni`)."""
from __future__ import annotations

import functools
import platform

__all__ = ["cpu_model_name", "cpu_signature", "cpuinfo_field", "cpu_bf16_problem", "cpu_has_vnni"]


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


def cpu_bf16_problem() -> str | None:
    """Why bf16 is no option on this CPU, as the start of a sentence; None where oneDNN has bf16 kernels for it
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: AVX-512 or newer; native bf16 instructions with AVX512-BF16 /
    AMX, emulated on plain AVX-512).

    Without those kernels PyTorch still runs bf16, through slow fallback loops: a bf16 autocast training step took
    12x (fcaformer_nano) to 43x (CrossFormer-T) the fp32 step's time on an AVX2-only AMD EPYC Zen 3
    (``docs/benchmarks/amd_zen3_amp_training.md``)."""
    import torch  # this module reads /proc only; torch is imported when the question is asked

    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 support in oneDNN (it needs AVX-512 "
            "or newer; fast with AVX512-BF16 / AMX)")


def cpu_has_vnni() -> bool:
    """Whether the CPU has VNNI int8 dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8). Without them x86 int8
    products add pairs of u8 x s8 into 16 bits, which saturates for activations quantized to the full 0-255 range;
    int8 quantization then keeps activations to 0-127 (``reduce_range``). Measured on an AVX2-only AMD EPYC Zen 3:
    CrossViT's logits drifted 0.23 from fp32 with the full range."""
    import torch

    flags = set((cpuinfo_field("flags") or "").split())
    return bool(torch.cpu._is_vnni_supported() or flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
