"""``layergraft demo``: the main job, end to end on the bundled toy pair."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.cli.options import add_command, add_placement_args, add_quiet_arg, placement_kwargs


def _cmd_demo(args: argparse.Namespace) -> int:
    from layergraft.demo import run_demo
    from layergraft.toy import toy_paths

    res = run_demo(
        args.out, quick=args.quick, force=args.force, progress=not args.quiet,
        **placement_kwargs(args, models=toy_paths()),  # a device map is checked on the toy pair
    )  # fmt: skip
    sel = res["sweep"].get("selected")
    print(f"\nselected interval: {sel['interval'] if sel else 'none'}")
    print(f"report: {args.out}/report.html (and report.md, results.json)")
    return 0


def register(sub: Any) -> None:
    d = add_command(
        sub,
        "demo",
        _cmd_demo,
        "run everything on the bundled toy pair and write a report (about two minutes on 2 CPU cores)",
        "Inspect the toy base/post pair, sweep every restored interval on the CRC proxy, select and "
        "restore one, compare base/post/SLR/soup generations, prune the base with every recovery method, and "
        "write report.md, report.html and results.json.",
    )
    d.add_argument(
        "--out", default="demo-out", metavar="DIR", help="output directory (default demo-out)"
    )
    d.add_argument(
        "--quick", action="store_true", help="fewer prompts and samples (the test suite's run)"
    )
    d.add_argument("--force", action="store_true", help="replace DIR if it exists")
    add_quiet_arg(d)
    add_placement_args(d)
