"""Selective Layer Restoration on disk: post model with some layers (or some parts of them:
attention, MLP, norms) taken from the base.

Why pure IO: the hybrid differs from the post model only in *which file* each tensor's bytes
come from. Every tensor is copied verbatim as a byte range (bit-identical to its source, in
its dtype), so no tensor is ever decoded and nothing but the headers is held in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from layergraft.arch.spec import LAYER_PARTS
from layergraft.checkpoint.atomic import write_text_atomic
from layergraft.checkpoint.model_dir import write_model_dir
from layergraft.checkpoint.outputs import check_output
from layergraft.checkpoint.reader import Checkpoint, as_checkpoint
from layergraft.checkpoint.writer import OutTensor
from layergraft.errors import InputError
from layergraft.slr.hybrid.mergekit import check_mergekit_export, mergekit_yaml
from layergraft.slr.hybrid.pair import check_compatible
from layergraft.slr.hybrid.restored import (
    Restored,
    all_whole,
    format_restored,
    layer_parts,
    parse_restored,
    plain_ranges,
    range_text,
)

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
Source = Literal["post", "base"]


@dataclass
class RestorePlan:
    """Which checkpoint supplies each output tensor; built and checked before any write."""

    restored: list[Restored]
    embed_from: Source
    head_from: Source
    tensors: list[OutTensor]
    origin: dict[str, Source] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {"base": 0, "post": 0}
        for s in self.origin.values():
            out[s] += 1
        return out


def plan_restore(
    base: Checkpoint,
    post: Checkpoint,
    restored: list[Restored],
    *,
    embed_from: Source = "post",
    head_from: Source = "post",
) -> RestorePlan:
    """Decide, per tensor, base or post: the tensors of the restored parts of the restored
    layers from base, the rest from post; embeddings and head (with the final norm) from
    whichever model the caller names. A tensor of a partly restored layer that the adapter
    cannot place in a part is an error naming it."""
    check_compatible(base, post)
    ad = post.adapter
    for label, v in (("--embed-from", embed_from), ("--head-from", head_from)):
        if v not in ("post", "base"):
            raise InputError(f"{label} must be 'post' or 'base', not {v!r}")
    if ad.tied_embeddings and embed_from != head_from:
        raise InputError(
            "this model ties embeddings and lm_head (one tensor); pass the same model to --embed-from and --head-from"
        )
    chosen = layer_parts(restored)
    whole = set(LAYER_PARTS)
    plan = RestorePlan(list(restored), embed_from, head_from, [])
    # keep the post checkpoint's tensor order (it is the order transformers wrote)
    for name in post.tensors:
        part = ad.classify(name)
        if part.section == "layer":
            parts = chosen.get(part.layer, set())
            take = parts == whole or (bool(parts) and ad.layer_part(name) in parts)
            src: Source = "base" if take else "post"
        elif part.section == "pre":
            src = embed_from
        else:
            src = head_from
        plan.origin[name] = src
        ck = base if src == "base" else post
        plan.tensors.append(OutTensor.copy_of(ck.tensors[name]))
    return plan


def restore(
    base: PathLike | Checkpoint,
    post: PathLike | Checkpoint,
    layers: str | Iterable[Any],
    out: PathLike,
    *,
    parts: str | Iterable[str] = "all",
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

    ``layers`` uses the range convention (``"2:5"`` = layers 2, 3, 4; ``"0:2,5:7"``) or a
    recipe list whose items may name their own parts (:mod:`layergraft.slr.hybrid.restored`);
    ``parts`` (``attn``, ``mlp``, ``norms``, several as ``attn,norms``; default ``all``)
    restores only those tensors of the other ranges. Tensors are copied bit-identically;
    embeddings and lm_head come from the post model unless ``embed_from`` / ``head_from`` say
    ``"base"``. Returns the provenance record.
    """
    b = as_checkpoint(base, allow_pickle)
    p = as_checkpoint(post, allow_pickle)
    restored = parse_restored(layers, parts, p.adapter.num_layers)
    plan = plan_restore(b, p, restored, embed_from=embed_from, head_from=head_from)  # type: ignore[arg-type]
    if export_mergekit is not None:
        check_mergekit_export(
            export_mergekit, embed_from=embed_from, head_from=head_from, restored=restored
        )
        check_output(export_mergekit, inputs=[b, p], flag="--export-mergekit")
    if b.path.resolve() == p.path.resolve():
        # a warning, not a refusal: the output is right (a model's layers restored into
        # itself are the model), and a pipeline may use the pair as a control; but a user who
        # typed one path twice would otherwise get a plain copy without a word (issue 34)
        log.warning(
            "--base and --post are the same checkpoint (%s): the output is a copy of it, "
            "whatever the layers; give the base (pre-trained) model to --base",
            p.path,
        )
    if embed_from != "post" or head_from != "post":
        log.warning(
            "embeddings from %s, lm_head/final norm from %s (recorded in layergraft.json)",
            embed_from,
            head_from,
        )
    rtext, label = range_text(restored), format_restored(restored)
    whole = all_whole(restored)
    what = "decoder layers" if whole else "parts of decoder layers"
    prov = write_model_dir(
        out,
        operation="restore",
        inputs={"base": b, "post": p},
        sidecars_from=p,
        tensors=plan.tensors,
        recipe={
            "base": b.origin,
            "post": p.origin,
            "layers": rtext if whole else [r.as_recipe() for r in restored],
            "embed_from": embed_from,
            "head_from": head_from,
        },
        details={
            "layers": rtext,
            "parts": {f"{r.range[0]}:{r.range[1]}": list(r.parts) for r in restored},
            "ranges": [list(r.range) for r in restored],
            "layers_from_base": sorted(layer_parts(restored)),
            "embed_from": embed_from,
            "head_from": head_from,
            "tensors_from": plan.counts(),
            "family": p.adapter.family,
            "num_layers": p.adapter.num_layers,
        },
        title=f"{Path(p.origin).name} with layers {label} restored from {Path(b.origin).name}",
        summary=f"Selective Layer Restoration: the post-trained model `{p.origin}` with {what} "
        f"`{label}` (0-based, end excluded; parts: attention, MLP or norms) copied bit-identically "
        f"from the base model `{b.origin}`. "
        f"Embeddings from **{embed_from}**, lm_head and final norm from **{head_from}**; config, tokenizer "
        "and chat template from the post model. Same architecture and size as the post model; loads with "
        "`AutoModelForCausalLM.from_pretrained`.",
        force=force,
        max_shard_bytes=max_shard_bytes,
        hash_inputs=hash_inputs,
        progress=progress,
        desc=f"restore {label}",
        command=command,
        hash_outputs=hash_outputs,
        fsync=fsync,
    )
    if export_mergekit is not None:  # after the model is in place: never a recipe without it
        dtype = next(iter(p.tensors.values())).dtype
        mk = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}.get(dtype)
        recipe = mergekit_yaml(
            b.origin, p.origin, plain_ranges(restored), p.adapter.num_layers, mk,
            outside_from=embed_from,
        )  # fmt: skip
        write_text_atomic(export_mergekit, recipe, inputs=[b, p], flag="--export-mergekit")
    return prov
