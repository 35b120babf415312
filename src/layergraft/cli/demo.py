"""``layergraft demo``: the main job, end to end on the bundled toy pair."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.cli.options import add_command, add_placement_args, add_quiet_arg, placement_kwargs


def _cmd_demo(args: argparse.Namespace) -> int:
    from layergraft.demo import run_demo
    from layergraft.toy import toy_paths

    res = run_demo(
        args.out, quick=args.quick, force=args.force, progress=not args.quiet, threads=None,
        **placement_kwargs(args, models=toy_paths()),  # a device map is checked on the toy pair
    )  # fmt: skip
    from layergraft.study.selection import console_lines

    print("\n" + "\n".join(console_lines(res["selection"], args.out)))
    return 0


def register(sub: Any) -> None:
    d = add_command(
        sub,
        "demo",
        _cmd_demo,
        "the main job (layergraft slr) on the bundled toy pair, plus pruning, with a report "
        "(102 s on 2 idle CPU cores, benchmarks/bench_demo.py)",
        "Run layergraft slr on the toy base/post pair (CRC of both, the sweep with validation, the "
        "written hybrid, generations compared on three tasks), prune the base with every recovery "
        "method, and write report.md, report.html and results.json. Running it again reuses "
        "finished steps; --force starts over.",
    )
    d.add_argument(
        "--out", default="demo-out", metavar="DIR", help="output directory (default demo-out)"
    )
    d.add_argument(
        "--quick", action="store_true", help="fewer prompts and samples (the test suite's run)"
    )
    d.add_argument("--force", action="store_true", help="start over: empty DIR first")
    add_quiet_arg(d)
    add_placement_args(d)
