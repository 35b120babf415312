"""``inspect`` and ``toy``: looking at checkpoints and the bundled toy pair."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.commands.common import print_json


def _cmd_inspect(args: argparse.Namespace) -> int:
    from layergraft.inspect import format_inspect, inspect_model

    info = inspect_model(args.model, allow_pickle=args.allow_pickle)
    if args.json:
        print_json(info)
    else:
        print(format_inspect(info))
    return 0


def _cmd_toy_path(args: argparse.Namespace) -> int:
    from layergraft.toy import toy_paths

    base, post = toy_paths()
    print(base)
    print(post)
    return 0


def _cmd_toy_build(args: argparse.Namespace) -> int:
    from layergraft.toy import build_pair

    result = build_pair(args.out, seed=args.seed, progress=not args.quiet)
    print_json(result)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from layergraft.verify import verify_model_dir

    rep = verify_model_dir(args.dir, load=not args.no_load)
    if args.json:
        print_json(rep)
    else:
        for f in rep["files"]:
            print(f"{f['name']}: {f['sha256']}")
        if rep["loads"] is not None:
            print(f"loads and runs: {'yes' if rep['loads'] else 'no'}")
        for p in rep["problems"]:
            print(f"PROBLEM: {p}")
        print("OK" if rep["ok"] else "FAILED")
    return 0 if rep["ok"] else 1


def register(sub: Any) -> None:
    s = sub.add_parser(
        "inspect", help="describe a checkpoint: family, layers, sizes, shards, chat template"
    )
    s.add_argument("model", metavar="MODEL", help="model directory, .gguf file or hub id")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickle-only (.bin) checkpoints (runs code from the file)",
    )
    s.set_defaults(func=_cmd_inspect)

    t = sub.add_parser("toy", help="the bundled toy base/post-trained pair")
    tsub = t.add_subparsers(dest="toy_command", metavar="ACTION", parser_class=type(t))
    tsub.required = True
    tp = tsub.add_parser("path", help="print the shipped pair's directories (base, then post)")
    tp.set_defaults(func=_cmd_toy_path)
    tb = tsub.add_parser(
        "build", help="rebuild the toy pair from scratch (15-25 minutes on 2 cores)"
    )
    tb.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (gets base/ and post/)"
    )
    tb.add_argument("--seed", type=int, default=0, help="random seed (default 0: the shipped pair)")
    tb.add_argument("--quiet", action="store_true", help="no progress bars")
    tb.set_defaults(func=_cmd_toy_build)

    v = sub.add_parser(
        "verify",
        help="recheck an output directory: weight sha256 against layergraft.json, then load it",
    )
    v.add_argument("dir", metavar="DIR", help="a model directory written by layergraft")
    v.add_argument(
        "--no-load", action="store_true", help="only check the files, do not load the model"
    )
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=_cmd_verify)
