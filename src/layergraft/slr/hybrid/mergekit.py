"""The mergekit recipe equivalent to a restore, for users who build models with mergekit.

A mergekit ``passthrough`` merge stacks layer slices of several models and takes everything
outside the layers (embeddings, final norm, lm_head) from ``base_model``. So a restore is
expressible exactly when embeddings and head come from the same model (that model becomes
``base_model``); embeddings from one model and the head from the other is not, and is refused
before anything is written, as is restoring only some parts of layers (passthrough copies
whole layers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from layergraft.errors import InputError
from layergraft.ranges import Range, complement, format_ranges
from layergraft.slr.hybrid.restored import Restored


def check_mergekit_export(
    path: str | os.PathLike[str],
    *,
    embed_from: str,
    head_from: str,
    restored: Sequence[Restored] = (),
) -> None:
    """Refuse, before a restore writes anything, an export mergekit cannot express (where
    the recipe may be written is :func:`~layergraft.checkpoint.outputs.check_output`'s)."""
    partial = [r for r in restored if not r.whole]
    if partial:
        raise InputError(
            f"--export-mergekit: mergekit's passthrough copies whole layers, so it cannot express "
            f"restoring only {partial[0].label()}; drop --export-mergekit or restore whole layers "
            "(--parts all)"
        )
    if embed_from != head_from:
        raise InputError(
            f"--export-mergekit: mergekit's passthrough takes embeddings and lm_head from one "
            f"base_model, but this restore takes embeddings from {embed_from} and the head from "
            f"{head_from}; give --embed-from and --head-from the same model, or drop --export-mergekit"
        )


def mergekit_yaml(
    base_origin: str,
    post_origin: str,
    ranges: list[Range],
    num_layers: int,
    dtype: str | None,
    *,
    outside_from: str = "post",
) -> str:
    """The equivalent mergekit passthrough recipe (its ``layer_range`` is half-open too);
    ``outside_from`` names the model that supplies embeddings, final norm and lm_head."""
    import yaml

    pieces = [(s, e, base_origin) for s, e in ranges] + [
        (s, e, post_origin) for s, e in complement(ranges, num_layers)
    ]
    pieces.sort()
    outside = base_origin if outside_from == "base" else post_origin
    body: dict[str, Any] = {
        "slices": [{"sources": [{"model": m, "layer_range": [s, e]}]} for s, e, m in pieces],
        "merge_method": "passthrough",
        "base_model": outside,
    }
    if dtype:
        body["dtype"] = dtype
    head = (
        f"# mergekit passthrough equivalent of `layergraft restore --layers {format_ranges(ranges)}`\n"
        f"# (embeddings, final norm and lm_head from base_model = the {outside_from} model)\n"
    )
    return head + yaml.safe_dump(body, sort_keys=False)
