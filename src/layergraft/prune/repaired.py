"""Block selection by what the repaired model loses: the calibration loss after ghost repair.

Why: the residual of :mod:`layergraft.prune.residual` says how *linear* a block is, not what
its leftover error costs at the output, and on SmolLM2 and Gemma it picks the blocks that are
worst to remove (docs/prune/README.md). The question a selection for ghost repair must answer is
"how good is the model with this block removed and repaired?". Here each candidate is asked
exactly that, on text: the ghost fit ``W = I + M*`` of the block (closed form, from the same
float64 Gram statistics as the residual metric: one streaming pass for every candidate block,
:func:`~layergraft.prune.calibrate.collect_gap_stats`, same ``damp`` as the prune's fit), then
the next-token cross-entropy of the repaired model on a held-in slice of the calibration rows.
The lowest loss is the pick (``--metric loss``); ``loss-greedy`` removes one layer at a time,
each scored on the model pruned so far, as ``residual-greedy`` does
(:mod:`layergraft.prune.greedy`).

How a candidate is run: the residual stream of the held-in rows entering every layer is kept
(one run of the model, :class:`~layergraft.models.runner.LayerRunner`, which records what each
layer receives besides its hidden states: masks, positions, rotary embeddings, the windows of
sliding layers). For block ``[s, e)`` the ghost (the very module a pruned model carries,
:func:`~layergraft.prune.ghost.operator_module`) maps the stream entering ``s``, the layers
``e .. L−1`` run from there with the calls recorded for their own positions (a layer keeps its
attention type when the layers before it are cut), then the model's own head (final norm,
lm_head, soft-capping). Cost per candidate: the layers after the block, on the held-in rows only.

The held-in slice: the first ``rows`` calibration rows (:data:`HELDIN_ROWS` by default). The
first rows, because they need no seed and are the same for every candidate; few, because each
candidate runs the rest of the model on them (cost grows with rows × candidates, while the fit
itself already uses every calibration token); held *in*, because the calibration text is all the
text the command has. The loss is in-sample for the fit (the ghost saw these tokens), optimistic
by roughly the same amount for every candidate; docs/prune/README.md compares the picks with
held-out perplexity.

``loss-greedy`` scores removing a kept layer ``o`` as the sequential fit will repair it: the
widened gap's ghost is fitted on the pruned model's stream, targets from the dense one (the
statistics of :func:`~layergraft.prune.greedy.candidate_stats`), and applied to the held-in
stream before any ghost at ``o``'s position; a ghost that sat after ``o`` on a gap the removal
merges with is replaced by the new one. Ghosts of later gaps stay as fitted before the step (a
sequential refit would refit them too): the one approximation of the score.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

from layergraft.errors import InputError
from layergraft.models.ghost import ATTR
from layergraft.models.runner import LayerRunner, Reads
from layergraft.prune.calibrate import collect_gap_stats
from layergraft.prune.cut import merge_adjacent
from layergraft.prune.ghost import operator_module
from layergraft.prune.greedy import candidate_stats, candidates, pruned_copy
from layergraft.prune.importance import Scores
from layergraft.prune.recover import DEFAULT_DAMP, Damp, Operator, as_damp, fit_ghost
from layergraft.prune.residual import (
    boundary_bytes,
    check_memory,
    check_samples,
    chunks,
    per_device,
)
from layergraft.ranges import Range, format_range, format_ranges
from layergraft.text import Batch

log = logging.getLogger(__name__)

#: the selections by the repaired model's calibration loss
LOSS_METRICS: tuple[str, ...] = ("loss", "loss-greedy")
#: calibration rows the repaired model is scored on (module doc: why the first, why few)
HELDIN_ROWS = 8
DEFINITION = (
    "mean next-token cross-entropy (nats) of the model with block [s, s+n) removed and repaired by its ghost fit "
    "W = I + M* (same damping, statistics of every calibration token), on the first {rows} calibration rows"
)
HOLDOUT = "; the ghost fitted on the calibration rows after those instead (holdout)"


def heldin(batches: Sequence[Batch], rows: int = HELDIN_ROWS) -> list[Batch]:
    """The first ``rows`` rows of the calibration batches, batched as they were."""
    return split_rows(batches, rows)[0]


def split_rows(
    batches: Sequence[Batch], rows: int = HELDIN_ROWS
) -> tuple[list[Batch], list[Batch]]:
    """The first ``rows`` rows of the calibration batches, and the rows after them."""
    if rows < 1:
        raise InputError(f"the held-in slice needs at least 1 calibration row (got {rows})")
    held, rest, left = [], [], rows
    for b in batches:
        k = max(0, min(left, int(b.input_ids.shape[0])))
        if k:
            held.append(Batch(b.input_ids[:k], b.attention_mask[:k]))
        if k < b.input_ids.shape[0]:
            rest.append(Batch(b.input_ids[k:], b.attention_mask[k:]))
        left -= k
    return held, rest


def _fit_rows(
    batches: Sequence[Batch], rows: int, holdout: bool
) -> tuple[list[Batch], list[Batch]]:
    """The rows scored, and the rows the candidates' ghosts are fitted on: every row, or with
    ``holdout`` the rows after the scored ones (the loss is then measured on text the fit did
    not see)."""
    held, rest = split_rows(batches, rows)
    if holdout and not rest:
        raise InputError(
            f"the loss metric's holdout fits on the calibration rows after the first {rows}, and there are none; "
            "give more --calib-tokens"
        )
    return held, (rest if holdout else list(batches))


def _targets(batch: Batch, device: Any) -> Reads:
    """Every position whose next token is real text, reading that token."""
    mask = batch.attention_mask.bool()
    keep = mask[:, :-1] & mask[:, 1:]
    rows, cols = keep.nonzero(as_tuple=True)
    nxt = batch.input_ids[rows, cols + 1]
    slots = list(zip(rows.tolist(), cols.tolist(), strict=True))
    return Reads.of(slots, [[int(t)] for t in nxt.tolist()], device=device)


@contextlib.contextmanager
def _ghost_off(model: Any, position: int | None) -> Iterator[None]:
    """The ghost at ``position`` of a pruned model as the identity for a while (its gap is
    being widened; the candidate's own ghost replaces it)."""
    ghosts = getattr(model, ATTR, None)
    key = None if position is None else str(position)
    g = ghosts[key] if ghosts is not None and key in ghosts else None  # a ModuleDict: no .get
    if g is None:
        yield
        return
    saved = g.delta.data.clone(), None if g.bias is None else g.bias.data.clone()
    g.delta.data.zero_()
    if g.bias is not None:
        g.bias.data.zero_()
    try:
        yield
    finally:
        g.delta.data.copy_(saved[0])
        if g.bias is not None:
            g.bias.data.copy_(saved[1])


class HeldIn:
    """The held-in rows of one model, ready to score repaired candidates: per batch the
    recorded layer calls, the targets, and the residual stream entering every layer (before
    any ghost there; the last entry is the last layer's output)."""

    def __init__(self, model: Any, adapter: Any, batches: Sequence[Batch]) -> None:
        import torch

        self.model, self.adapter = model, adapter
        self.layers = adapter.layers(model)
        dev = next(model.parameters()).device
        self.runners, self.reads, self.streams = [], [], []
        for b in batches:
            r = LayerRunner(model, adapter, b.input_ids.to(dev), b.attention_mask.to(dev))
            h, seen = r.hidden0, []
            with torch.no_grad():
                for i, layer in enumerate(self.layers):
                    seen.append(h)
                    h = r.layer(layer, i, h)
            seen.append(h)
            self.runners.append(r)
            self.reads.append(_targets(b, dev))
            self.streams.append(seen)
        self.n_tokens = sum(int(r.ids.numel()) for r in self.reads)

    def loss(
        self, op: Operator | None, start: int, resume: int, *, replaces: int | None = None
    ) -> float:
        """Mean next-token cross-entropy when the stream entering position ``start`` goes
        through ``op`` (None: unchanged) and the layers from position ``resume`` on run from
        there; ``replaces``: the position of a ghost the candidate's own replaces."""
        ghost = None if op is None else operator_module(op, self.adapter.hidden_size)
        total = 0.0
        with _ghost_off(self.model, replaces):
            for r, reads, seen in zip(self.runners, self.reads, self.streams, strict=True):
                h = seen[start]
                if ghost is not None:
                    h = ghost.to(h.device)(h)
                h = r.run(self.layers, resume, len(self.layers), h)
                total -= float(r.log_probs(h, reads).sum())
        return total / max(self.n_tokens, 1)


def loss_scores(
    model: Any,
    adapter: Any,
    batches: Sequence[Batch],
    *,
    block: int = 1,
    damp: Damp | float = DEFAULT_DAMP,
    max_boundaries: int | None = None,
    rows: int = HELDIN_ROWS,
    holdout: bool = False,
) -> Scores:
    """Every contiguous block of ``block`` layers scored by the held-in loss of the model with
    it removed and ghost-repaired (lowest = the pick); statistics of ``max_boundaries``
    blocks per pass over ``batches`` (``holdout``: over the rows after the scored ones)."""
    n_layers, d = len(adapter.layers(model)), adapter.hidden_size
    if not 1 <= block < n_layers:
        raise InputError(
            f"--block {block} must be between 1 and {n_layers - 1} for this {n_layers}-layer model"
        )
    scored, fit_on = _fit_rows(batches, rows, holdout)
    n = check_samples(fit_on, d, "all", "loss")
    gaps = [(s, s + block) for s in range(n_layers - block + 1)]
    check_memory(per_device(model, adapter, [s for s, _ in gaps]), d, max_boundaries=max_boundaries)  # fmt: skip
    held = HeldIn(model, adapter, scored)
    blocks, info = [], []
    for part in chunks(gaps, max_boundaries):
        for st in collect_gap_stats(model, adapter, fit_on, part):
            op = fit_ghost(st, damp)
            loss = held.loss(op, st.start, st.end)
            blocks.append(((st.start, st.end), loss))
            info.append({"ppl": math.exp(loss), "residual": float(op.residual or 0.0)})
    summary = {
        **as_damp(damp).as_json(),
        "rows": rows,
        "holdout": holdout,
        "heldin_tokens": held.n_tokens,
        "dense_loss": held.loss(None, 0, 0),
        "passes": -(-len(gaps) // (max_boundaries or len(gaps))),
        "stats_bytes": min(len(gaps), max_boundaries or len(gaps)) * boundary_bytes(d),
        "definition": DEFINITION.format(rows=rows) + (HOLDOUT if holdout else ""),
    }
    return Scores("loss", block, "all", blocks, None, n, block_info=info, info=summary)


def loss_step(
    dense: Any,
    adapter: Any,
    batches: Sequence[Batch],
    chosen: Sequence[int],
    *,
    damp: Damp | float = DEFAULT_DAMP,
    max_boundaries: int | None = None,
    rows: int = HELDIN_ROWS,
    holdout: bool = False,
) -> list[dict[str, Any]]:
    """Every kept layer's held-in loss after removal and repair, given the layers ``chosen``
    so far (original indices): the model pruned of them (sequential ghost fits), one pass per
    ``max_boundaries`` candidates for the fits, then each candidate run on the held-in rows."""
    gaps = merge_adjacent([(i, i + 1) for i in chosen])
    rows_scored, fit_on = _fit_rows(batches, rows, holdout)
    work = pruned_copy(dense, adapter, gaps, fit_on, damp)
    held = HeldIn(work, adapter, rows_scored)
    scored = []
    for part in chunks(candidates(len(adapter.layers(dense)), gaps), max_boundaries):
        stats = candidate_stats(dense, work, adapter, fit_on, part)
        for (o, p, gap), st in zip(part, stats, strict=True):
            op = fit_ghost(st, damp)
            merged = p + 1 if gap[1] > o + 1 else None  # a gap started right after o
            loss = held.loss(op, p, p + 1, replaces=merged)
            scored.append({"layer": o, "gap": format_range(gap), "score": loss,
                           "ppl": math.exp(loss), "residual": float(op.residual or 0.0)})  # fmt: skip
    return scored


def greedy_loss(
    dense: Any,
    adapter: Any,
    batches: Sequence[Batch],
    n_remove: int,
    *,
    damp: Damp | float = DEFAULT_DAMP,
    max_boundaries: int | None = None,
    rows: int = HELDIN_ROWS,
    holdout: bool = False,
) -> tuple[list[Range], list[dict[str, Any]]]:
    """Choose ``n_remove`` layers one at a time, each the kept layer whose removal and repair
    leaves the lowest held-in loss on the model pruned so far (ties: the lower layer). Returns
    the merged gaps and a record of every step (each candidate's loss)."""
    n_layers, d = len(adapter.layers(dense)), adapter.hidden_size
    check_samples(_fit_rows(batches, rows, holdout)[1], d, "all", "loss-greedy")
    check_memory(per_device(dense, adapter, range(n_layers)), d, max_boundaries=max_boundaries, fix_block=False)  # fmt: skip
    chosen: list[int] = []
    steps: list[dict[str, Any]] = []
    for k in range(n_remove):
        before = format_ranges(merge_adjacent([(i, i + 1) for i in chosen]))
        scored = loss_step(dense, adapter, batches, chosen, damp=damp, max_boundaries=max_boundaries, rows=rows, holdout=holdout)  # fmt: skip
        best = min(scored, key=lambda c: (c["score"], c["layer"]))
        chosen.append(best["layer"])
        log.info("loss-greedy step %d: layer %d (gap %s), loss %.4f", k + 1, best["layer"], best["gap"], best["score"])  # fmt: skip
        steps.append({"step": k + 1, **best, "removed_so_far": before or None, "candidates": scored})  # fmt: skip
    return merge_adjacent([(i, i + 1) for i in chosen]), steps


def loss_selection(
    model: Any,
    adapter: Any,
    batches: Sequence[Batch],
    n: int,
    metric: str,
    *,
    damp: Damp | float = DEFAULT_DAMP,
    max_boundaries: int | None = None,
    rows: int = HELDIN_ROWS,
    holdout: bool = False,
) -> tuple[list[Range], dict[str, Any]]:
    """``--auto n --metric loss|loss-greedy``: the gaps, and how they were chosen."""
    how: dict[str, Any] = {"auto": int(n), "metric": metric, **as_damp(damp).as_json(), "rows": rows, "holdout": holdout}  # fmt: skip
    kw = {"damp": damp, "max_boundaries": max_boundaries, "rows": rows, "holdout": holdout}
    if metric == "loss-greedy":
        gaps, how["steps"] = greedy_loss(model, adapter, batches, int(n), **kw)
        how["loss"] = how["steps"][-1]["score"]
        return gaps, how
    if metric != "loss":
        raise InputError(f"unknown loss metric {metric!r}; choose one of {', '.join(LOSS_METRICS)}")
    sc = loss_scores(model, adapter, batches, block=int(n), **kw)
    out = sc.as_json()
    how |= {"scores": out["blocks"], "loss": dict(sc.blocks)[sc.best]}
    how |= {k: out[k] for k in ("heldin_tokens", "dense_loss", "definition")}
    return [sc.best], how
