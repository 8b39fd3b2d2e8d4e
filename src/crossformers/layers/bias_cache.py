"""The inference-time cache of attention biases: :class:`InferenceCache`, the one implementation every family uses.

CrossFormer's dynamic position bias (CrossFormer Sec. 3.2.2) and FcaFormer's relative-position / cross-token bias
(FcaFormer Sec. 3.1) depend only on the map size and on their parameters, so in inference they are computed once per
size and reused. The cache is a parameter-free submodule of the block that owns the bias, so the module tree itself
invalidates it: ``train()`` / ``eval()`` and ``load_state_dict`` (also with ``assign=True``) reach it like any
submodule and it drops its entries. Each entry is also keyed on the storage address and in-place version counter of
the tensors it was computed from, so moving them, loading new ones or updating them in place (an optimizer or EMA
step) makes it miss. Nothing is cached in training mode, with gradients on, while compiling or while FX-tracing
(the traced graph recomputes the bias), nor for inference tensors (created under ``torch.inference_mode()``, they
have no version counter). The exception is :func:`frozen_caches`, used by ``compile_for_inference`` ahead of time:
inside it the entries of the last inference call are buffers that a traced graph takes as constants.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

__all__ = ["InferenceCache", "tensor_versions", "clear_caches", "set_bias_cache", "fill_caches", "frozen_caches",
           "bias_caches"]


def tensor_versions(tensors: Iterable[torch.Tensor]) -> tuple[tuple[int, int], ...] | None:
    """(storage address, in-place version counter) of each tensor, or None when any tensor is an inference tensor
    (no version counter, so an in-place update could not be noticed)."""
    tensors = list(tensors)
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t.data_ptr(), t._version) for t in tensors)


class InferenceCache(nn.Module):
    """Values computed from a module's parameters, kept for inference (see the module docs).

    Attributes:
        enabled: cache at all (``set_bias_cache`` switches it; the exporter switches it off while tracing).

    ``len(cache)`` is the number of entries.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self._store: dict[Hashable, Any] = {}
        self._frozen: dict[Hashable, tuple[list[str | None], list[Any], Any]] | None = None
        # what freeze() exposes for the current store, built once per store content (freezing is per call on the
        # dynamo path of compile_for_inference): (index by key, buffers by name), None when the store has changed
        self._freezable: tuple[dict[Hashable, tuple[list[str | None], list[Any], Any]], dict[str, torch.Tensor]] \
            | None = None
        self._frozen_buffers: dict[str, torch.Tensor] = {}  # the buffers freeze() registered, for thaw()

    def usable(self) -> bool:
        """Whether a value computed now may be kept: inference (eval mode, no gradients), not compiling/tracing."""
        return (self.enabled and not self.training and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling() and not is_fx_symbolic_tracing())

    def get(self, key: Hashable, tensors: Iterable[torch.Tensor], compute: Callable[[], Any]) -> Any:
        """The cached value for ``key`` and the current versions of ``tensors``, computing it with ``compute()``
        on a miss; outside inference (see :meth:`usable`) ``compute()`` every time. Inside :func:`frozen_caches`
        a stored value is returned as this module's buffers whatever the versions (also while tracing)."""
        if self._frozen is not None and key in self._frozen:
            names, leaves, spec = self._frozen[key]
            values = [leaf if n is None else getattr(self, n) for n, leaf in zip(names, leaves, strict=True)]
            return tree_unflatten(values, spec)
        if not self.usable():
            return compute()
        versions = tensor_versions(tensors)
        if versions is None:
            return compute()
        full = (key, versions)
        hit = self._store.get(full)
        if hit is None:  # kept detached (no autograd here anyway): the same tensor objects every later call
            hit = tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, compute())
            self._store[full] = hit
            self._freezable = None
        return hit

    def clear(self) -> None:
        """Drop every entry."""
        self._store.clear()
        self._freezable = None

    def discard(self, stale: Callable[[Hashable], bool]) -> None:
        """Drop the entries whose key ``stale(key)`` is true (e.g. values kept for another input size)."""
        for full in [f for f in self._store if stale(f[0])]:
            del self._store[full]
            self._freezable = None

    def freeze(self) -> None:
        """Expose every entry as non-persistent buffers of this module and serve :meth:`get` from them by key alone
        (see :func:`frozen_caches`). The buffers are laid out once per content of the cache, so freezing again
        with the same entries costs a dict update."""
        if self._freezable is None:
            index: dict[Hashable, tuple[list[str | None], list[Any], Any]] = {}
            buffers: dict[str, torch.Tensor] = {}
            for i, ((key, _versions), value) in enumerate(self._store.items()):
                leaves, spec = tree_flatten(value)
                names: list[str | None] = []
                for j, leaf in enumerate(leaves):
                    # a oneDNN-packed (opaque) weight is no buffer a tracer could take; it is served as it is
                    strided = isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided
                    names.append(f"frozen_{i}_{j}" if strided else None)
                    if names[-1] is not None:
                        buffers[names[-1]] = leaf
                index[key] = (names, leaves, spec)
            self._freezable = (index, buffers)
        index, buffers = self._freezable
        self._buffers.update(buffers)
        self._non_persistent_buffers_set.update(buffers)
        # plain attribute writes: nn.Module.__setattr__'s checks would be most of the cost of a call
        vars(self).update(_frozen=index, _frozen_buffers=buffers)

    def thaw(self) -> None:
        """Undo :meth:`freeze`: drop the buffers, :meth:`get` checks versions again."""
        for n in self._frozen_buffers:
            self._buffers.pop(n, None)
            self._non_persistent_buffers_set.discard(n)
        vars(self).update(_frozen=None, _frozen_buffers={})

    def __len__(self) -> int:
        return len(self._store)

    def train(self, mode: bool = True) -> InferenceCache:
        self.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.clear()  # new weights for the owner: every entry is stale
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the live module keeps its entries
        state["_freezable"] = None
        state["_store"] = {}  # cached tensors are never pickled or deep-copied (their keys name the old storage)
        return state

    def extra_repr(self) -> str:
        return f"entries={len(self._store)}" + ("" if self.enabled else ", disabled")


def bias_caches(model: nn.Module) -> list[InferenceCache]:
    """Every :class:`InferenceCache` inside ``model`` (a walk over its modules: keep the list where it is needed
    per call, e.g. for :func:`frozen_caches`)."""
    return [m for m in model.modules() if isinstance(m, InferenceCache)]


def clear_caches(model: nn.Module) -> None:
    """Drop every cached bias inside ``model``."""
    for c in bias_caches(model):
        c.clear()


def set_bias_cache(model: nn.Module, enable: bool = True) -> None:
    """Switch the inference-time bias caches of ``model`` on (default) or off (the bias is then recomputed in every
    forward: the plain path, e.g. to check that both agree)."""
    for c in bias_caches(model):
        c.enabled = enable
        c.clear()


def fill_caches(model: nn.Module, example: torch.Tensor) -> None:
    """One eager inference call of ``model`` on ``example`` (e.g. (B, C, H, W) images), outside inference mode and
    without gradients, so that every bias cache holds ordinary (not inference) tensors for that input's size: what
    :func:`frozen_caches` serves when the model is traced next. The output is discarded."""
    with torch.inference_mode(False), torch.no_grad():
        model(example)


@contextlib.contextmanager
def frozen_caches(model: nn.Module, caches: Sequence[InferenceCache] | None = None) -> Iterator[None]:
    """Within the block, every cached bias of ``model`` is a (non-persistent) buffer of its cache, returned whatever
    the parameters' versions and also while tracing: ``torch.export`` then records the biases computed by the last
    eager inference call as constants of the graph instead of the ops computing them from the parameters, and a
    freezing compiler (AOTInductor) keeps them as they are. Only for compiling weights that will not change: call
    :func:`fill_caches` on an input of the traced size first (an entry missing for a size is computed as usual).

    ``caches``: :func:`bias_caches` of ``model``, when the caller keeps the list (saves the walk over the modules,
    e.g. 0.2-0.3 ms for a FcaFormer or CrossFormer on a 2-core CPU; freezing and thawing take a few microseconds
    per cache once the cache's entries have been laid out as buffers)."""
    caches = bias_caches(model) if caches is None else caches
    for c in caches:
        c.freeze()
    try:
        yield
    finally:
        for c in caches:
            c.thaw()
