"""Layer pruning of a loaded model, in memory: fit → cut → recover.

Why in memory: the operators are fitted on activations, so the model is loaded anyway, and
the pruned in-memory model is what the tests compare the saved directory against (the
directory itself is streamed from the input checkpoint: :mod:`layergraft.prune.write`).

Order of work per gap, ascending (so an earlier ghost's position never shifts): cut the
block, renumber ``layer_idx``, slice the config, then insert the operator on the stream
entering the first kept layer after the gap (``scale`` also goes in as a hook while fitting;
:func:`finalize_scale` folds it into weights at the end, ``replaceme`` is folded at once).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from layergraft.errors import ArchitectureError, InputError, RangeError
from layergraft.prune import ghost as G
from layergraft.prune import recover as R
from layergraft.prune.calibrate import GapStats, collect_gap_stats, run_points
from layergraft.prune.cut import cut_block, kept_layers
from layergraft.prune.fold import fold_replaceme, scale_writers
from layergraft.ranges import Range
from layergraft.text import Batch


@dataclass
class Pruned:
    """The result of :func:`prune_model`: the model is modified in place."""

    model: Any
    gaps: list[Range]
    keep: list[int]
    method: str
    ops: list[R.Operator]
    #: parameters changed by folding (replaceme, scale): written from memory, not copied
    changed: list[Any] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)

    def describe(self) -> list[dict[str, Any]]:
        return [op.describe() for op in self.ops]


def collect_stats(
    model: Any,
    adapter: Any,
    batches: Sequence[Batch],
    gaps: Sequence[Range],
    *,
    mlp: bool = False,
    rotation: Any = None,
    progress: bool = False,
) -> list[GapStats]:
    """:func:`~layergraft.prune.calibrate.collect_gap_stats` with a bar counting calibration
    tokens (the long part of pruning a large model)."""
    from tqdm.auto import tqdm

    total = sum(b.n_tokens for b in batches)
    with tqdm(total=total, desc="calibrate", unit="tok", disable=not progress, leave=False) as bar:
        return collect_gap_stats(
            model, adapter, batches, gaps, mlp=mlp, rotation=rotation, progress=bar.update
        )


def _fit_gap(method: str, st: GapStats, damp: R.Damp | float, bias: bool) -> R.Operator:
    return R.fit(method, st, damp=damp, bias=bias)


def _sequential_stats(
    dense: Any,
    work: Any,
    adapter: Any,
    batches: Sequence[Batch],
    gap: Range,
    offset: int,
    mlp: bool,
    rotation: Any = None,
) -> GapStats:
    """Statistics for ``gap`` with ``X_pre`` from the partly pruned ``work`` model (the
    layers before the gap already cut and recovered) and the target ``X_post`` from the dense
    model: each operator repairs the error the earlier ones left."""
    s, e = gap
    st = GapStats(s, e, rotation=rotation)
    for b in batches:
        post = run_points(dense, adapter, b, [("in", e)])[("in", e)]
        pts = [("in", s - offset)] + ([("mlp", s - offset - 1)] if mlp and s > 0 else [])
        got = run_points(work, adapter, b, pts)
        m = got.get(("mlp", s - offset - 1))
        st.update(got[("in", s - offset)], post, b.attention_mask, m)
    return st


def prune_model(
    model: Any,
    adapter: Any,
    gaps: Sequence[Range],
    method: str,
    batches: Sequence[Batch],
    *,
    damp: R.Damp | float = R.DEFAULT_DAMP,
    bias: bool = False,
    sequential: bool = False,
    fold: bool = True,
    stats: Sequence[GapStats] | None = None,
    progress: bool = False,
    target: Any = None,
) -> Pruned:
    """Prune ``gaps`` from ``model`` (in place) and recover each with ``method``.

    Dense mode (default) fits every operator on the dense model's activations in one
    streaming pass. ``sequential=True`` refits gap by gap on the partly pruned model (a deep
    copy of the dense one is kept as the target, so memory doubles). ``fold=False`` leaves
    ``scale`` as a scalar ghost instead of folding it (for comparison only). ``stats``:
    dense statistics already collected for these gaps (to fit several methods from one pass).
    ``target``: with ``sequential``, a dense model to take the targets from instead of a deep
    copy of ``model`` (the caller keeps one already: greedy selection by residual).
    """
    if getattr(model, G.ATTR, None) is not None:
        # its ghosts are keyed by the positions of the layers they precede; a second cut
        # would shift those layers under them (and a scale fold would re-attach them there)
        raise InputError(
            "this model carries ghost operators already (a pruned checkpoint); prune the dense "
            "model once with every gap (e.g. --remove 1:2,3:4) instead of pruning it again"
        )
    gaps = list(gaps)
    n = len(adapter.layers(model))
    keep = kept_layers(n, gaps)
    mlp = method == "replaceme"
    if method == "replaceme" and gaps[0][0] == 0:
        raise RangeError(
            f"replaceme folds into the MLP of the layer before the gap; gap {gaps[0][0]}:{gaps[0][1]} starts "
            "at layer 0 — keep layer 0 or use --recover ghost"
        )
    if (
        method == "replaceme"
        and getattr(adapter.layers(model)[0], "post_feedforward_layernorm", None) is not None
    ):
        raise ArchitectureError(
            f"{adapter.family} normalises the MLP output before adding it to the residual, so ReplaceMe "
            "cannot be folded into its down projection; use --recover ghost"
        )
    rotation = R.rotation_for([method], adapter.hidden_size)
    dense_ops: list[R.Operator] | None = None
    dense = None
    if method != "none" and not sequential:
        if stats is None:
            stats = collect_stats(
                model, adapter, batches, gaps, mlp=mlp, rotation=rotation, progress=progress
            )
        dense_ops = [_fit_gap(method, st, damp, bias) for st in stats]
    elif method != "none" and sequential:
        dense = target if target is not None else copy.deepcopy(model)
    result = Pruned(model, gaps, keep, method, [])
    offset = 0
    for g, (s, e) in enumerate(gaps):
        if method == "none":
            op = R.Operator("none", s, e, "none")
        elif dense_ops is not None:
            op = dense_ops[g]
        else:
            st = _sequential_stats(dense, model, adapter, batches, (s, e), offset, mlp, rotation)
            op = _fit_gap(method, st, damp, bias)
        cut_block(model, adapter, s - offset, e - offset)
        pos = s - offset  # the first kept layer after the gap now sits here
        if op.kind in ("full", "diag", "scale"):
            mod = G.operator_module(op, adapter.hidden_size)
            result.hooks.append(G.attach_ghost(model, adapter, mod, pos))
        elif op.kind == "replaceme":
            result.changed.extend(fold_replaceme(adapter, model, op, pos - 1))
        result.ops.append(op)
        offset += e - s
    del dense
    if fold:
        finalize_scale(result, adapter)
    return result


def finalize_scale(p: Pruned, adapter: Any) -> None:
    """Fold scalar ghosts into weights (where and why it is exact up to the norms' eps:
    :mod:`layergraft.prune.fold`), remove their hooks and the ghost container. A scale prune
    holds scalar ghosts only (one method for every gap, and :func:`prune_model` refuses a
    model that carries ghosts already), so nothing else is in the container."""
    ghosts = getattr(p.model, G.ATTR, None)
    if ghosts is None:
        return
    scalars = {int(k): float(g.scale) for k, g in ghosts.items() if g.kind == "scalar"}
    if not scalars:
        return
    factor = 1.0
    for i in range(len(adapter.layers(p.model))):
        if i in scalars:
            factor /= scalars[i]
        if factor != 1.0:
            p.changed.extend(scale_writers(adapter, p.model, i, factor))
    if len(scalars) != len(ghosts):
        raise AssertionError("a scale prune left ghosts that are not scalars")
    for h in p.hooks:
        h.remove()
    p.hooks = []
    delattr(p.model, G.ATTR)
