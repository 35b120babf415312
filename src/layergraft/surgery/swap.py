"""In-memory layer swap: a loaded post model temporarily runs with base layers.

Why: a sweep scores dozens of hybrids. Writing each to disk and reloading it costs a full
checkpoint round-trip per interval; pointing the post model's layer parameters at the base
model's tensors costs nothing (no copy when both live on one device) and is undone exactly,
by putting the original tensor objects back, on exit, exception or not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from layergraft.errors import MismatchError
from layergraft.ranges import Range, layers_of


def _pairs(post_layer: Any, base_layer: Any, i: int) -> list[tuple[Any, Any]]:
    pp = dict(post_layer.named_parameters())
    bp = dict(base_layer.named_parameters())
    if pp.keys() != bp.keys():
        raise MismatchError(
            f"layer {i}: base and post have different parameters; the models differ in structure"
        )
    out = []
    for name, p in pp.items():
        b = bp[name]
        if b.shape != p.shape:
            raise MismatchError(
                f"layer {i}: {name} is {list(b.shape)} in base but {list(p.shape)} in post"
            )
        out.append((p, b))
    return out


@contextlib.contextmanager
def swapped_layers(
    post_model: Any, base_model: Any, ranges: Iterable[Range], adapter: Any = None
) -> Iterator[Any]:
    """Within the block, ``post_model``'s decoder layers in ``ranges`` carry the base's weights.

    The base tensors are moved to the device/dtype of the post layer they replace (so models
    placed with ``device_map`` work); on one device they are shared, not copied — treat the
    hybrid as read-only. Everything is put back on exit, bit for bit.
    """
    if adapter is None:
        from layergraft.arch import adapter_for_model

        adapter = adapter_for_model(post_model)
    post_layers = adapter.layers(post_model)
    base_layers = adapter.layers(base_model)
    if len(post_layers) != len(base_layers):
        raise MismatchError(f"base has {len(base_layers)} layers but post has {len(post_layers)}")
    saved: list[tuple[Any, Any]] = []
    try:
        for i in layers_of(ranges):
            for p, b in _pairs(post_layers[i], base_layers[i], i):
                saved.append((p, p.data))
                data = b.data
                if data.device != p.device or data.dtype != p.dtype:
                    data = data.to(device=p.device, dtype=p.dtype)
                p.data = data
        yield post_model
    finally:
        for p, data in reversed(saved):
            p.data = data
