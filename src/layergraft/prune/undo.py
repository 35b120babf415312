"""Pruning a loaded model for a moment: every method of a comparison on one copy of it.

Why: ``compare-recovery`` evaluates five recovery methods on the same dense model. A deep copy
per method costs a model's memory five times over (an 8B model: 32 GB each in float32); here
the dense model is pruned in place and put back exactly on exit — the layer list, the
per-layer config lists, every ``layer_idx``, the weights a fold changed (saved before the
fold), the ghost hooks and modules.

``scale`` is kept as a scalar ghost here instead of being folded into every later layer's
weights (which would mean saving most of the model): the two are the same map up to the
norms' ``eps`` (:mod:`layergraft.prune.fold`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from layergraft.arch.adapter import LAYER_IDX_ATTRS
from layergraft.prune import ghost as G
from layergraft.prune.calibrate import GapStats
from layergraft.prune.model import Pruned, prune_model
from layergraft.ranges import Range
from layergraft.text import Batch


def _fold_targets(adapter: Any, model: Any, gaps: Sequence[Range], method: str) -> list[Any]:
    """The parameters a fold of ``method`` will change (replaceme: the MLP output projection
    of the layer before each gap, weight and bias)."""
    if method != "replaceme":
        return []
    out = []
    for s, _ in gaps:
        mod = adapter._get(model, adapter.mlp_out_proj(s - 1))
        out += [p for p in (mod.weight, getattr(mod, "bias", None)) if p is not None]
    return out


@contextlib.contextmanager
def pruned_in_place(
    model: Any,
    adapter: Any,
    gaps: Sequence[Range],
    method: str,
    batches: Sequence[Batch],
    *,
    damp: Any,
    bias: bool = False,
    sequential: bool = False,
    stats: Sequence[GapStats] | None = None,
) -> Iterator[Pruned]:
    """Within the block ``model`` is pruned and recovered (:func:`prune_model`); on exit,
    exception or not, it is the dense model again, bit for bit."""
    import torch

    layers = adapter.layers(model)
    original = list(layers)
    config = model.config.to_dict()
    idx = [
        (mod, attr, getattr(mod, attr))
        for layer in original
        for mod in layer.modules()
        for attr in LAYER_IDX_ATTRS
        if isinstance(getattr(mod, attr, None), int)
    ]
    saved = [(p, p.detach().clone()) for p in _fold_targets(adapter, model, gaps, method)]
    p: Pruned | None = None
    try:
        p = prune_model(
            model, adapter, gaps, method, batches, damp=damp, bias=bias,
            sequential=sequential, stats=stats, fold=method != "scale",
        )  # fmt: skip
        yield p
    finally:
        for h in p.hooks if p is not None else ():
            h.remove()
        if hasattr(model, G.ATTR):
            delattr(model, G.ATTR)
        for i in reversed(range(len(layers))):
            del layers[i]
        layers.extend(original)
        now = model.config.to_dict()
        for k, v in config.items():
            if now.get(k) != v:
                setattr(model.config, k, v)
        for mod, attr, value in idx:
            setattr(mod, attr, value)
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)
