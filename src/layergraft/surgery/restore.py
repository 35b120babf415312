"""Selective Layer Restoration on disk: post model with some layers taken from the base.

Why pure IO: the hybrid differs from the post model only in *which file* each tensor's bytes
come from. Every tensor is copied verbatim as a byte range (bit-identical to its source, in
its dtype), so no tensor is ever decoded and nothing but the headers is held in memory.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from layergraft.errors import InputError, MismatchError
from layergraft.io.checkpoint import Checkpoint
from layergraft.io.writer import OutTensor
from layergraft.ranges import Range, format_ranges, layers_of

log = logging.getLogger(__name__)
Source = Literal["post", "base"]


def check_compatible(base: Checkpoint, post: Checkpoint) -> None:
    """Refuse pairs whose tensors cannot be exchanged one for one."""
    ab, ap = base.adapter, post.adapter
    if ab.family != ap.family or base.config.get("model_type") != post.config.get("model_type"):
        raise MismatchError(
            f"base is {base.config.get('model_type')} ({ab.family}) but post is {post.config.get('model_type')} ({ap.family}); "
            "give a base/post pair of one architecture"
        )
    if ab.num_layers != ap.num_layers:
        raise MismatchError(
            f"base has {ab.num_layers} layers but post has {ap.num_layers}; give a pair with equal layer counts"
        )
    for what, a, b in (
        ("hidden size", ab.hidden_size, ap.hidden_size),
        ("vocab size", ab.vocab_size, ap.vocab_size),
    ):
        if a != b:
            raise MismatchError(
                f"base {what} is {a} but post {what} is {b}; give a base/post pair of one model family and size"
            )
    only_b = sorted(set(base.tensors) - set(post.tensors))
    only_p = sorted(set(post.tensors) - set(base.tensors))
    if only_b or only_p:
        name = (only_b or only_p)[0]
        side = "base" if only_b else "post"
        raise MismatchError(
            f"tensor {name!r} exists only in the {side} model; the two checkpoints differ in structure — give a base/post pair of one model"
        )
    for name, e in post.tensors.items():
        b = base.tensors[name]
        if b.shape != e.shape:
            raise MismatchError(
                f"tensor {name!r} is {list(b.shape)} in base but {list(e.shape)} in post; give a base/post pair of one model size"
            )
        if b.dtype != e.dtype:
            raise MismatchError(
                f"tensor {name!r} is {b.dtype} in base but {e.dtype} in post; convert one model to the other's dtype first"
            )


@dataclass
class RestorePlan:
    """Which checkpoint supplies each output tensor; built and checked before any write."""

    ranges: list[Range]
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
    ranges: list[Range],
    *,
    embed_from: Source = "post",
    head_from: Source = "post",
) -> RestorePlan:
    """Decide, per tensor, base or post: layers in ``ranges`` from base, the rest from post;
    embeddings and head (with the final norm) from whichever model the caller names."""
    check_compatible(base, post)
    ad = post.adapter
    for label, v in (("--embed-from", embed_from), ("--head-from", head_from)):
        if v not in ("post", "base"):
            raise InputError(f"{label} must be 'post' or 'base', not {v!r}")
    if ad.tied_embeddings and embed_from != head_from:
        raise InputError(
            "this model ties embeddings and lm_head (one tensor); pass the same model to --embed-from and --head-from"
        )
    chosen = set(layers_of(ranges))
    plan = RestorePlan(list(ranges), embed_from, head_from, [])
    # keep the post checkpoint's tensor order (it is the order transformers wrote)
    for name in post.tensors:
        part = ad.classify(name)
        if part.section == "layer":
            src: Source = "base" if part.layer in chosen else "post"
        elif part.section == "pre":
            src = embed_from
        else:
            src = head_from
        plan.origin[name] = src
        ck = base if src == "base" else post
        plan.tensors.append(OutTensor.copy_of(ck.tensors[name]))
    return plan


def default_shard_bytes(ck: Checkpoint) -> int:
    """Shard like the input: the largest input shard size (so a restore mirrors ``cp``)."""
    from layergraft.io.writer import DEFAULT_MAX_SHARD_BYTES

    if len(ck.weight_files) == 1:
        return DEFAULT_MAX_SHARD_BYTES
    return max(f.stat().st_size for f in ck.weight_files)


def copy_sidecars(src: Checkpoint, dst: Path) -> list[str]:
    """Config, tokenizer, chat template and generation config, copied verbatim."""
    names = []
    for f in src.sidecar_files():
        shutil.copyfile(f, dst / f.name)
        names.append(f.name)
    return names


def mergekit_yaml(
    base_origin: str, post_origin: str, ranges: list[Range], num_layers: int, dtype: str | None
) -> str:
    """The equivalent mergekit passthrough recipe (its layer_range is half-open too)."""
    import yaml

    from layergraft.ranges import complement

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
