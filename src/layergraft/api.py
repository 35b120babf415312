"""The public Python API. The CLI calls these functions and nothing else does more.

Each function validates everything it can *before* writing (so bad input costs
milliseconds and leaves nothing behind), writes through an atomic temp directory, and
returns a JSON-ready result.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layergraft.inspect import inspect_model
from layergraft.io.atomic import atomic_dir, check_output_target
from layergraft.io.checkpoint import Checkpoint, open_checkpoint
from layergraft.io.provenance import (
    RECIPE_NAME,
    build_provenance,
    model_card,
    write_model_card,
    write_provenance,
)
from layergraft.ranges import Range, format_ranges, parse_ranges

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

__all__ = ["inspect_model", "open_checkpoint", "restore"]


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


def _as_checkpoint(x: PathLike | Checkpoint, allow_pickle: bool) -> Checkpoint:
    return x if isinstance(x, Checkpoint) else open_checkpoint(x, allow_pickle=allow_pickle)


def restore(
    base: PathLike | Checkpoint,
    post: PathLike | Checkpoint,
    layers: str | Iterable[Any],
    out: PathLike,
    *,
    embed_from: str = "post",
    head_from: str = "post",
    force: bool = False,
    max_shard_bytes: int | None = None,
    hash_inputs: bool = False,
    export_mergekit: PathLike | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Write the post model with the decoder layers in ``layers`` copied from the base.

    ``layers`` uses the range convention (``"2:5"`` = layers 2, 3, 4; ``"0:2,5:7"``).
    Tensors are copied bit-identically; embeddings and lm_head come from the post model
    unless ``embed_from`` / ``head_from`` say ``"base"``. Returns the provenance record.
    """
    from layergraft.recipe import dump_recipe
    from layergraft.surgery.restore import mergekit_yaml, plan_restore, restore_to_dir

    b = _as_checkpoint(base, allow_pickle)
    p = _as_checkpoint(post, allow_pickle)
    ranges: list[Range] = parse_ranges(layers, p.adapter.num_layers)
    target = check_output_target(out, force=force, inputs=[b.path, p.path])
    plan = plan_restore(b, p, ranges, embed_from=embed_from, head_from=head_from)  # type: ignore[arg-type]
    if embed_from != "post" or head_from != "post":
        log.warning(
            "embeddings from %s, lm_head/final norm from %s (recorded in layergraft.json)",
            embed_from,
            head_from,
        )
    total = sum(t.nbytes for t in plan.tensors)
    rtext = format_ranges(ranges)
    with atomic_dir(target, force=force, inputs=[b.path, p.path]) as tmp:
        with _progress_bar(total, f"restore {rtext}", progress) as bar:
            files = restore_to_dir(
                plan, b, p, tmp, max_shard_bytes=max_shard_bytes, progress=bar.update
            )
        recipe = {
            "base": b.origin,
            "post": p.origin,
            "layers": rtext,
            "embed_from": embed_from,
            "head_from": head_from,
        }
        (tmp / RECIPE_NAME).write_text(dump_recipe("restore", recipe))
        prov = build_provenance(
            "restore",
            inputs={"base": b.fingerprint(hash_inputs), "post": p.fingerprint(hash_inputs)},
            outputs=files,
            details={
                "layers": rtext,
                "ranges": [list(r) for r in ranges],
                "layers_from_base": [i for s, e in ranges for i in range(s, e)],
                "embed_from": embed_from,
                "head_from": head_from,
                "tensors_from": plan.counts(),
                "family": p.adapter.family,
                "num_layers": p.adapter.num_layers,
            },
            command=command,
        )
        write_provenance(tmp, prov)
        write_model_card(
            tmp,
            model_card(
                f"{Path(p.origin).name} with layers {rtext} restored from {Path(b.origin).name}",
                f"Selective Layer Restoration: the post-trained model `{p.origin}` with decoder layers "
                f"`{rtext}` (0-based, end excluded) copied bit-identically from the base model `{b.origin}`. "
                f"Embeddings from **{embed_from}**, lm_head and final norm from **{head_from}**; config, tokenizer "
                "and chat template from the post model. Same architecture and size as the post model; loads with "
                "`AutoModelForCausalLM.from_pretrained`.",
                prov,
            ),
        )
    if export_mergekit is not None:  # after the model is in place: never a recipe without it
        dtype = next(iter(p.tensors.values())).dtype
        mk = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}.get(dtype)
        Path(export_mergekit).write_text(
            mergekit_yaml(b.origin, p.origin, ranges, p.adapter.num_layers, mk)
        )
    return prov
