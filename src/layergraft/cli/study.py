"""``layergraft slr``: the main job, the whole SLR study of a base/post pair in one command."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.cli.options import (
    add_command,
    add_pair_args,
    add_placement_args,
    add_quiet_arg,
    add_ray_args,
    placement_kwargs,
    positive_int,
    ray_kwargs,
)
from layergraft.cli.parser import named_paths
from layergraft.errors import LayergraftError
from layergraft.slr.sweep.config import RULES, SEARCHES


def _budgets(text: str | None) -> dict[str, int] | None:
    """``--max-new-tokens 128`` (every task) or ``qa=64,creative=128`` (per task)."""
    if text is None:
        return None
    from layergraft.gen.tasks import TASK_KINDS

    try:
        if "=" not in text:
            return dict.fromkeys(TASK_KINDS, int(text))
        pairs = [w.split("=", 1) for w in text.split(",") if w.strip()]
        return {k.strip(): int(v) for k, v in pairs}
    except ValueError:
        raise LayergraftError(
            f"--max-new-tokens {text!r}: give a number (every task) or task=N pairs, e.g. "
            "qa=64,creative=128"
        ) from None


def _changes(args: argparse.Namespace, base: Any) -> dict[str, Any]:
    """The flags the user gave, as settings fields (None: the preset's value)."""
    budgets = _budgets(args.max_new_tokens)
    if budgets is not None:
        budgets = {**base.budgets, **budgets}
    return {
        "tasks": tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None,
        "n": args.n, "limit": args.limit, "budgets": budgets, "parts": args.parts,
        "alphas": args.alphas, "rule": args.rule,
        "validate": None if args.validate == 0 else args.validate,  # 0: off, set below
        "validate_samples": args.validate_samples, "search": args.search,
        "crc_prompts": args.crc_prompts,
    }  # fmt: skip


def _cmd_slr(args: argparse.Namespace) -> int:
    from layergraft.study.plan import format_job_plan, plan_slr
    from layergraft.study.selection import console_lines
    from layergraft.study.settings import DEFAULT, QUICK
    from layergraft.study.slr import slr

    if args.base is None or args.post is None:
        raise LayergraftError(
            "--base and --post are required (directories, hub ids or .gguf files)"
        )
    preset = QUICK if args.quick else DEFAULT
    changes = _changes(args, preset)
    if changes["parts"] is not None:
        from layergraft.slr.sweep.config import parse_sweep_parts

        changes["parts"] = parse_sweep_parts(changes["parts"])
    if changes["alphas"] is not None:
        from layergraft.slr.sweep.config import parse_alphas

        changes["alphas"] = parse_alphas(changes["alphas"])
    settings = preset.replace(**changes)  # None leaves a field as the preset has it
    if args.validate == 0:
        import dataclasses

        settings = dataclasses.replace(settings, validate=None)
    placement = placement_kwargs(args, models=[args.base, args.post])
    also = named_paths(args.also, "--also", "sft=work/post-sft")
    if args.dry_run:
        plan = plan_slr(args.base, args.post, args.out, settings, tokenizer=args.tokenizer, also=also,
                        **placement)  # fmt: skip
        print(format_job_plan(plan))
        return 0
    ray = ray_kwargs(args)
    executor = gen_executor = None
    if ray is not None:
        from layergraft.gen.distributed import RayGenerator
        from layergraft.slr.sweep.distributed import RayExecutor

        executor, gen_executor = RayExecutor(**ray), RayGenerator(**ray)
    res = slr(
        args.base, args.post, args.out, settings=settings, tokenizer=args.tokenizer, also=also,
        force=args.force, progress=not args.quiet, executor=executor, gen_executor=gen_executor,
        say=(lambda s: None) if args.quiet else print, threads=None,  # applied by the CLI
        **placement,
    )  # fmt: skip
    print("\n" + "\n".join(console_lines(res["selection"], args.out)))
    return 0


def register(sub: Any) -> None:
    """Add ``slr`` to ``sub`` (an argparse subparsers object)."""
    s = add_command(
        sub,
        "slr",
        _cmd_slr,
        "the main job: the whole SLR study of a base/post pair, resumable, with a report",
        "Check the pair, measure CRC of both models, sweep every interval, interval soup, part "
        "restore and whole-model soup on the CRC proxy (the format rule where the models have end "
        "markers), validate the best candidates by generation, write the chosen hybrid to "
        "DIR/hybrid, compare post, base, the paper rule's pick, the written hybrid, the best soup "
        "and two decoding baselines on three tasks, and write DIR/report.html, report.md and "
        "results.json. Run the same command again after a kill: finished steps are reused, and a "
        "step reruns only when its settings or its inputs' weights changed.",
    )
    add_pair_args(s)
    s.add_argument(
        "--out", required=True, metavar="DIR", help="the job directory (continued when it exists)"
    )
    s.add_argument(
        "--tokenizer", metavar="T", help="tokenizer and chat template (default: the post model's)"
    )
    s.add_argument("--quick", action="store_true",
                   help="the demo's small settings (one task, few prompts and samples): a check that the job runs")  # fmt: skip
    s.add_argument("--dry-run", action="store_true",
                   help="print the plan of every step (units, forwards, estimated time and memory) and stop")  # fmt: skip
    s.add_argument("--force", action="store_true", help="start the job over (empties DIR first)")
    s.add_argument(
        "--also", action="append", default=[], metavar="NAME=DIR",
        help="another model measured on CRC and compared beside base and post, e.g. an SFT-only "
        "stage (repeatable)",
    )  # fmt: skip
    g = s.add_argument_group("generation compared on the tasks")
    g.add_argument(
        "--tasks",
        metavar="LIST",
        help="bundled tasks, e.g. creative,qa,reasoning (default: all three)",
    )
    g.add_argument("--n", type=positive_int, metavar="N", help="samples per prompt (default 8)")
    g.add_argument("--limit", type=positive_int, metavar="K", help="prompts per task (default 10)")
    g.add_argument("--max-new-tokens", metavar="N|T=N,...",
                   help="token budget, one for every task or per task (default creative=128,qa=64,reasoning=160)")  # fmt: skip
    w = s.add_argument_group("sweep and selection")
    w.add_argument(
        "--parts", metavar="LIST", help="families of restored layers (default attn,mlp,all)"
    )
    w.add_argument("--alphas", metavar="LIST", help="interval soup weights (default 0.5,1)")
    w.add_argument(
        "--rule",
        choices=RULES,
        help="selection rule (default: format where the models have end markers)",
    )
    w.add_argument("--validate", type=int, metavar="K",
                   help="candidates per family validated by generation (default 2; 0: none, with a caveat)")  # fmt: skip
    w.add_argument(
        "--validate-samples",
        type=positive_int,
        metavar="S",
        help="samples per validation prompt (default 4)",
    )
    w.add_argument("--search", choices=SEARCHES, help="exhaustive (default) or halving")
    w.add_argument(
        "--crc-prompts",
        type=positive_int,
        metavar="K",
        help="an even subset of K bundled CRC prompts (default: all)",
    )
    add_quiet_arg(s)
    add_placement_args(s)
    add_ray_args(s)
