"""``layergraft demo``: the main job, end to end on the bundled toy pair."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_demo(args: argparse.Namespace) -> int:
    from layergraft.demo import run_demo

    res = run_demo(args.out, quick=args.quick, force=args.force, progress=not args.quiet)
    sel = res["sweep"].get("selected")
    print(f"\nselected interval: {sel['interval'] if sel else 'none'}")
    print(f"report: {args.out}/report.html (and report.md, results.json)")
    return 0


def register(sub: Any) -> None:
    d = sub.add_parser(
        "demo",
        help="run everything on the bundled toy pair and write a report (about 10 minutes; --quick: 2)",
        description="Inspect the toy base/post pair, sweep every restored interval on the CRC proxy, select and "
        "restore one, compare base/post/SLR/soup generations, prune the base with every recovery method, and "
        "write report.md, report.html and results.json.",
    )
    d.add_argument(
        "--out", default="demo-out", metavar="DIR", help="output directory (default demo-out)"
    )
    d.add_argument(
        "--quick", action="store_true", help="fewer prompts and samples (about 2 minutes)"
    )
    d.add_argument("--force", action="store_true", help="replace DIR if it exists")
    d.add_argument("--quiet", action="store_true", help="no progress output")
    d.set_defaults(func=_cmd_demo)
