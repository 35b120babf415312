"""Which layers go, and cutting them out of a loaded model.

``--remove`` accepts blocks (``3:5``, 0-based, end excluded), scattered layers (``3,7,9``) or
both; adjacent items merge into maximal gaps. Cutting a block in place deletes it from the
layer list, slices the per-layer config lists (``layer_types``, ...) and renumbers
``layer_idx`` from 0, so the KV cache of the pruned model addresses the right slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from layergraft.errors import RangeError
from layergraft.ranges import Range, check_range, format_ranges, parse_ranges


def parse_removal(spec: str | Sequence[Any], num_layers: int) -> list[Range]:
    """``"3:5"``, ``"3,7,9"`` or mixed ``"3:5,9"`` -> maximal contiguous gaps, sorted.

    Bare indices mean one layer; adjacent items merge (``3,4`` is the gap ``3:5``). Refuses
    removing every layer.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    texts = []
    for it in items:
        if isinstance(it, int) or (isinstance(it, str) and it.lstrip("-").isdigit()):
            i = int(it)
            texts.append(f"{i}:{i + 1}")
        else:
            texts.append(it)
    ranges = parse_ranges(texts if texts else spec, num_layers)
    gaps = merge_adjacent(ranges)
    removed = sum(e - s for s, e in gaps)
    if removed >= num_layers:
        raise RangeError(
            f"removing {format_ranges(gaps)} would remove all {num_layers} layers; keep at least one"
        )
    return gaps


def merge_adjacent(ranges: Sequence[Range]) -> list[Range]:
    out: list[Range] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return [check_range(r) for r in out]


def kept_layers(num_layers: int, gaps: Sequence[Range]) -> list[int]:
    removed = {i for s, e in gaps for i in range(s, e)}
    return [i for i in range(num_layers) if i not in removed]


def cut_block(model: Any, adapter: Any, start: int, end: int) -> None:
    """Remove current layers ``[start, end)`` in place: ModuleList, ``layer_idx``, config."""
    layers = adapter.layers(model)
    n = len(layers)
    keep = [i for i in range(n) if not (start <= i < end)]
    for i in reversed(range(start, end)):
        del layers[i]
    adapter.slice_model_config(model, keep)
    adapter.renumber_layer_idx(model)
