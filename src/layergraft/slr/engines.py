"""Scoring every contiguous interval of restored layers: the two sweep engines.

Two engines give the same numbers:

* :func:`sweep_intervals_fast` (default) records the post model's layer inputs once and
  walks the intervals by start ``s``: the hidden state entering ``s`` is reused (prefix
  reuse) and the base chain ``s..e-1`` grows one layer at a time, so each interval costs only
  its post-suffix ``e..L-1`` plus the head. It needs a score computed from logits.
* :func:`sweep_intervals_swap` builds each hybrid with the in-memory swap and calls any
  ``score(model)`` function: the general path for a user's own proxy, and the reference
  the fast engine is tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from layergraft.errors import RangeError
from layergraft.ranges import Range
from layergraft.slr.runner import LayerRunner
from layergraft.slr.swap import swapped_layers


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


def sweep_intervals_fast(
    post_model: Any,
    base_model: Any,
    adapter: Any,
    batch: dict[str, Any],
    score_logits: Callable[[Any], dict[str, Any]],
    intervals: Sequence[Range],
    *,
    progress: Callable[[int], None] | None = None,
    last_only: bool = True,
) -> dict[Range, dict[str, Any]]:
    """Score each interval from its logits (last position only, or every position with
    ``last_only=False``), reusing prefixes (see module doc)."""
    run = LayerRunner(post_model, adapter, batch["input_ids"], batch.get("attention_mask"))
    post_layers, base_layers = adapter.layers(post_model), adapter.layers(base_model)
    wanted: dict[int, set[int]] = {}
    for s, e in intervals:
        wanted.setdefault(s, set()).add(e)
    out: dict[Range, dict[str, Any]] = {}
    for s in sorted(wanted):
        h = run.hidden[s]  # prefix reuse: post layers < s were run once, in the recording pass
        for e in range(s + 1, max(wanted[s]) + 1):
            h = run.layer(base_layers[e - 1], e - 1, h)  # base chain grows by one layer
            if e in wanted[s]:
                final = run.run_from(e, h, post_layers)
                out[(s, e)] = score_logits(run.logits(final, last_only=last_only))
                if progress is not None:
                    progress(1)
    return out


def sweep_intervals_swap(
    post_model: Any,
    base_model: Any,
    score_model: Callable[[Any], dict[str, Any]],
    intervals: Sequence[Range],
    *,
    adapter: Any = None,
    progress: Callable[[int], None] | None = None,
) -> dict[Range, dict[str, Any]]:
    """Score each interval with any ``score_model(model)`` on the swapped hybrid."""
    out: dict[Range, dict[str, Any]] = {}
    for r in intervals:
        with swapped_layers(post_model, base_model, [r], adapter=adapter):
            out[r] = score_model(post_model)
        if progress is not None:
            progress(1)
    return out
