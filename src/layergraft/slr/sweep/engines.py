"""Scoring hybrids: the work units of a sweep and the two engines that score them.

A sweep is cut into **units** (:class:`Unit`): the two references, all intervals ``[s, e)`` of
one start ``s``, and one soup alpha. A unit's result does not depend on which process scores
it or when, so a sweep can be resumed after a kill or spread over workers and give the same
numbers. Every unit goes through the proxy's batches one at a time, so memory holds one
batch, however many prompts there are.

Two engines give the same numbers for a start unit:

* :func:`score_start` (prefix reuse, the default): per batch the post model's prefix
  ``0..s-1`` is run once, then the base chain ``s..e-1`` grows one layer at a time, so each
  interval costs only its post suffix ``e..L-1`` plus the head.
* :func:`score_start_swap`: each hybrid made with the in-memory swap and run from the
  embeddings — the general path (any proxy, any offload) and the reference the fast engine is
  tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from layergraft.errors import InputError, RangeError
from layergraft.models.batching import forward_logits
from layergraft.ranges import Range
from layergraft.models.runner import LayerRunner
from layergraft.slr.hybrid.swap import swapped_layers


def enumerate_intervals(
    num_layers: int,
    *,
    min_len: int = 1,
    max_len: int | None = None,
    starts: Iterable[int] | None = None,
) -> list[Range]:
    """All ``[s, e)`` with ``min_len <= e - s <= max_len``, ordered by start then end."""
    max_len = num_layers if max_len is None else max_len
    if min_len < 1 or max_len < min_len:
        raise RangeError(
            f"interval lengths {min_len}..{max_len} are empty; need 1 <= --min-len <= --max-len"
        )
    allowed = set(range(num_layers)) if starts is None else set(starts)
    bad = [s for s in allowed if not 0 <= s < num_layers]
    if bad:
        raise RangeError(f"--starts {bad[0]} is out of bounds: layers are 0..{num_layers - 1}")
    return [
        (s, e)
        for s in sorted(allowed)
        for e in range(s + min_len, min(num_layers, s + max_len) + 1)
    ]


@dataclass(frozen=True)
class Unit:
    """One piece of sweep work: ``reference`` (``name`` post/base), ``start`` (all intervals
    ``[start, e)`` for ``e`` in ``ends``, restoring ``parts`` of their layers: ``all`` or one
    of ``attn``, ``mlp``, ``norms``) or ``soup`` (one ``alpha``)."""

    kind: str
    name: str = ""
    start: int = -1
    ends: tuple[int, ...] = field(default_factory=tuple)
    alpha: float = 0.0
    parts: str = "all"

    @property
    def keys(self) -> list[str]:
        """The journal keys of the rows this unit produces."""
        if self.kind == "reference":
            return [f"reference:{self.name}"]
        if self.kind == "soup":
            return [f"soup:{self.alpha:g}"]
        tail = "" if self.parts == "all" else f":{self.parts}"
        return [f"interval:{self.start}:{e}{tail}" for e in self.ends]

    def cost(self, num_layers: int, prefix_reuse: bool = True) -> int:
        """Decoder-layer forwards per batch (for the plan and for balancing workers)."""
        if self.kind != "start":
            return num_layers
        if not prefix_reuse:
            return num_layers * len(self.ends)
        chain = max(self.ends) - self.start
        return self.start + chain + sum(num_layers - e for e in self.ends)


def plan_units(
    num_layers: int,
    intervals: Sequence[Range],
    soups: Sequence[float],
    parts: Sequence[str] = ("all",),
) -> list[Unit]:
    """References first, then one unit per (part, start), starts ascending, then the soups."""
    ends: dict[int, list[int]] = {}
    for s, e in intervals:
        ends.setdefault(s, []).append(e)
    starts = [
        Unit("start", start=s, ends=tuple(sorted(es)), parts=p)
        for p in parts
        for s, es in sorted(ends.items())
    ]
    refs = [Unit("reference", name="post"), Unit("reference", name="base")]
    return refs + starts + [Unit("soup", alpha=a) for a in soups]


SWEEP_PARTS = ("attn", "mlp", "norms", "all")


def parse_sweep_parts(text: str | Sequence[str]) -> tuple[str, ...]:
    """``--parts attn,mlp,all`` -> the variants a sweep scores, each once: one part of the
    layers or ``all`` (whole layers), in the order attn, mlp, norms, all."""
    words = [w.strip() for w in (text.split(",") if isinstance(text, str) else text) if w.strip()]
    bad = [w for w in words if w not in SWEEP_PARTS]
    if bad or not words:
        raise InputError(
            f"--parts {bad[0] if bad else text!r} is not a part; give attn, mlp, norms or all "
            "(several as attn,mlp,all: one sweep each)"
        )
    return tuple(p for p in SWEEP_PARTS if p in words)


def score_model(model: Any, proxy: Any, batches: Sequence[Any]) -> dict[str, Any]:
    """The proxy's row for a whole model (a reference, a soup, a swapped hybrid)."""
    if hasattr(proxy, "score_model"):  # a user's own function of the model
        return proxy.score_model(model)
    parts = [
        proxy.score(
            b, forward_logits(model, b["input_ids"], b["attention_mask"], last_only=proxy.last_only)
        )
        for b in batches
    ]
    return proxy.combine(parts)


def score_start(
    post_model: Any,
    base_model: Any,
    adapter: Any,
    proxy: Any,
    batches: Sequence[Any],
    start: int,
    ends: Sequence[int],
    parts: str = "all",
) -> dict[int, dict[str, Any]]:
    """Rows of the intervals ``[start, e)``, ``e`` in ``ends``, by prefix reuse (module doc).

    With ``parts`` other than ``all`` the chain's layer ``i`` is the post layer carrying the
    base's tensors of that part (swapped in for its one call, no copy)."""
    post_layers, base_layers = adapter.layers(post_model), adapter.layers(base_model)
    wanted = set(ends)
    got: dict[int, list[Any]] = {e: [] for e in ends}
    for b in batches:
        run = LayerRunner(post_model, adapter, b["input_ids"], b["attention_mask"])
        h = run.run(post_layers, 0, start, run.hidden0)  # the post prefix, once per batch
        for e in range(start + 1, max(ends) + 1):
            if parts == "all":  # the base chain grows by one layer
                h = run.layer(base_layers[e - 1], e - 1, h)
            else:
                with swapped_layers(post_model, base_model, [(e - 1, e)], adapter, parts):
                    h = run.layer(post_layers[e - 1], e - 1, h)
            if e in wanted:
                final = run.run_from(e, h, post_layers)
                got[e].append(proxy.score(b, run.logits(final, last_only=proxy.last_only)))
    return {e: proxy.combine(got[e]) for e in ends}


def score_start_swap(
    post_model: Any,
    base_model: Any,
    adapter: Any,
    proxy: Any,
    batches: Sequence[Any],
    start: int,
    ends: Sequence[int],
    parts: str = "all",
) -> dict[int, dict[str, Any]]:
    """Rows of the intervals ``[start, e)`` by the in-memory swap, each from the embeddings."""
    out = {}
    for e in ends:
        with swapped_layers(post_model, base_model, [(start, e)], adapter, parts):
            out[e] = score_model(post_model, proxy, batches)
    return out
