"""Looking inside the models: attention maps, attention distance, activation amplitude, cross-token shares, CAMs.

The pictures each seed paper builds its argument on, for your own models and data:

* :func:`attention_maps` — per-block attention of query positions drawn on the image (CrossFormer SDA/LDA groups,
  FcaFormer regular vs cross tokens, CrossViT CLS -> patch fusion).
* :func:`mean_attention_distance` — how far tokens attend, in input pixels (CrossFormer++ Sec. 3 / 4.1).
* :func:`activation_amplitude` — max and mean |output| per block (CrossFormer++ Sec. 3 / 4.2, ACL).
* :func:`cross_token_share` — attention mass on each earlier block's cross tokens (FcaFormer Fig. 5).
* :func:`class_activation_maps` — Grad-CAM and relatives through the ``grad-cam`` package.
* :func:`capture_attention` — the context manager underneath: records attention probabilities of chosen blocks
  (explicit softmax only while it is open) with the metadata to map them to input pixels.

The command line is ``crossformers analyze {attention,distance,amplitude,cross-tokens,cam}`` (see docs/analysis.md).
"""
from .blocks import BlockInfo, model_blocks, model_family, select_blocks
from .cam import CAM_METHODS, class_activation_maps, default_cam_layers
from .capture import AttentionCapture, AttentionRecord, TokenSegment, capture_attention
from .errors import (
    AnalysisError,
    CamUnavailableError,
    EmptyInputError,
    NoAttentionError,
    QueryError,
    UnsupportedModelError,
)
from .geometry import Lattice, conv_chain, cross_token_lattice, group_coordinates, group_of_token
from .inputs import ImageBatch, LoadedModel, dataset_images, display_images, load_model, prepare_images
from .measures import (
    AttentionMap,
    activation_amplitude,
    attention_maps,
    cross_token_share,
    mean_attention_distance,
    parse_query,
)

__all__ = [
    "AnalysisError", "AttentionCapture", "AttentionMap", "AttentionRecord", "BlockInfo", "CAM_METHODS",
    "CamUnavailableError", "EmptyInputError", "ImageBatch", "Lattice", "LoadedModel", "NoAttentionError",
    "QueryError", "TokenSegment", "UnsupportedModelError", "activation_amplitude", "attention_maps",
    "capture_attention", "class_activation_maps", "conv_chain", "cross_token_lattice", "cross_token_share",
    "dataset_images", "default_cam_layers", "display_images", "group_coordinates", "group_of_token", "load_model",
    "mean_attention_distance", "model_blocks", "model_family", "parse_query", "prepare_images", "select_blocks",
]
