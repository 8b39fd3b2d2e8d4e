"""Model families; importing this package registers every model with timm and crossformers."""
from . import fcaformer  # noqa: F401
from .fcaformer import FcaFormer, FcaFormerPlain

__all__ = ["FcaFormer", "FcaFormerPlain"]
