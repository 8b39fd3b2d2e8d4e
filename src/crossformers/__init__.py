"""crossformers: cross-attention vision transformers (CrossViT, CrossFormer/CrossFormer++, FcaFormer).

>>> import crossformers
>>> model = crossformers.create_model("fcaformer_l1", num_classes=10)
"""
from . import models  # noqa: F401  (registers the models)
from .checkpoint import load_checkpoint, read_state_dict
from .errors import CheckpointError, CrossformersError, InputSizeError, PretrainedUnavailableError, UnknownModelError
from .factory import create_model, list_models

__version__ = "0.1.0"


def fuse(model, layer_scale: bool = True, inplace: bool = True):
    """Fold Conv-BN pairs (and layer scales) for inference; see :func:`crossformers.profiling.fuse`."""
    from .profiling.fuse import fuse as _fuse

    return _fuse(model, layer_scale=layer_scale, inplace=inplace)


__all__ = [
    "create_model", "list_models", "fuse", "load_checkpoint", "read_state_dict", "CrossformersError", "CheckpointError",
    "InputSizeError", "PretrainedUnavailableError", "UnknownModelError", "__version__",
]
