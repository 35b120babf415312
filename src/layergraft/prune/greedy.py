"""Scattered selection by residual: one layer at a time, scored on the model already pruned.

Why greedy, and why on the pruned model: the best set of N scattered layers is a search over
``C(L, N)`` sets; greedy takes one layer per step. Each step scores every kept layer by the
residual its removal would leave *given the layers removed so far*, exactly as the ``--sequential``
fit will see it: the model pruned so far (each gap repaired by a ghost fitted on the partly
pruned model, targets from the dense one, :func:`~layergraft.prune.model.prune_model`) supplies
the stream entering the gap, the dense model the stream the repair must reach.

Removing kept layer ``o`` makes (or widens) a gap ``[a, b)`` in the original numbering: ``a = o``
unless ``o`` directly follows a removed gap (then that gap's start), ``b = o + 1`` unless a
removed gap starts at ``o + 1`` (then that gap's end). The ghost fit of ``[a, b)`` starts from
the stream entering ``o``'s position *before* any ghost there (``("raw", p)`` of
:mod:`layergraft.prune.calibrate`: the output of the last kept layer before ``a``) and targets
the dense stream at boundary ``b``. Gaps before ``a`` are fitted as before, so the residual
scored is the residual of the operator a sequential fit of the new gap list installs.

Cost per step: one pass of both models over the calibration batches, plus one sequential refit
(one pass per gap) to rebuild the pruned model. Memory: the dense model, one pruned copy, and
two d×d float64 matrices per candidate (:mod:`layergraft.prune.residual`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from layergraft.prune.calibrate import GapStats, run_points
from layergraft.prune.cut import kept_layers, merge_adjacent
from layergraft.prune.model import prune_model
from layergraft.prune.recover import DEFAULT_DAMP, Damp
from layergraft.prune.residual import (
    check_memory,
    check_norm,
    check_samples,
    chunks,
    per_device,
    residual_of,
)
from layergraft.ranges import Range, format_range, format_ranges
from layergraft.text import Batch

log = logging.getLogger(__name__)

#: a candidate: original layer, its position in the pruned model, the gap its removal makes
Candidate = tuple[int, int, Range]


def candidates(num_layers: int, gaps: Sequence[Range]) -> list[Candidate]:
    """Every kept layer with its current position and the (merged) gap removing it makes."""
    starts = {s: e for s, e in gaps}
    ends = {e: s for s, e in gaps}
    out = []
    for p, o in enumerate(kept_layers(num_layers, gaps)):
        out.append((o, p, (ends.get(o, o), starts.get(o + 1, o + 1))))
    return out


def pruned_copy(
    dense: Any, adapter: Any, gaps: Sequence[Range], batches: Sequence[Batch], damp: Damp | float
) -> Any:
    """A copy of ``dense`` with ``gaps`` removed and ghost-repaired by a sequential fit
    (``dense`` itself when there are no gaps)."""
    if not gaps:
        return dense
    work = copy.deepcopy(dense)
    prune_model(work, adapter, gaps, "ghost", batches, damp=damp, sequential=True, target=dense)
    return work


def candidate_stats(
    dense: Any,
    work: Any,
    adapter: Any,
    batches: Sequence[Batch],
    cands: Sequence[Candidate],
    weighted: bool = False,
) -> list[GapStats]:
    """One pass over ``batches``: the fit statistics of every candidate's gap, ``X`` from the
    pruned ``work`` model (before any ghost at the candidate's position), the target from
    ``dense``."""
    stats = [GapStats(a, b, weighted=weighted) for _, _, (a, b) in cands]
    xs = {("raw", p) for _, p, _ in cands}
    ys = {("in", b) for _, _, (_, b) in cands}
    for batch in batches:
        if work is dense:
            gx = gy = run_points(dense, adapter, batch, xs | ys)
        else:
            gy = run_points(dense, adapter, batch, ys)
            gx = run_points(work, adapter, batch, xs)
        for st, (_, p, (_, b)) in zip(stats, cands, strict=True):
            st.update(gx[("raw", p)], gy[("in", b)], batch.attention_mask)
    return stats


def score_step(
    dense: Any,
    adapter: Any,
    batches: Sequence[Batch],
    chosen: Sequence[int],
    *,
    damp: Damp | float = DEFAULT_DAMP,
    max_boundaries: int | None = None,
    norm: str = "delta",
) -> list[dict[str, Any]]:
    """Every kept layer's residual (``score``: normalised by ``norm``) given the layers
    ``chosen`` so far (original indices): the model is pruned of them (sequential ghost fits),
    then one pass per ``max_boundaries`` candidates."""
    gaps = merge_adjacent([(i, i + 1) for i in chosen])
    work = pruned_copy(dense, adapter, gaps, batches, damp)
    cands = candidates(len(adapter.layers(dense)), gaps)
    scored = []
    for part in chunks(cands, max_boundaries):
        stats = candidate_stats(dense, work, adapter, batches, part, weighted=norm == "token")
        for (o, _, gap), st in zip(part, stats, strict=True):
            scored.append({"layer": o, "gap": format_range(gap), **residual_of(st, damp, norm)})
    return scored


def greedy_residual(
    dense: Any,
    adapter: Any,
    batches: Sequence[Batch],
    n_remove: int,
    *,
    damp: Damp | float = DEFAULT_DAMP,
    max_boundaries: int | None = None,
    norm: str = "delta",
) -> tuple[list[Range], list[dict[str, Any]]]:
    """Choose ``n_remove`` layers one at a time, each the kept layer whose removal leaves the
    smallest ghost residual (normalised by ``norm``) on the model pruned so far (ties: the
    lower layer). Returns the merged gaps and a record of every step (each candidate's
    residual)."""
    n_layers, d = len(adapter.layers(dense)), adapter.hidden_size
    check_norm(norm)
    check_samples(batches, d, "all")
    check_memory(
        per_device(dense, adapter, range(n_layers)), d, max_boundaries=max_boundaries,
        norm=norm, fix_block=False,
    )  # fmt: skip
    chosen: list[int] = []
    steps: list[dict[str, Any]] = []
    for k in range(n_remove):
        before = format_ranges(merge_adjacent([(i, i + 1) for i in chosen]))
        scored = score_step(
            dense, adapter, batches, chosen, damp=damp, max_boundaries=max_boundaries, norm=norm
        )
        best = min(scored, key=lambda c: (c["score"], c["layer"]))
        chosen.append(best["layer"])
        log.info("residual-greedy step %d: layer %d (gap %s), score %.4f", k + 1, best["layer"], best["gap"], best["score"])  # fmt: skip
        steps.append({"step": k + 1, **best, "removed_so_far": before or None, "candidates": scored})  # fmt: skip
    return merge_adjacent([(i, i + 1) for i in chosen]), steps
