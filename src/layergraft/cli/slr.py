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
    add_ppl_args,
    add_quiet_arg,
    add_ray_args,
    merge_recipe,
    output_kwargs,
    placement_kwargs,
    print_json,
    ray_kwargs,
)
from layergraft.errors import LayergraftError


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
        max_shard_bytes=v.get("max_shard_size"),
        command=command_line(),
        **output_kwargs(args),
    )
    print(f"wrote {args.out}: (1 - {v['alpha']:g}) * post + {v['alpha']:g} * base")
    return 0


def _crc_table(res: dict[str, Any]) -> str:
    lines = [f"{'':<10} {'V':>7} {'H (nats)':>9} {'H_norm':>7} {'prompts':>8}"]
    for name, row in [("all", res["mean"])] + sorted(res["by_category"].items()):
        lines.append(
            f"{name:<10} {row['V']:>7.3f} {row['H']:>9.3f} {row['H_norm']:>7.3f} {row['n']:>8}"
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
        **placement_kwargs(args),
    )
    if args.json:
        print_json(res)
    else:
        print(
            f"CRC ({args.estimator} estimator): V = validity, H = entropy over valid characters, H_norm = H / log|S|"
        )
        print(_crc_table(res))
    return 0


def _parse_starts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--starts {text!r} must be comma-separated layer indices, e.g. 0,2,4"
        ) from e


def _cmd_sweep(args: argparse.Namespace) -> int:
    from layergraft.report.sweep import sweep_table
    from layergraft.slr.sweep.distributed import RayExecutor
    from layergraft.slr.sweep.plan import format_plan
    from layergraft.slr.sweep.run import sweep

    if args.base is None or args.post is None:
        raise LayergraftError("--base and --post are required")
    if args.proxy == "ppl" and args.validity_ratio is not None:
        raise LayergraftError(
            "--validity-ratio applies to --proxy crc; remove it (--proxy ppl selects the lowest perplexity)"
        )
    if args.proxy == "crc" and args.data is not None:
        raise LayergraftError("--data is the text of --proxy ppl; remove it or pass --proxy ppl")
    ray = ray_kwargs(args)
    res = sweep(
        args.base,
        args.post,
        args.out,
        proxy=args.proxy,
        prompts=args.prompts,
        data=args.data,
        seqlen=args.ppl_seqlen,
        max_tokens=args.ppl_tokens,
        min_len=args.min_len,
        max_len=args.max_len,
        starts=_parse_starts(args.starts),
        validity_ratio=0.9 if args.validity_ratio is None else args.validity_ratio,
        method=args.method,
        parts=args.parts,
        prefix_reuse=not args.no_prefix_reuse,
        batch_size=args.batch_size,
        restore_best=args.restore_best,
        force=args.force,
        resume=args.resume,
        dry_run=args.dry_run,
        progress=not args.quiet,
        executor=RayExecutor(**ray) if ray is not None and not args.dry_run else None,
        **placement_kwargs(args),
    )
    if args.dry_run:
        print(format_plan(res["plan"]))
        return 0
    if res["proxy"] == "ppl":
        refs = res["references"]
        print(f"post PPL {refs['post']['ppl']:.3f}, base PPL {refs['base']['ppl']:.3f}")
        best = res["selected"]
        if best:
            print(
                f"lowest PPL: interval {best['interval']} with PPL {best['ppl']:.3f} ({res['definition']})"
            )
        if res.get("soup"):
            s = res["soup"]["selected"]
            print(f"lowest PPL soup: alpha {s['alpha']:g} with PPL {s['ppl']:.3f}")
    else:
        print(sweep_table(res))
        sel = res["selection"]
        print(
            f"rule: {res['rule']['text']} -> threshold V >= {sel['validity_threshold']:.3f}; selected: {sel['interval'] or 'none'}"
        )
        for part, sub in (res.get("by_part") or {}).items():
            best = sub.get("selected")
            print(f"  restoring {part}: selected {best['interval'] if best else 'none'}"
                  + (f" (V {best['V']:.3f}, H_norm {best['H_norm']:.3f})" if best else ""))  # fmt: skip
        if res.get("best_overall"):
            b = res["best_overall"]
            print(f"most diverse over the parts: {b['interval']} restoring {b['parts']}")
    if args.out:
        print(f"wrote {args.out}/results.json (rows in {args.out}/intervals.jsonl), CSV and plots")
    if args.restore_best:
        if not res.get("restored_to"):
            return 1  # the warning said why; the sweep's results are written
        print(
            f"restored the selected {'soup' if args.method == 'soup' else 'interval'} into {res['restored_to']}"
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
    so.add_argument("--alpha", type=float, help="blend weight of the base model, in [0, 1]")
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
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--min-p", type=float, default=0.1)
    c.add_argument("--seed", type=int, default=0)
    add_json_arg(c)
    add_placement_args(c)

    w = add_command(
        sub,
        "sweep",
        _cmd_sweep,
        "score every restored interval [s, e) on the CRC proxy and select one (the paper's rule)",
        "Loads base and post once, scores both and every contiguous interval [start, end) of "
        "base layers restored into the post model (in memory), selects the most diverse interval with "
        "V >= ratio x V_post, and writes results.json/csv, heatmaps and a Pareto plot.",
    )
    add_pair_args(w)
    w.add_argument(
        "--out",
        metavar="DIR",
        help="sweep directory: intervals.jsonl (every finished unit, durably; --resume "
        "continues it), then results.json, results.csv, heatmaps.png, pareto.png",
    )
    w.add_argument(
        "--force",
        action="store_true",
        help="start over: delete an existing --out first (and replace --restore-best)",
    )
    w.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out (killed or finished) with the same inputs and settings",
    )
    w.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (units, layer forwards, time and memory estimated from timing one "
        "layer on the real inputs) and stop",
    )
    w.add_argument("--prompts", default="all", help="CRC prompt set or JSONL file")
    w.add_argument(
        "--proxy",
        choices=("crc", "ppl"),
        default="crc",
        help="score by CRC (default) or by perplexity on --data",
    )
    add_ppl_args(w, "--data", "none: --proxy ppl needs one")
    w.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="prompts (crc, default 64) or rows (ppl, default 4) per forward pass; memory "
        "holds one batch however many prompts there are",
    )
    w.add_argument(
        "--method",
        choices=("slr", "soup", "both"),
        default="slr",
        help="intervals, 21 soup alphas, or both",
    )
    w.add_argument(
        "--parts",
        default="all",
        metavar="PARTS",
        help="restore whole layers (all, default) or only their attn, mlp or norms; several "
        "(attn,mlp,all) score every interval once per part, each with its own selection",
    )
    w.add_argument("--min-len", type=int, default=1, help="shortest interval (layers)")
    w.add_argument("--max-len", type=int, help="longest interval (layers)")
    w.add_argument("--starts", help="only intervals starting at these layers, e.g. 0,2,4")
    w.add_argument(
        "--validity-ratio",
        type=float,
        help="--proxy crc: keep intervals with V >= ratio x V_post (default 0.9)",
    )
    w.add_argument(
        "--no-prefix-reuse",
        action="store_true",
        help="run every hybrid from the embeddings (slower; for checking)",
    )
    w.add_argument(
        "--restore-best",
        metavar="DIR",
        help="also write the selected hybrid (--method soup: the selected soup) to DIR; exit 1 "
        "with a warning if nothing was selected",
    )
    add_quiet_arg(w)
    add_placement_args(w)
    add_ray_args(w)
