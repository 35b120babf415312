"""Selective Layer Restoration commands: ``restore``, ``soup``, ``crc``, ``sweep``."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.cli.options import (
    add_command,
    add_json_arg,
    add_output_args,
    add_pair_args,
    add_placement_args,
    finite_float,
    merge_recipe,
    output_kwargs,
    placement_kwargs,
    print_json,
)
from layergraft.slr.proxy.ends import V_END_MODES


def _cmd_restore(args: argparse.Namespace) -> int:
    from layergraft.checkpoint.provenance import command_line
    from layergraft.slr.hybrid.restore import restore

    v = merge_recipe(args, "restore", ("base", "post", "layers"))
    prov = restore(
        v["base"],
        v["post"],
        v["layers"],
        args.out,
        parts=v.get("parts", "all"),
        embed_from=v.get("embed_from", "post"),
        head_from=v.get("head_from", "post"),
        max_shard_bytes=v.get("max_shard_size"),
        export_mergekit=args.export_mergekit,
        command=command_line(),
        **output_kwargs(args),
    )
    d = prov["details"]
    print(
        f"wrote {args.out}: layers {_parts_label(d)} from base ({d['tensors_from']['base']} tensors), "
        f"{d['tensors_from']['post']} tensors from post; embeddings from {d['embed_from']}, head from {d['head_from']}"
    )
    return 0


def _parts_label(details: dict[str, Any]) -> str:
    parts = details.get("parts") or {}
    return (
        ", ".join(
            r if p == ["attn", "mlp", "norms"] else f"{r} ({','.join(p)})" for r, p in parts.items()
        )
        or details["layers"]
    )


def _cmd_soup(args: argparse.Namespace) -> int:
    from layergraft.checkpoint.provenance import command_line
    from layergraft.slr.hybrid.soup import soup

    v = merge_recipe(args, "soup", ("base", "post", "alpha"))
    soup(
        v["base"],
        v["post"],
        v["alpha"],
        args.out,
        parts=v.get("parts", "all"),
        layers=v.get("layers"),
        max_shard_bytes=v.get("max_shard_size"),
        command=command_line(),
        **output_kwargs(args),
    )
    where = f" on layers {v['layers']}" if v.get("layers") else ""
    print(f"wrote {args.out}: (1 - {v['alpha']:g}) * post + {v['alpha']:g} * base{where}")
    return 0


def _crc_table(res: dict[str, Any]) -> str:
    lines = [f"{'':<10} {'V':>7} {'H (nats)':>9} {'H_norm':>7} {'V_end':>7} {'prompts':>8}"]
    for name, row in [("all", res["mean"])] + sorted(res["by_category"].items()):
        v_end = f"{row['V_end']:>7.3f}" if row.get("V_end") is not None else f"{'n/a':>7}"
        lines.append(
            f"{name:<10} {row['V']:>7.3f} {row['H']:>9.3f} {row['H_norm']:>7.3f} {v_end} {row['n']:>8}"
        )
    return "\n".join(lines)


def _cmd_crc(args: argparse.Namespace) -> int:
    from layergraft.slr.proxy.crc import crc

    res = crc(
        args.model,
        args.tokenizer,
        prompts=args.prompts,
        estimator=args.estimator,
        samples=args.samples,
        temperature=args.temperature,
        min_p=args.min_p,
        seed=args.seed,
        v_end=args.v_end,
        **placement_kwargs(args),
    )
    if args.json:
        print_json(res)
    else:
        print(
            f"CRC ({args.estimator} estimator): V = validity, H = entropy over valid characters, "
            "H_norm = H / log|S|, V_end = a valid character and then the end of the reply"
        )
        print(_crc_table(res))
        ends = res["v_end"]["end_markers"]
        print(
            f"end markers: {', '.join(ends['tokens']) or 'none (V_end unavailable)'} ({res['v_end']['definition']})"
        )
    return 0


def register(sub: Any) -> None:
    """Add this area's subcommands to ``sub`` (an argparse subparsers object)."""
    r = add_command(
        sub,
        "restore",
        _cmd_restore,
        "copy decoder layer ranges from the base into the post model (Selective Layer Restoration)",
        "Write the post-trained model with the decoder layers in --layers copied, bit-identically, "
        "from the base model. Ranges are 0-based, end excluded: 2:5 = layers 2,3,4; several as 0:2,5:7.",
    )
    add_pair_args(r)
    r.add_argument(
        "--layers", metavar="RANGES", help="layer ranges to take from the base, e.g. 2:5 or 0:2,5:7"
    )
    r.add_argument(
        "--parts",
        metavar="PARTS",
        help="restore only these parts of the layers: attn, mlp, norms (several as attn,norms; "
        "default all); a recipe can give each range its own",
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

    so = add_command(
        sub,
        "soup",
        _cmd_soup,
        "write the weight interpolation (1-alpha)*post + alpha*base (baseline)",
    )
    add_pair_args(so)
    so.add_argument(
        "--alpha", type=finite_float(min=0, max=1, example="0.25"),
        help="blend weight of the base model, in [0, 1]",
    )  # fmt: skip
    so.add_argument(
        "--layers",
        metavar="RANGES",
        help="blend only these decoder layers, e.g. 4:7 (an interval soup: embeddings, final "
        "norm and head stay the post model's; alpha 1 equals restore --layers)",
    )
    so.add_argument(
        "--parts",
        metavar="PARTS",
        help="blend only these parts of every layer: attn, mlp, norms (default all: every "
        "floating tensor, embeddings and head too)",
    )
    so.add_argument(
        "--recipe",
        metavar="FILE.yaml",
        help="read base/post/alpha from a YAML recipe (flags override)",
    )
    add_output_args(so)

    c = add_command(
        sub,
        "crc",
        _cmd_crc,
        "CRC proxy: validity and diversity of 'give a random character from this set'",
    )
    c.add_argument(
        "model", metavar="MODEL", help="model directory, .gguf or hub id (needs a chat template)"
    )
    c.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="tokenizer with the chat template to use (default: the model's; e.g. the post "
        "model's for a base model)",
    )
    c.add_argument(
        "--estimator",
        choices=("exact", "sample"),
        default="exact",
        help="exact first-token distribution (default) or sampled answers",
    )
    c.add_argument(
        "--prompts",
        default="all",
        help="bundled set (letters, digits, all) or a JSONL file of {prompt, valid}",
    )
    c.add_argument("--samples", type=int, default=32, help="samples per prompt (sample estimator)")
    c.add_argument("--temperature", type=finite_float(min=0, example="1.0"), default=1.0)
    c.add_argument(
        "--min-p", type=finite_float(min=0, max=1, inclusive=(True, False), example="0.1"),
        default=0.1,
    )  # fmt: skip
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--v-end",
        choices=V_END_MODES,
        default="strict",
        help="V_end: the character then an end marker (strict), also after one closing '.', "
        "'!' or newline (closers), or off",
    )
    add_json_arg(c)
    add_placement_args(c)
