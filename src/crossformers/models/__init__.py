"""Model families; importing this package registers every model with timm and crossformers."""
from . import crossformer, crossvit, fcaformer  # noqa: F401
from .crossformer import CrossFormer
from .fcaformer import FcaFormer, FcaFormerPlain

__all__ = ["CrossFormer", "FcaFormer", "FcaFormerPlain"]
