"""crossformers: cross-attention vision transformers (CrossViT, CrossFormer/CrossFormer++, FcaFormer).

>>> import crossformers
>>> model = crossformers.create_model("fcaformer_l1", num_classes=10)
"""
from . import models  # noqa: F401  (registers the models)
from .checkpoint import load_checkpoint, read_state_dict
from .errors import CheckpointError, CrossformersError, InputSizeError, PretrainedUnavailableError, UnknownModelError
from .factory import create_model, list_models
from .inference.folding import fuse

__version__ = "0.1.0"


__all__ = [
    "create_model", "list_models", "fuse", "load_checkpoint", "read_state_dict", "CrossformersError", "CheckpointError",
    "InputSizeError", "PretrainedUnavailableError", "UnknownModelError", "__version__",
]
