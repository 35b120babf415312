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

__all__ = [
    "compare",
    "compare_recovery",
    "crc",
    "diversity",
    "generate",
    "inspect_model",
    "lm_eval",
    "load_model",
    "open_checkpoint",
    "ppl",
    "prune",
    "restore",
    "run_demo",
    "scores",
    "soup",
    "sweep",
    "verify_model_dir",
]


def __getattr__(name: str) -> Any:
    """The other areas' API functions, imported on first use so ``import layergraft.api``
    stays light (restore must start fast; generation and pruning pull in more)."""
    homes = {
        "crc": "layergraft.slr_api",
        "sweep": "layergraft.slr_api",
        "generate": "layergraft.generation_api",
        "diversity": "layergraft.generation_api",
        "compare": "layergraft.generation_api",
        "scores": "layergraft.pruning_api",
        "prune": "layergraft.pruning_api",
        "ppl": "layergraft.pruning_api",
        "lm_eval": "layergraft.pruning_api",
        "compare_recovery": "layergraft.pruning_api",
        "load_model": "layergraft.pruning_api",
        "run_demo": "layergraft.demo",
        "verify_model_dir": "layergraft.verify",
    }
    if name in homes:
        import importlib

        return getattr(importlib.import_module(homes[name]), name)
    raise AttributeError(f"module 'layergraft.api' has no attribute {name!r}")


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


def _write_model_dir(
    out: PathLike,
    *,
    operation: str,
    inputs: dict[str, Checkpoint],
    sidecars_from: Checkpoint,
    tensors: list[Any],
    recipe: dict[str, Any],
    details: dict[str, Any],
    title: str,
    summary: str,
    force: bool,
    max_shard_bytes: int | None,
    hash_inputs: bool,
    progress: bool,
    desc: str,
    command: str | None,
    hash_outputs: bool = True,
    fsync: bool = False,
) -> dict[str, Any]:
    """The shared tail of every command that writes a model: weights (streamed, hashed),
    sidecars, recipe, provenance and model card, all inside one atomic directory."""
    from layergraft.io.writer import write_checkpoint
    from layergraft.recipe import dump_recipe
    from layergraft.surgery.restore import copy_sidecars, default_shard_bytes

    paths = [c.path for c in inputs.values()]
    target = check_output_target(out, force=force, inputs=paths)
    total = sum(t.nbytes for t in tensors)
    with atomic_dir(target, force=force, inputs=paths) as tmp:
        with _progress_bar(total, desc, progress) as bar:
            res = write_checkpoint(
                tmp,
                tensors,
                max_shard_bytes=max_shard_bytes or default_shard_bytes(sidecars_from),
                progress=bar.update,
                hash_outputs=hash_outputs,
                fsync=fsync,
            )
        copy_sidecars(sidecars_from, tmp)
        (tmp / RECIPE_NAME).write_text(dump_recipe(operation, recipe))
        prov = build_provenance(
            operation,
            inputs={role: c.fingerprint(hash_inputs) for role, c in inputs.items()},
            outputs=res.as_json(),
            details=details,
            command=command,
        )
        write_provenance(tmp, prov)
        write_model_card(tmp, model_card(title, summary, prov))
    return prov


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
    hash_outputs: bool = True,
    fsync: bool = False,
) -> dict[str, Any]:
    """Write the post model with the decoder layers in ``layers`` copied from the base.

    ``layers`` uses the range convention (``"2:5"`` = layers 2, 3, 4; ``"0:2,5:7"``).
    Tensors are copied bit-identically; embeddings and lm_head come from the post model
    unless ``embed_from`` / ``head_from`` say ``"base"``. Returns the provenance record.
    """
    from layergraft.surgery.restore import mergekit_yaml, plan_restore

    b = _as_checkpoint(base, allow_pickle)
    p = _as_checkpoint(post, allow_pickle)
    ranges: list[Range] = parse_ranges(layers, p.adapter.num_layers)
    plan = plan_restore(b, p, ranges, embed_from=embed_from, head_from=head_from)  # type: ignore[arg-type]
    if embed_from != "post" or head_from != "post":
        log.warning(
            "embeddings from %s, lm_head/final norm from %s (recorded in layergraft.json)",
            embed_from,
            head_from,
        )
    rtext = format_ranges(ranges)
    prov = _write_model_dir(
        out,
        operation="restore",
        inputs={"base": b, "post": p},
        sidecars_from=p,
        tensors=plan.tensors,
        recipe={
            "base": b.origin,
            "post": p.origin,
            "layers": rtext,
            "embed_from": embed_from,
            "head_from": head_from,
        },
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
        title=f"{Path(p.origin).name} with layers {rtext} restored from {Path(b.origin).name}",
        summary=f"Selective Layer Restoration: the post-trained model `{p.origin}` with decoder layers "
        f"`{rtext}` (0-based, end excluded) copied bit-identically from the base model `{b.origin}`. "
        f"Embeddings from **{embed_from}**, lm_head and final norm from **{head_from}**; config, tokenizer "
        "and chat template from the post model. Same architecture and size as the post model; loads with "
        "`AutoModelForCausalLM.from_pretrained`.",
        force=force,
        max_shard_bytes=max_shard_bytes,
        hash_inputs=hash_inputs,
        progress=progress,
        desc=f"restore {rtext}",
        command=command,
        hash_outputs=hash_outputs,
        fsync=fsync,
    )
    if export_mergekit is not None:  # after the model is in place: never a recipe without it
        dtype = next(iter(p.tensors.values())).dtype
        mk = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}.get(dtype)
        Path(export_mergekit).write_text(
            mergekit_yaml(b.origin, p.origin, ranges, p.adapter.num_layers, mk)
        )
    return prov


def soup(
    base: PathLike | Checkpoint,
    post: PathLike | Checkpoint,
    alpha: float,
    out: PathLike,
    *,
    force: bool = False,
    max_shard_bytes: int | None = None,
    hash_inputs: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    command: str | None = None,
    hash_outputs: bool = True,
    fsync: bool = False,
) -> dict[str, Any]:
    """Write the weight interpolation ``(1 - alpha) * post + alpha * base`` (every floating
    tensor, streamed one at a time). The proxy-soup baseline SLR is compared with."""
    from layergraft.surgery.soup import check_alpha, plan_soup

    a = check_alpha(alpha)
    b = _as_checkpoint(base, allow_pickle)
    p = _as_checkpoint(post, allow_pickle)
    check_output_target(out, force=force, inputs=[b.path, p.path])
    tensors = plan_soup(b, p, a)
    return _write_model_dir(
        out,
        operation="soup",
        inputs={"base": b, "post": p},
        sidecars_from=p,
        tensors=tensors,
        recipe={"base": b.origin, "post": p.origin, "alpha": a},
        details={
            "alpha": a,
            "formula": "(1 - alpha) * post + alpha * base",
            "family": p.adapter.family,
        },
        title=f"soup of {Path(p.origin).name} and {Path(b.origin).name}, alpha={a:g}",
        summary=f"Weight interpolation `(1 - {a:g}) * post + {a:g} * base` of every floating tensor "
        f"(post `{p.origin}`, base `{b.origin}`), computed in float32 and stored in the input dtype. "
        "Config, tokenizer and chat template from the post model.",
        force=force,
        max_shard_bytes=max_shard_bytes,
        hash_inputs=hash_inputs,
        progress=progress,
        desc=f"soup {a:g}",
        command=command,
        hash_outputs=hash_outputs,
        fsync=fsync,
    )
