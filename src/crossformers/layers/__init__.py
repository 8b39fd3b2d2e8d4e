"""Pieces shared by the model families, each named by its paper term."""
from .attention import dot_product_attention, explicit_attention
from .embed import CrossScaleEmbedding
from .grouping import group_tokens, padding_key_mask, ungroup_tokens
from .linear import OneDNNLinear, OneDNNMlp, fast_linear, set_onednn_linear, set_packed_weights
from .position_bias import DynamicPosBias, OffsetBiasTable, resample_grid_table

__all__ = ["dot_product_attention", "explicit_attention", "CrossScaleEmbedding", "group_tokens", "ungroup_tokens",
           "padding_key_mask", "DynamicPosBias", "OffsetBiasTable", "resample_grid_table", "fast_linear",
           "OneDNNLinear", "OneDNNMlp", "set_onednn_linear", "set_packed_weights"]
