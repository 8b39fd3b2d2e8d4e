"""Whether a tool is running the model rather than PyTorch's eager mode: the rule every fast path in ``layers``
uses to step aside, so compilers, exporters, tracers and FLOP counters see the ordinary ops."""
from __future__ import annotations

import torch

__all__ = ["tool_is_running"]


def tool_is_running() -> bool:
    """True while ``torch.jit`` scripts or traces, ``torch.compile`` or ``torch.export`` traces, or a Python
    dispatch mode is active (``torch.utils.flop_counter.FlopCounterMode``, fake tensors, ...)."""
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or torch._C._len_torch_dispatch_stack() > 0)
