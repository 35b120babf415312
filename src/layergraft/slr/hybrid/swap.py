"""In-memory layer swap: a loaded post model temporarily runs with base layers.

Why: a sweep scores dozens of hybrids. Writing each to disk and reloading it costs a full
checkpoint round-trip per interval; pointing the post model's layer parameters at the base
model's tensors costs nothing (no copy when both live on one device) and is undone exactly,
by putting the original tensor objects back, on exit, exception or not.

Offloaded layers (accelerate's ``device_map`` with ``"disk"``, or CPU offload for a GPU run)
hold no weights: their parameters are on the ``meta`` device and a hook loads each module's
weights from its ``weights_map`` at every forward, so pointing the parameters elsewhere would
be silently ignored. For those, the hook's map is overlaid with the new values instead
(:class:`layergraft.models.offload.OffloadOverlay`), and the overlay is removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.errors import MismatchError, RangeError
from layergraft.models.offload import OffloadOverlay, offloaded_params, param_value
from layergraft.ranges import Range
from layergraft.slr.hybrid.restored import Restored, parse_restored

#: what the in-memory hybrids take as layers: ``"4:7"``, ``"0:2,5:7"``, ``["4:7"]``,
#: ``[(4, 7)]``, one pair ``(4, 7)``, or :class:`Restored` items (each with its own parts)
RangesLike = str | Range | Restored | Iterable[str | Range | Restored]


@contextlib.contextmanager
def overridden(
    model: Any, values: dict[str, Any], offloaded: dict[str, tuple[Any, str]] | None = None
) -> Iterator[Any]:
    """Within the block, the parameters of ``model`` named in ``values`` carry those tensors
    (moved to each parameter's device and dtype; an offloaded parameter gets them through its
    hook's map, and may be given a zero-argument callable computing them on demand).
    Everything is put back on exit, bit for bit, exception or not."""
    params = dict(model.named_parameters())
    offloaded = offloaded_params(model) if offloaded is None else offloaded
    saved: list[tuple[Any, Any]] = []
    per_hook: dict[int, tuple[Any, dict[str, Any]]] = {}
    try:
        for qname, value in values.items():
            p = params[qname]
            if qname in offloaded:
                hook, key = offloaded[qname]
                if not callable(value):
                    value = value.to(dtype=p.dtype)
                per_hook.setdefault(id(hook), (hook, {}))[1][key] = value
                continue
            saved.append((p, p.data))
            if value.device != p.device or value.dtype != p.dtype:
                value = value.to(device=p.device, dtype=p.dtype)
            p.data = value
        for hook, overrides in per_hook.values():
            hook.weights_map = OffloadOverlay(hook.weights_map, overrides)
        yield model
    finally:
        for p, data in reversed(saved):
            p.data = data
        for hook, _ in per_hook.values():
            if isinstance(hook.weights_map, OffloadOverlay):
                hook.weights_map = hook.weights_map.base


def _pairs(
    post_model: Any, base_model: Any, adapter: Any, i: int, parts: Any
) -> list[tuple[str, Any, str, Any]]:
    """``(post name, post param, base name, base param)`` of layer ``i``'s ``parts``."""
    pp = adapter.layer_parameters(post_model, i, parts)
    bp = dict(adapter.layer_parameters(base_model, i, parts))
    if {n for n, _ in pp} != set(bp):
        raise MismatchError(
            f"layer {i}: base and post have different parameters; the models differ in structure"
        )
    out = []
    for name, p in pp:
        b = bp[name]
        if b.shape != p.shape:
            raise MismatchError(
                f"layer {i}: {name} is {list(b.shape)} in base but {list(p.shape)} in post"
            )
        out.append((name, p, name, b))
    return out


def _items(spec: Any) -> list[Any]:
    """``spec`` as a list of range items for :mod:`layergraft.ranges`; one bare pair
    ``(4, 7)`` is one range, and anything that is not a collection is refused in one line."""
    if isinstance(spec, (str, Restored)):
        return [spec]
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(type(x) is int for x in spec):
        return [tuple(spec)]
    try:
        return list(spec)
    except TypeError:
        raise RangeError(
            f"layer ranges {spec!r} are not ranges; write them as '4:7', '0:2,5:7' or [(4, 7)]"
        ) from None


def as_ranges(spec: RangesLike, num_layers: int | None = None) -> list[Range]:
    """Layer ranges given in any form :data:`RangesLike` names (Restored items by their
    range), validated like everywhere else (:func:`~layergraft.ranges.parse_ranges`: bounds,
    order, overlaps; a :class:`~layergraft.errors.RangeError` in one line)."""
    return [r.range for r in as_restored(spec, "all", num_layers)]


def as_restored(
    spec: RangesLike, parts: str | Iterable[str] = "all", num_layers: int | None = None
) -> list[Restored]:
    """:func:`as_ranges`, each range with its parts: a :class:`Restored` item's own, else
    ``parts``."""
    items = [
        {"range": list(r.range), "parts": r.parts} if isinstance(r, Restored) else r
        for r in _items(spec)
    ]
    return parse_restored(items, parts, num_layers)


@contextlib.contextmanager
def swapped_layers(
    post_model: Any,
    base_model: Any,
    ranges: RangesLike,
    adapter: Any = None,
    parts: str | Iterable[str] = "all",
) -> Iterator[Any]:
    """Within the block, ``post_model``'s decoder layers in ``ranges`` carry the base's
    weights — for ``parts`` only (``attn``, ``mlp``, ``norms``; a :class:`Restored` item
    brings its own parts). ``ranges`` in the one convention: ``"4:7"``, ``"0:2,5:7"``, a
    list of those or of ``(start, end)`` pairs, or :class:`Restored` items; a bad or
    overlapping range is a :class:`~layergraft.errors.RangeError` before anything changes.

    The base tensors are moved to the device/dtype of the post layer they replace (so models
    placed with ``device_map`` work); on one device they are shared, not copied — treat the
    hybrid as read-only. Everything is put back on exit, bit for bit.
    """
    if adapter is None:
        adapter = adapter_for_model(post_model)
    n_post, n_base = len(adapter.layers(post_model)), len(adapter.layers(base_model))
    if n_post != n_base:
        raise MismatchError(f"base has {n_base} layers but post has {n_post}")
    restored = as_restored(ranges, parts, n_post)
    post_off, base_off = offloaded_params(post_model), offloaded_params(base_model)
    values: dict[str, Any] = {}
    for item in restored:
        rng, item_parts = item.range, item.parts
        for i in range(*rng):
            for pname, _, bname, b in _pairs(post_model, base_model, adapter, i, item_parts):
                values[pname] = param_value(b, bname, base_off)
    with overridden(post_model, values, post_off):
        yield post_model
