"""Which input sizes one exported graph can serve, per family.

``torch.export`` produces a graph that is valid for a whole range of input sizes only if the model takes the same
code path for all of them. Our models adapt to the input size in Python (the official code does too), so each family
has a set of sizes on which one graph is exact:

* **CrossViT** (default mode) resizes every input to its branches' native sizes: any H, W >= the largest patch.
* **CrossFormer / CrossFormer++** pad each map to a multiple of the group extent (G for SDA, G*I for LDA) and mask
  the padded keys, and a map no larger than G becomes one group: the padding, the masks and the grouping change with
  the size. With H and W multiples of P = lcm over blocks of (stride * group extent) (224 for CrossFormer v1, 448 for
  CrossFormer++ with its progressive groups), large enough that no map is smaller than its group, no padding or
  masking happens anywhere and the graph is the same.
* **FcaFormer** (hybrid and plain) uses its relative-position and cross-token tables as trained when the token grid
  matches the training grid and resamples them otherwise: one graph covers the sizes whose grids (and cross-token
  grids) are all larger than the trained ones, in multiples of 4 x the largest stride (128 hybrid, 64 plain).

:func:`dynamic_size_rule` asks the model for this set (the family protocol's ``input_size_rule``,
:mod:`crossformers.models.protocol`); the exporter checks the traced graph at two sizes of the set with onnxruntime
and puts a check into the graph that rejects sizes outside it.
"""
from __future__ import annotations

from timm.utils import unwrap_model
from torch import nn

from ..models.protocol import SizeRule

__all__ = ["SizeRule", "dynamic_size_rule"]


def dynamic_size_rule(model: nn.Module) -> SizeRule:
    """The input sizes on which ``model`` takes one code path (see the module docs).

    Args:
        model: a model implementing ``input_size_rule()`` (every crossformers family), or any model: others get
            'any size from ``min_input_size`` (default 32)', which the exporter then tries and verifies.

    Returns:
        The :class:`SizeRule`.
    """
    net = unwrap_model(model)
    rule = getattr(net, "input_size_rule", None)
    if callable(rule):
        return rule()
    m = int(getattr(net, "min_input_size", 32) or 32)
    return SizeRule((1, 1), (m, m), "no size rule is known for this model")
