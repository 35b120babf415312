"""Selective Layer Restoration commands: ``restore`` (and, later, ``crc``, ``sweep``, ``soup``)."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.commands.common import add_output_args, add_pair_args, merge_recipe


def _cmd_restore(args: argparse.Namespace) -> int:
    from layergraft.api import restore
    from layergraft.io.provenance import command_line

    v = merge_recipe(args, "restore", ("base", "post", "layers"))
    prov = restore(
        v["base"],
        v["post"],
        v["layers"],
        args.out,
        embed_from=v.get("embed_from", "post"),
        head_from=v.get("head_from", "post"),
        force=args.force,
        max_shard_bytes=v.get("max_shard_size"),
        hash_inputs=args.hash_inputs,
        export_mergekit=args.export_mergekit,
        allow_pickle=args.allow_pickle,
        progress=not args.quiet,
        command=command_line(),
    )
    d = prov["details"]
    print(
        f"wrote {args.out}: layers {d['layers']} from base ({d['tensors_from']['base']} tensors), "
        f"{d['tensors_from']['post']} tensors from post; embeddings from {d['embed_from']}, head from {d['head_from']}"
    )
    return 0


def register(sub: Any) -> None:
    r = sub.add_parser(
        "restore",
        help="copy decoder layer ranges from the base into the post model (Selective Layer Restoration)",
        description="Write the post-trained model with the decoder layers in --layers copied, bit-identically, "
        "from the base model. Ranges are 0-based, end excluded: 2:5 = layers 2,3,4; several as 0:2,5:7.",
    )
    add_pair_args(r)
    r.add_argument(
        "--layers", metavar="RANGES", help="layer ranges to take from the base, e.g. 2:5 or 0:2,5:7"
    )
    r.add_argument(
        "--embed-from", choices=("post", "base"), help="who supplies the embeddings (default post)"
    )
    r.add_argument(
        "--head-from",
        choices=("post", "base"),
        help="who supplies lm_head and the final norm (default post)",
    )
    r.add_argument(
        "--recipe",
        metavar="FILE.yaml",
        help="read base/post/layers/... from a YAML recipe (flags override)",
    )
    r.add_argument(
        "--export-mergekit",
        metavar="FILE",
        help="also write the equivalent mergekit passthrough YAML",
    )
    add_output_args(r)
    r.set_defaults(func=_cmd_restore)
