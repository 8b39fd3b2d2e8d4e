"""Model-independent helpers at the bottom of the package (they import nothing from crossformers above them):
MAC counting with ``torch.utils.flop_counter``, the CPU's model name, onnxruntime sessions (:mod:`.onnx_session`)."""
from .cpu import cpu_model_name
from .macs import count_macs, explicit_attention_mode, input_shape_of

__all__ = ["count_macs", "explicit_attention_mode", "input_shape_of", "cpu_model_name"]
