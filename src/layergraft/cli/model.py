"""``inspect``, ``diff``, ``toy`` and ``verify``: looking at checkpoints and the bundled toy pair."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.cli.options import add_command, add_json_arg, add_quiet_arg, print_json


def _cmd_inspect(args: argparse.Namespace) -> int:
    from layergraft.checkpoint.describe import format_inspect, inspect_model

    info = inspect_model(args.model, allow_pickle=args.allow_pickle)
    if args.json:
        print_json(info)
    else:
        print(format_inspect(info))
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from layergraft.checkpoint.outputs import check_output
    from layergraft.report.diff import diff_table
    from layergraft.slr.hybrid.diff import diff

    if args.plot is not None:  # before reading both checkpoints; never over an input
        check_output(args.plot, inputs=[args.base, args.post], flag="--plot")
    res = diff(
        args.base,
        args.post,
        plot=args.plot,
        progress=not args.quiet,
        allow_pickle=args.allow_pickle,
    )
    if args.json:
        print_json(res)
    else:
        print(diff_table(res))
        if res["plot"]:
            print(f"plot: {res['plot']}")
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
    from layergraft.models.verify import verify_model_dir

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
    """Add this area's subcommands to ``sub`` (an argparse subparsers object)."""
    s = add_command(
        sub,
        "inspect",
        _cmd_inspect,
        "describe a checkpoint: family, layers, sizes, shards, chat template",
    )
    s.add_argument("model", metavar="MODEL", help="model directory, .gguf file or hub id")
    add_json_arg(s)
    s.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickle-only (.bin) checkpoints (runs code from the file)",
    )

    d = add_command(
        sub,
        "diff",
        _cmd_diff,
        "how far post-training moved each layer and part (attn, mlp, norms): relative change "
        "and cosine of the weights",
        description="Compare a base/post pair tensor by tensor (streamed, float64): per decoder "
        "layer and part (attn, mlp, norms, all) the relative Frobenius change "
        "||post - base|| / ||base|| and the cosine of the flattened weights, plus embeddings, "
        "final norm and head. A cheap prior for where to restore.",
    )
    d.add_argument(
        "base", metavar="BASE", help="pre-trained base model (directory, .gguf or hub id)"
    )
    d.add_argument("post", metavar="POST", help="post-trained model (directory, .gguf or hub id)")
    add_json_arg(d, "print the results as one JSON object instead of the table")
    d.add_argument(
        "--plot", metavar="PNG", help="write the layers x parts heatmap to this PNG file"
    )
    d.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickle-only (.bin) checkpoints (runs code from the file)",
    )
    add_quiet_arg(d)

    t = sub.add_parser("toy", help="the bundled toy base/post-trained pair")
    tsub = t.add_subparsers(dest="toy_command", metavar="ACTION", parser_class=type(t))
    tsub.required = True
    add_command(
        tsub, "path", _cmd_toy_path, "print the shipped pair's directories (base, then post)"
    )
    tb = add_command(
        tsub,
        "build",
        _cmd_toy_build,
        "rebuild the toy pair from scratch (about 8 minutes on 2 idle cores)",
    )
    tb.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (gets base/ and post/)"
    )
    tb.add_argument("--seed", type=int, default=0, help="random seed (default 0: the shipped pair)")
    add_quiet_arg(tb)

    v = add_command(
        sub,
        "verify",
        _cmd_verify,
        "recheck an output directory: weight sha256 against layergraft.json, then load it",
    )
    v.add_argument("dir", metavar="DIR", help="a model directory written by layergraft")
    v.add_argument(
        "--no-load", action="store_true", help="only check the files, do not load the model"
    )
    add_json_arg(v)
