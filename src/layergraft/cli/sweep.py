"""``layergraft sweep``: every hybrid of a family scored on a proxy, one chosen (and
validated); its many options live here, apart from the other restoration commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from layergraft.cli.options import (
    add_command,
    add_pair_args,
    add_placement_args,
    add_ppl_args,
    add_quiet_arg,
    add_ray_args,
    finite_float,
    placement_kwargs,
    positive_int,
    ray_kwargs,
)
from layergraft.cli.parser import refuse_unused
from layergraft.errors import LayergraftError
from layergraft.slr.sweep.config import (
    METHODS,
    PACKINGS,
    PROXIES,
    RULES,
    SEARCHES,
    V_END_MODES,
)


def _parse_starts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--starts {text!r} must be comma-separated layer indices, e.g. 0,2,4"
        ) from e


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _refuse_unused(args: argparse.Namespace) -> None:
    """Flags the chosen mode ignores, refused in one line naming the mode (as ``--workers``
    without ``--ray``): such a flag has no default here (None = not given), so a value the
    user typed is told apart from the default. The combinations that change the rows are
    refused again by :meth:`~layergraft.slr.sweep.config.SweepConfig.check` for API callers."""
    if args.alphas is not None and args.method == "soup":
        raise LayergraftError(
            "--alphas blends the layers of intervals, and --method soup scores whole-model soups "
            "only; remove --alphas or use --method both"
        )
    if args.validate_samples is not None and args.validate is None:
        raise LayergraftError(
            "--validate-samples applies to --validate K, which is not given; add --validate K "
            "or remove --validate-samples"
        )
    mode = (
        "--proxy ppl" if args.proxy == "ppl"
        else "--rule paper" if args.rule == "paper"
        else "--v-end off" if args.v_end == "off" else None
    )  # fmt: skip
    refuse_unused(args, ["--end-ratio"], mode=mode, applies="--rule format (it reads V_end)", fix="use --rule format")  # fmt: skip


def _cmd_sweep(args: argparse.Namespace) -> int:
    from layergraft.report.sweep import sweep_table
    from layergraft.slr.sweep.distributed import RayExecutor
    from layergraft.slr.sweep.plan import format_plan
    from layergraft.slr.sweep.run import chosen_hybrid, make_config, sweep
    from layergraft.study.selection import picks

    if args.base is None or args.post is None:
        raise LayergraftError("--base and --post are required")
    if args.proxy == "ppl" and args.validity_ratio is not None:
        raise LayergraftError(
            "--validity-ratio applies to --proxy crc; remove it (--proxy ppl selects the lowest perplexity)"
        )
    if args.proxy == "crc" and args.data is not None:
        raise LayergraftError("--data is the text of --proxy ppl; remove it or pass --proxy ppl")
    _refuse_unused(args)
    settings = {
        "proxy": args.proxy, "prompts": args.prompts, "data": args.data,
        "seqlen": args.ppl_seqlen, "max_tokens": args.ppl_tokens, "min_len": args.min_len,
        "max_len": args.max_len, "starts": _parse_starts(args.starts), "method": args.method,
        "parts": args.parts, "alphas": _default(args.alphas, "1"), "rule": args.rule,
        "v_end": args.v_end, "validity_ratio": _default(args.validity_ratio, 0.9),
        "end_ratio": _default(args.end_ratio, 0.9), "validate": args.validate,
        "validate_samples": _default(args.validate_samples, 4), "prefix_reuse": not args.no_prefix_reuse,
        "batch_size": args.batch_size, "packing": args.packing, "search": args.search,
    }  # fmt: skip
    cfg = make_config(settings)  # every setting checked before anything is loaded or written
    ray = ray_kwargs(args)
    res = sweep(
        args.base,
        args.post,
        args.out,
        config=cfg,
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
        for caveat in res.get("caveats") or []:  # read even with --quiet: the pick may mislead
            print(f"warning: {caveat}", file=sys.stderr)
        print(sweep_table(res))
        p = picks(res)
        lines = [("paper rule's pick", p["paper"]), ("format rule's pick", p["format"])]
        if res.get("validation"):
            lines.append(("validated pick", p["validated"]))
        active = res["rule"]["name"]
        for name, pick in lines:
            mark = " (the active rule)" if name.startswith(active) else ""
            what = f"{pick['label']} ({pick['what']})" if pick else "none"
            print(f"{name + ':':<20} {what}{mark}")
        for part, sub in (res.get("by_part") or {}).items():
            best = sub.get("selected")
            print(f"  restoring {part} only: {best['interval'] if best else 'none'}"
                  + (f" (V {best['V']:.3f}, H_norm {best['H_norm']:.3f})" if best else ""))  # fmt: skip
        if res.get("validation"):
            print(res["validation"]["verdict"])
    if args.out:
        print(f"wrote {args.out}/results.json (rows in {args.out}/intervals.jsonl), CSV and plots")
    if args.restore_best:
        if not res.get("restored_to"):
            return 1  # the warning said why; the sweep's results are written
        chosen, _ = chosen_hybrid(res)
        rule = (res.get("rule") or {}).get("name")
        which = (
            "validated pick" if res.get("validation")
            else f"{rule} rule's pick" if rule else "lowest perplexity"
        )  # fmt: skip
        print(
            f"written hybrid: {chosen.get('label', chosen.get('interval'))} ({which}) -> {res['restored_to']}"
        )
    return 0


def register(sub: Any) -> None:
    """Add ``sweep`` to ``sub`` (an argparse subparsers object)."""
    w = add_command(
        sub,
        "sweep",
        _cmd_sweep,
        "score every restored interval [s, e) (and soups) on the CRC proxy and choose one",
        "Loads base and post once, scores both and every contiguous interval [start, end) of "
        "base layers restored into the post model (in memory; --alphas blends them instead, "
        "--parts restores only attention/MLP/norms, --method soup|both adds whole-model soups) "
        "by CRC validity V, format V_end (the reply still ends) and diversity H. Selects the "
        "most diverse with V >= 0.9 V_post (--rule paper) and also V_end >= 0.9 V_end_post "
        "(--rule format, the default), optionally validates the best candidates by generating "
        "(--validate K), and writes results.json/csv, heatmaps and a Pareto plot.",
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
        choices=PROXIES,
        default="crc",
        help="score by CRC (default) or by perplexity on --data",
    )
    add_ppl_args(w, "--data", "none: --proxy ppl needs one")
    w.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        help="prompts (crc, default 64) or rows (ppl, default 4) per forward pass; memory "
        "holds one batch however many prompts there are",
    )
    w.add_argument(
        "--method",
        choices=METHODS,
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
        "--alphas",
        metavar="A,...",
        help="interval soups: blend the layers of every interval at these base weights, e.g. "
        "0.25,0.5,0.75,1 (1 = restore them: SLR; default 1)",
    )
    w.add_argument(
        "--rule",
        choices=RULES,
        help="paper: max diversity with V >= 0.9 V_post; format: also V_end >= 0.9 V_end_post, "
        "the reply still ends (default: format where the model has end markers)",
    )
    w.add_argument(
        "--v-end",
        choices=V_END_MODES,
        default="strict",
        help="V_end, the format score: the character then an end marker (strict), also after "
        "one closing '.', '!' or newline (closers), or not computed (off)",
    )
    w.add_argument(
        "--validity-ratio",
        type=finite_float(min=0, example="0.9"),
        help="--proxy crc: keep intervals with V >= ratio x V_post (default 0.9)",
    )
    w.add_argument(
        "--end-ratio",
        type=finite_float(min=0, example="0.9"),
        help="--rule format: keep intervals with V_end >= ratio x V_end_post (default 0.9)",
    )
    w.add_argument(
        "--validate",
        type=positive_int,
        metavar="K",
        help="generate from the K most diverse eligible candidates of each family on a "
        "held-out chat set and choose the most diverse that keeps finished_rate and valid "
        "rate >= 0.9 x the post model's (--restore-best writes it)",
    )
    w.add_argument(
        "--validate-samples",
        type=positive_int,
        metavar="N",
        help="with --validate: replies per prompt of the validation set (default 4)",
    )
    w.add_argument(
        "--search",
        choices=SEARCHES,
        default="exhaustive",
        help="exhaustive (default): every candidate on every prompt; halving: every candidate "
        "on a seeded quarter of the prompts first, then only those that can still win (paired "
        "bootstrap bounds) on the rest",
    )
    w.add_argument(
        "--packing",
        choices=PACKINGS,
        default="shared",
        help="how CRC prompts fill a forward pass: token trees whose shared prefixes are "
        "computed once (shared, default), several prompts per row (unshared), or one padded "
        "row per prompt (padded, the plain batch: for comparison); the scores are the same",
    )
    w.add_argument(
        "--no-prefix-reuse",
        action="store_true",
        help="run every hybrid from the embeddings (slower; for checking)",
    )
    w.add_argument(
        "--restore-best",
        metavar="DIR",
        help="also write the chosen hybrid to DIR: the validated choice with --validate, else "
        "the rule's most diverse over the families swept; exit 1 with a warning if none",
    )
    add_quiet_arg(w)
    add_placement_args(w)
    add_ray_args(w)
