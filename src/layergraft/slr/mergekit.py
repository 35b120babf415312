"""The mergekit recipe equivalent to a restore, for users who build models with mergekit."""

from __future__ import annotations

from typing import Any

from layergraft.ranges import Range, complement, format_ranges


def mergekit_yaml(
    base_origin: str, post_origin: str, ranges: list[Range], num_layers: int, dtype: str | None
) -> str:
    """The equivalent mergekit passthrough recipe (its layer_range is half-open too)."""
    import yaml

    pieces = [(s, e, base_origin) for s, e in ranges] + [
        (s, e, post_origin) for s, e in complement(ranges, num_layers)
    ]
    pieces.sort()
    body: dict[str, Any] = {
        "slices": [{"sources": [{"model": m, "layer_range": [s, e]}]} for s, e, m in pieces],
        "merge_method": "passthrough",
        "base_model": post_origin,
    }
    if dtype:
        body["dtype"] = dtype
    head = (
        f"# mergekit passthrough equivalent of `layergraft restore --layers {format_ranges(ranges)}`\n"
        "# (embeddings and lm_head from base_model = the post-trained model)\n"
    )
    return head + yaml.safe_dump(body, sort_keys=False)
