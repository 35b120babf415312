"""Scoring hybrids: the work units of a sweep and the two engines that score them.

A sweep is cut into **units** (:class:`Unit`): the two references, all intervals ``[s, e)`` of
one start ``s``, and one soup alpha. A unit's result does not depend on which process scores
it or when, so a sweep can be resumed after a kill or spread over workers and give the same
numbers. Every unit goes through the proxy's batches one at a time, so memory holds one
batch, however many prompts there are.

Two engines give the same numbers for a start unit:

* :func:`score_start` (prefix reuse, the default): per batch the post model's prefix
  ``0..s-1`` is run once, then the base chain ``s..e-1`` grows one layer at a time, so each
  interval costs only its post suffix ``e..L-1`` plus the head. A :class:`PostPrefix` kept
  across units carries the post prefix from one start to the next (a worker runs starts in
  ascending order), so a whole sweep runs the post prefix once per batch, not once per start.
* :func:`score_start_swap`: each hybrid made with the in-memory swap and run from the
  embeddings — the general path (any proxy, any offload) and the reference the fast engine is
  tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.errors import RangeError
from layergraft.models.runner import LayerRunner
from layergraft.ranges import Range
from layergraft.slr.hybrid.soup import souped
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


def interval_key(start: int, end: int, parts: str = "all", alpha: float = 1.0) -> str:
    """The journal key of an interval row: ``interval:s:e``, then ``:parts`` unless whole
    layers, then ``@alpha`` for an interval soup (alpha below 1)."""
    tail = "" if parts == "all" else f":{parts}"
    return f"interval:{start}:{end}{tail}" + ("" if alpha == 1.0 else f"@{alpha:g}")


@dataclass(frozen=True)
class Unit:
    """One piece of sweep work: ``reference`` (``name`` post/base), ``start`` (all intervals
    ``[start, e)`` for ``e`` in ``ends``, restoring ``parts`` of their layers: ``all`` or one
    of ``attn``, ``mlp``, ``norms``; ``alpha`` below 1 blends them, an interval soup) or
    ``soup`` (the whole model blended at ``alpha``); ``validate`` generates from the hybrid
    named ``name`` (:mod:`layergraft.slr.sweep.validate`)."""

    kind: str
    name: str = ""
    start: int = -1
    ends: tuple[int, ...] = field(default_factory=tuple)
    alpha: float = 1.0
    parts: str = "all"
    stage: int = 0  # --search halving: 1 scores a quarter of the prompts, 2 the rest; 0 all

    @property
    def keys(self) -> list[str]:
        """The journal keys of the rows this unit produces."""
        stage = f"s{self.stage}:" if self.stage else ""
        if self.kind == "reference":
            return [f"{stage}reference:{self.name}"]
        if self.kind == "soup":
            return [f"{stage}soup:{self.alpha:g}"]
        if self.kind == "validate":
            return [f"validate:{self.name}"]
        return [stage + interval_key(self.start, e, self.parts, self.alpha) for e in self.ends]

    def cost(self, num_layers: int, prefix_reuse: bool = True) -> int:
        """Decoder-layer forwards per batch (for the plan and for balancing workers)."""
        if self.kind != "start":
            return num_layers
        if not prefix_reuse:
            return num_layers * len(self.ends)
        chain = max(self.ends) - self.start
        return self.start + chain + sum(num_layers - e for e in self.ends)


def carried_prefix_layers(units: Sequence[Unit]) -> int:
    """Post-prefix layer forwards per batch when one :class:`PostPrefix` carries the stream
    across ``units`` in this order: the climb from the last start, or from the embeddings
    when a start is below it."""
    total, at = 0, 0
    for u in units:
        if u.kind == "start":
            total += u.start - at if u.start >= at else u.start
            at = u.start
    return total


def plan_units(
    num_layers: int,
    intervals: Sequence[Range],
    soups: Sequence[float],
    parts: Sequence[str] = ("all",),
    alphas: Sequence[float] = (1.0,),
) -> list[Unit]:
    """References first, then one unit per (part, alpha, start), starts ascending, then the
    whole-model soups."""
    ends: dict[int, list[int]] = {}
    for s, e in intervals:
        ends.setdefault(s, []).append(e)
    starts = [
        Unit("start", start=s, ends=tuple(sorted(es)), parts=p, alpha=a)
        for p in parts
        for a in sorted(alphas, reverse=True)
        for s, es in sorted(ends.items())
    ]
    refs = [Unit("reference", name="post"), Unit("reference", name="base")]
    return refs + starts + [Unit("soup", alpha=a) for a in soups]


def runner_for(model: Any, adapter: Any, batch: Any) -> LayerRunner:
    """A :class:`LayerRunner` of ``model`` on a proxy's batch: a packed CRC batch, or a dense
    one (``input_ids`` and ``attention_mask``)."""
    if hasattr(batch, "packed"):
        return LayerRunner(model, adapter, batch.packed)
    return LayerRunner(model, adapter, batch["input_ids"], batch["attention_mask"])


def score_model(
    model: Any, proxy: Any, batches: Sequence[Any], adapter: Any = None
) -> dict[str, Any]:
    """The proxy's row for a whole model (a reference, a soup, a swapped hybrid): every
    batch run through all layers with the same runner the fast engine uses."""
    if hasattr(proxy, "score_model"):  # a user's own function of the model
        return proxy.score_model(model)
    if adapter is None:
        adapter = adapter_for_model(model)
    parts = []
    for b in batches:
        run = runner_for(model, adapter, b)
        parts.append(proxy.score(b, run, run.run_from(0, run.hidden0, adapter.layers(model))))
    return proxy.combine(parts)


def _as_base(post_model: Any, base_model: Any, rng: Range, parts: str, alpha: float) -> Any:
    """The context in which ``post_model``'s layers ``rng`` are the hybrid's: the base's
    (``parts`` of them) or, for an interval soup, the blend at ``alpha``."""
    if alpha == 1.0:
        return swapped_layers(post_model, base_model, [rng], parts=parts)
    return souped(post_model, base_model, alpha, parts, layers=[rng])


#: how many bytes of post streams a :class:`PostPrefix` keeps
PREFIX_BYTES = 1 << 30


class PostPrefix:
    """Per batch, the post model's :class:`LayerRunner` and its residual stream entering the
    last start scored, carried from one start unit to the next.

    Why: both depend on the post model and the batch only, not on the unit. Building a runner
    costs a forward of the embeddings plus the masks, and the post prefix of start ``s`` costs
    ``s`` layer forwards; rebuilt per unit, a full sweep of ``L`` layers pays ``L`` runners and
    ``L(L-1)/2`` prefix layers per batch; carried, ``L - 1`` (at ``L = 30``: 4,989 layer
    forwards per batch instead of 5,395, 7.5% fewer). Carried, the stream entering ``s2`` continues from the one entering ``s1 < s2``: the same
    layers on the same inputs in the same order, so the numbers are identical. A start below
    the last one (another order, a resumed sweep) starts again from the embeddings. Memory:
    one residual stream (and runner) per batch, while the streams stay within ``max_bytes``
    (a CRC sweep holds megabytes; long perplexity rows could hold gigabytes, so the oldest
    batches are dropped and recomputed as before).

    The post model's decoder layers must hold the post weights whenever :meth:`stream` runs
    them (interval soups and partial restores change them only inside the chain's one call).
    """

    def __init__(self, post_model: Any, adapter: Any, max_bytes: int = PREFIX_BYTES) -> None:
        self.post_model, self.adapter, self.max_bytes = post_model, adapter, max_bytes
        self.layers = adapter.layers(post_model)
        # id(batch) -> (batch, runner, layer the stream enters, stream), oldest first; the
        # batch is kept so that its id cannot be reused by another batch while the entry lives
        self._at: dict[int, tuple[Any, LayerRunner, int, Any]] = {}

    def stream(self, batch: Any, start: int) -> tuple[LayerRunner, Any]:
        """The runner of ``batch`` and the post stream entering layer ``start``."""
        got = self._at.get(id(batch))
        if got is None or got[0] is not batch:
            run = runner_for(self.post_model, self.adapter, batch)
            at, h = 0, run.hidden0
        else:
            _, run, at, h = got
            if at > start:
                at, h = 0, run.hidden0
        h = run.run(self.layers, at, start, h)
        self._at.pop(id(batch), None)
        size = h.numel() * h.element_size()
        while (
            self._at
            and size + sum(x[3].numel() * x[3].element_size() for x in self._at.values())
            > self.max_bytes
        ):
            del self._at[next(iter(self._at))]
        if size <= self.max_bytes:
            self._at[id(batch)] = (batch, run, start, h)
        return run, h


def score_start(
    post_model: Any,
    base_model: Any,
    adapter: Any,
    proxy: Any,
    batches: Sequence[Any],
    start: int,
    ends: Sequence[int],
    parts: str = "all",
    alpha: float = 1.0,
    prefix: PostPrefix | None = None,
) -> dict[int, dict[str, Any]]:
    """Rows of the intervals ``[start, e)``, ``e`` in ``ends``, by prefix reuse (module doc).

    With ``parts`` other than ``all``, or ``alpha`` below 1, the chain's layer ``i`` is the
    post layer carrying the base's tensors of that part, or their blend, for its one call.
    ``prefix``: the :class:`PostPrefix` of earlier units (a fresh one without)."""
    post_layers, base_layers = adapter.layers(post_model), adapter.layers(base_model)
    if prefix is None:
        prefix = PostPrefix(post_model, adapter)
    wanted = set(ends)
    got: dict[int, list[Any]] = {e: [] for e in ends}
    for b in batches:
        run, h = prefix.stream(b, start)  # the post prefix, once per batch
        for e in range(start + 1, max(ends) + 1):
            if parts == "all" and alpha == 1.0:  # the base chain grows by one layer
                h = run.layer(base_layers[e - 1], e - 1, h)
            else:
                with _as_base(post_model, base_model, (e - 1, e), parts, alpha):
                    h = run.layer(post_layers[e - 1], e - 1, h)
            if e in wanted:
                final = run.run_from(e, h, post_layers)
                got[e].append(proxy.score(b, run, final))
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
    alpha: float = 1.0,
) -> dict[int, dict[str, Any]]:
    """Rows of the intervals ``[start, e)`` by the in-memory swap (or blend), each from the
    embeddings."""
    out = {}
    for e in ends:
        with _as_base(post_model, base_model, (start, e), parts, alpha):
            out[e] = score_model(post_model, proxy, batches, adapter)
    return out
