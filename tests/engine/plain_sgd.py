"""Plain SGD in place of the engine's AdamW, for known-answer tests of the training loop.

AdamW normalises every update by the gradient's own running scale, so it hides a gradient that is 2x too large (a sum
instead of a mean over processes, a missing ``/ accum_steps``). With SGD without momentum or weight decay the update is
exactly ``-lr * grad``: two runs that must compute the same gradients end with the same weights only if they did.

:func:`use_plain_sgd` swaps timm's ``create_optimizer_v2`` (which the engine calls) for a :class:`RecordingSGD` over
the same parameter groups (weight-decay groups, layer-decay ``lr_scale``), which records what every step used. Run as
a script (``python plain_sgd.py train ...``, also under ``torchrun``) it is ``crossformers`` with that swap.
"""
from __future__ import annotations

import sys

import timm.optim
import torch
from torch import nn

_REAL_CREATE = timm.optim.create_optimizer_v2


class RecordingSGD(torch.optim.SGD):
    """SGD (no momentum) that records, at every ``step()``, each group's lr and the global gradient L2 norm it saw."""

    def __init__(self, groups: list[dict], lr: float) -> None:
        super().__init__(groups, lr=lr, momentum=0.0)
        self.lrs: list[list[float]] = []  # per step, per group
        self.grad_norms: list[float] = []  # per step, L2 norm over all gradients (after any clipping)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.SGD.step
        self.lrs.append([float(g["lr"]) for g in self.param_groups])
        grads = [p.grad.double().norm() for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.grad_norms.append(float(torch.stack(grads).norm()))
        return super().step(closure)


created: list[tuple[nn.Module, RecordingSGD]] = []  # (model, optimizer) of every run in this process


def _create(model: nn.Module, opt: str = "adamw", lr: float | None = None, weight_decay: float = 0.0,
            **kwargs) -> RecordingSGD:
    groups = _REAL_CREATE(model, opt=opt, lr=lr, weight_decay=weight_decay, **kwargs).param_groups
    keep = ("params", "lr", "weight_decay", "lr_scale")
    sgd = RecordingSGD([{k: g[k] for k in keep if k in g} for g in groups], lr=lr)
    created.append((model, sgd))
    return sgd


def use_plain_sgd(monkeypatch=None) -> list[tuple[nn.Module, RecordingSGD]]:
    """Make the engine build :class:`RecordingSGD` (via ``monkeypatch`` if given); returns the list of created
    ``(model, optimizer)`` pairs (cleared)."""
    created.clear()
    if monkeypatch is not None:
        monkeypatch.setattr(timm.optim, "create_optimizer_v2", _create)
    else:
        timm.optim.create_optimizer_v2 = _create
    return created


if __name__ == "__main__":
    use_plain_sgd()
    from crossformers import cli

    sys.exit(cli.main(sys.argv[1:]))
