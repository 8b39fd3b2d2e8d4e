"""Where tokens sit in the input image, in pixels (re-exported for the analysis API).

The pieces live with what they describe: :class:`Lattice`, :func:`conv_chain`, FcaFormer's cross-token lattice
(:func:`cross_token_lattice`) and :func:`pairwise_distance` in :mod:`crossformers.layers.geometry`; CrossFormer's
group layout (:func:`group_coordinates`, :func:`group_of_token`) beside the grouping itself in
:mod:`crossformers.layers.grouping`.
"""
from __future__ import annotations

from ..layers.geometry import Lattice, conv_chain, cross_token_lattice, pairwise_distance
from ..layers.grouping import group_coordinates, group_of_token

__all__ = ["Lattice", "conv_chain", "group_coordinates", "group_of_token", "cross_token_lattice", "pairwise_distance"]
