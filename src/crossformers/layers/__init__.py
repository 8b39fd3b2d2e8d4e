"""Pieces shared by the model families, each named by its paper term."""
from .attention import attention, explicit_attention
from .position_bias import OffsetBiasTable, resample_grid_table

__all__ = ["attention", "explicit_attention", "OffsetBiasTable", "resample_grid_table"]
