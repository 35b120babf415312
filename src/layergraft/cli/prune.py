"""Pruning commands: ``scores``, ``prune``, ``compare-recovery`` (``ppl`` and ``lm-eval``
measure any model: :mod:`layergraft.cli.gen`)."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.cli.options import (
    add_calib_args,
    add_command,
    add_json_arg,
    add_output_args,
    add_placement_args,
    add_ppl_args,
    add_quiet_arg,
    add_renamed,
    finite_float,
    placement_kwargs,
    positive_int,
    print_json,
)
from layergraft.cli.parser import refuse_unused
from layergraft.errors import LayergraftError


def _add_removal_args(s: argparse.ArgumentParser) -> None:
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--remove",
        metavar="RANGES",
        help="layers to remove: a block 3:5 (0-based, end excluded), scattered 3,7,9, or mixed",
    )
    g.add_argument(
        "--auto",
        type=positive_int,
        metavar="N",
        help="remove N layers chosen by --metric (bi: N lowest layers; angular/cosine/residual/loss: "
        "best block of N; residual-greedy/loss-greedy: N layers one at a time, each scored on the model pruned so far)",
    )
    s.add_argument(
        "--metric",
        choices=("angular", "bi", "cosine", "residual", "residual-greedy", "loss", "loss-greedy"),
        help="how --auto chooses (default angular: the best block, Gromov et al.; residual: the "
        "block whose ghost fit leaves the smallest normalised residual, same --damp; loss: the block "
        "whose removal and ghost repair leave the lowest loss on the first 8 calibration rows); only with --auto",
    )
    _add_residual_args(s)
    _add_damp_args(s, "the ghost and replaceme fits' (and the residual metrics')")
    s.add_argument("--bias", action="store_true", help="fit a bias with the ghost operator")
    s.add_argument(
        "--sequential",
        action="store_true",
        help="refit each gap's operator on the already-pruned model (scattered pruning)",
    )


def _add_damp_args(s: argparse.ArgumentParser, whose: str) -> None:
    g = s.add_mutually_exclusive_group()
    g.add_argument(
        "--damp",
        type=finite_float(min=0, example="1e-4"),
        help=f"{whose} ridge, relative: λ = DAMP·trace(XᵀX)/d, the same regularisation at every "
        "model size (default 1e-4)",
    )
    g.add_argument(
        "--damp-abs",
        type=finite_float(min=0, example="1e-6"),
        metavar="LAMBDA",
        help=f"{whose} ridge as an absolute λ added to XᵀX instead; 1e-6 is the Ghosted Layers "
        "paper's and official code's",
    )


def _add_residual_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--normalise",
        choices=("delta", "token"),
        help="residual metrics: divide the repair's error by the block's change ‖Δ‖² (delta, "
        "default) or each token's error by that token's stream after the block and average (token: "
        "twice the memory; one token with a massive activation cannot outweigh the rest)",
    )
    s.add_argument(
        "--max-boundaries",
        type=positive_int,
        metavar="K",
        help="residual metrics: statistics of at most K candidate boundaries per calibration pass. "
        "Each holds 2 d×d float64 matrices, so a pass needs 16·K·d² bytes (d = 576: 5 MiB per "
        "boundary; d = 8192: 1 GiB); default all candidates in one pass, refused if that needs more "
        "than 80%% of the available memory",
    )


def _add_gen_check(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--gen-check",
        type=positive_int,
        metavar="N",
        help="with --compare: greedy chat replies (at most 64 tokens) of every model to the first N "
        "bundled QA prompts; prints finished_rate and valid_rate beside PPL (needs a chat template)",
    )


RESIDUAL_ONLY = ("--damp", "--damp-abs", "--normalise", "--max-boundaries")
#: recovery methods with a ridge (``--damp``/``--damp-abs`` act on their fit)
DAMPED = ("ghost", "replaceme")
#: the metrics that fit a ghost per candidate (--damp, --max-boundaries) without --normalise
LOSS_METRICS = ("loss", "loss-greedy")


def _refuse_unused_scores(args: argparse.Namespace) -> None:
    """``scores``: the ghost fit's flags act only with ``--metric residual`` (``loss``: all
    but ``--normalise``)."""
    if args.metric == "loss":
        refuse_unused(args, RESIDUAL_ONLY[2:3], mode="--metric loss", applies="--metric residual", fix="use --metric residual")  # fmt: skip
    mode = None if args.metric in ("residual", "loss") else f"--metric {args.metric}"
    refuse_unused(args, RESIDUAL_ONLY, mode=mode, applies="--metric residual or loss", fix="add --metric residual or loss")  # fmt: skip
    args.normalise = args.normalise or "delta"


def _refuse_unused_removal(args: argparse.Namespace) -> None:
    """``prune``/``compare-recovery``: ``--metric`` chooses the layers of ``--auto`` (nothing to
    choose with ``--remove``); ``--normalise``/``--max-boundaries`` shape only a residual choice."""
    if args.remove is not None and args.metric is not None:
        raise LayergraftError(
            f"--metric {args.metric} chooses the layers of --auto N, and --remove {args.remove} "
            "names them itself; remove --metric (or replace --remove with --auto N)"
        )
    metric = args.metric or "angular"
    if args.auto is not None and metric in LOSS_METRICS:
        refuse_unused(args, RESIDUAL_ONLY[2:3], mode=f"--metric {metric}", fix="use --metric residual",
                      applies="--auto N with --metric residual or residual-greedy")  # fmt: skip
    mode = (f"--remove {args.remove}" if args.auto is None
            else None if metric in ("residual", "residual-greedy", *LOSS_METRICS) else f"--metric {metric}")  # fmt: skip
    refuse_unused(args, RESIDUAL_ONLY[2:], mode=mode, fix="choose the layers with --auto N --metric residual",
                  applies="--auto N with --metric residual, residual-greedy, loss or loss-greedy")  # fmt: skip
    recover = getattr(args, "recover", None)
    if (
        not getattr(args, "compare", False)
        and (recover or "ghost") not in DAMPED
        and mode is not None
    ):
        refuse_unused(args, RESIDUAL_ONLY[:2], mode=f"--recover {recover}", fix="use --recover ghost or replaceme",
                      applies="the ghost and replaceme fits and the selection metrics that fit one")  # fmt: skip
    args.metric, args.normalise = metric, args.normalise or "delta"


def _removal_kwargs(args: argparse.Namespace, calib: Any) -> dict[str, Any]:
    """What ``prune`` and ``compare-recovery`` take alike: the removal, calibration, fit and
    placement options."""
    names = ("remove", "auto", "metric", "calib_tokens", "seqlen", "batch_size", "damp", "damp_abs", "bias",
             "sequential", "max_boundaries", "normalise")  # fmt: skip
    return {**{k: getattr(args, k) for k in names}, "calib": calib, **placement_kwargs(args)}


def _data(args: argparse.Namespace, name: str, default: Any) -> Any:
    v = getattr(args, name, None)
    return v if v is not None else default


def _cmd_scores(args: argparse.Namespace) -> int:
    from layergraft.prune.scores import scores
    from layergraft.text import DEFAULT_CALIB

    _refuse_unused_scores(args)

    res = scores(
        args.model,
        _data(args, "data", DEFAULT_CALIB),
        block=args.block,
        metric=args.metric,
        tokens=args.tokens,
        n_tokens=args.calib_tokens,
        seqlen=args.seqlen,
        batch_size=args.batch_size,
        damp=args.damp,
        damp_abs=args.damp_abs,
        max_boundaries=args.max_boundaries,
        normalise=args.normalise,
        plot=args.plot,
        **placement_kwargs(args),
    )
    if args.json:
        print_json(res)
        return 0
    way = "lower" if res["removable"] == "lowest" else "higher"
    print(
        f"{res['metric']} scores, blocks of {res['block']} ({way} = more removable), {res['n_tokens']} tokens ({res['tokens']})"
    )
    print(f"{'block':>8}  {'score':>10}")
    for row in res["blocks"]:
        mark = "  <- best" if row["range"] == res["best"] else ""
        print(f"{row['range']:>8}  {row['score']:10.5f}{mark}")
    print(f"best block to remove: {res['best']} (0-based, end excluded)")
    if res.get("plot"):
        print(f"plot: {res['plot']}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from layergraft.checkpoint.provenance import command_line
    from layergraft.prune.compare import compare_recovery
    from layergraft.prune.pipeline import prune
    from layergraft.text import DEFAULT_CALIB, DEFAULT_HELDOUT

    _refuse_unused_removal(args)
    calib = _data(args, "calib", DEFAULT_CALIB)
    if args.compare:
        given = [f for f, v in (("--recover", args.recover), ("--out", args.out),
                                ("--force", args.force or None)) if v is not None]  # fmt: skip
        if given:
            raise LayergraftError(
                f"--compare fits every recovery method and writes no model; remove {', '.join(given)} "
                "(or remove --compare to write one model)"
            )
        return _print_compare(
            compare_recovery(
                args.model,
                data=_data(args, "heldout", DEFAULT_HELDOUT),
                ppl_seqlen=args.ppl_seqlen,
                ppl_max_tokens=args.ppl_tokens,
                gen_check=args.gen_check,
                tasks=args.tasks,
                limit=args.limit,
                progress=not getattr(args, "quiet", False),
                **_removal_kwargs(args, calib),
            ),
            args.json,
        )
    if args.out is None:
        raise LayergraftError("--out DIR is required (or pass --compare to only compare methods)")
    if args.gen_check is not None:
        raise LayergraftError(
            "--gen-check checks the models of --compare; add --compare or remove --gen-check"
        )
    prov = prune(
        args.model,
        args.out,
        recover=args.recover or "ghost",
        force=args.force,
        max_shard_bytes=args.max_shard_size,
        hash_inputs=args.hash_inputs,
        hash_outputs=not args.no_hash,
        fsync=args.fsync,
        allow_pickle=args.allow_pickle,
        progress=not args.quiet,
        command=command_line(),
        **_removal_kwargs(args, calib),
    )
    if args.json:
        print_json(prov)
        return 0
    d = prov["details"]
    how = (
        "layergraft.load_model or trust_remote_code=True"
        if d["needs_remote_code"]
        else "plain transformers"
    )
    print(
        f"wrote {args.out}: removed {d['removed']} ({d['num_layers']['before']} -> {d['num_layers']['after']} layers), "
        f"recovery {d['recover']} ({d['fit']} fit, {d['calibration']['tokens']} calibration tokens); loads with {how}"
    )
    return 0


def _print_compare(res: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print_json(res)
        return 0
    print(
        f"removed {res['removed']} ({res['fit']} fit), calibration {res['calibration']['tokens']} tokens, held-out {res['heldout']['tokens']} tokens"
    )
    tasks = sorted({t for r in res["rows"] for t in r.get("lm_eval", {})})
    gc = res["rows"][0].get("gen_check")
    gen = ["finished_rate", "valid_rate", "empty_rate"] if gc else []
    width = {t: max(len(t), 8) for t in [*tasks, *gen]}
    print(
        f"{'method':<10} {'params':>12} {'PPL':>10}"
        + "".join(f" {t:>{width[t]}}" for t in [*tasks, *gen])
    )
    for r in res["rows"]:
        acc = ""
        for t in tasks:
            v = r.get("lm_eval", {}).get(t)
            acc += f" {v:{width[t]}.4f}" if v is not None else f" {'-':>{width[t]}}"
        acc += "".join(f" {r['gen_check'][k]:{width[k]}.3f}" for k in gen)
        print(f"{r['method']:<10} {r['params']:>12,} {r['ppl']:10.3f}{acc}")
    print(f"PPL: {res['ppl_definition']}")
    if gc:
        print(f"generation check: {gc['prompts']} QA prompts, {gc['decoding']}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    args.compare = True
    return _cmd_prune(args)


def register(sub: Any) -> None:
    """Add this area's subcommands to ``sub`` (an argparse subparsers object)."""
    s = add_command(
        sub,
        "scores",
        _cmd_scores,
        "score contiguous blocks of layers by how little they change the residual stream",
        "Importance scores of every block of --block layers: angular distance (Gromov et al.), "
        "block influence (ShortGPT; per layer, summed over the block) or cosine (LLM-Streamline). "
        "Ranges are 0-based, end excluded.",
    )
    s.add_argument("model", help="model directory, .gguf file or hub id")
    add_calib_args(s, "--data")
    add_renamed(s, "--max-tokens", "--calib-tokens", "calib_tokens", positive_int)
    s.add_argument(
        "--block", type=positive_int, default=1, metavar="N", help="block size (default 1)"
    )
    s.add_argument(
        "--metric",
        choices=("angular", "bi", "cosine", "residual", "loss"),
        default="angular",
        help="residual: the normalised residual ‖X_s M − Δ‖²/‖Δ‖² of the ghost fit of each block (lowest = most repairable); "
        "loss: the next-token loss, on the first 8 calibration rows, of the model with the block removed and ghost-repaired",
    )
    s.add_argument(
        "--tokens",
        choices=("all", "last"),
        help="samples: each row's last token or every real token (default: last for angular, "
        "as Gromov et al.; all for bi, cosine and residual)",
    )
    _add_damp_args(s, "residual, loss: the ghost fit's")
    _add_residual_args(s)
    s.add_argument("--plot", metavar="PNG", help="write a plot of the scores")
    add_json_arg(s)
    add_placement_args(s)

    p = add_command(
        sub,
        "prune",
        _cmd_prune,
        "remove decoder layers and repair the gap with a closed-form linear operator",
        "Remove decoder layers (0-based, end excluded ranges) and repair the residual stream "
        "at each gap: ghost (default; a d×d map fitted in float64), replaceme (folded into the MLP before the "
        "gap), rotate (LinearPatch-R), diag (LinearPatch-D), scale (folded into weights) or none.",
    )
    p.add_argument("model", help="model directory, .gguf file or hub id")
    _add_removal_args(p)
    p.add_argument(
        "--recover",
        choices=("ghost", "replaceme", "rotate", "diag", "scale", "none"),
        help="recovery operator (default ghost); rotate and diag are LinearPatch-R and -D",
    )
    add_calib_args(p)
    p.add_argument(
        "--compare",
        action="store_true",
        help="instead of writing a model, run every recovery method and print params / PPL (/ lm-eval)",
    )
    add_ppl_args(p, "--heldout", "bundled held-out text; with --compare")
    p.add_argument("--tasks", help="lm-eval tasks for --compare (comma-separated)")
    p.add_argument(
        "--limit",
        type=finite_float(min=0, inclusive=(False, True), example="100"),
        help="lm-eval items per task for --compare",
    )
    _add_gen_check(p)
    add_json_arg(p)
    add_output_args(p)
    add_placement_args(p)
    for a in p._actions:  # --out is optional with --compare
        if a.dest == "out":
            a.required = False

    c = add_command(
        sub,
        "compare-recovery",
        _cmd_compare,
        "run every recovery method on one removal and print params / PPL (/ lm-eval)",
    )
    c.add_argument("model", help="model directory, .gguf file or hub id")
    _add_removal_args(c)
    add_calib_args(c)
    add_ppl_args(c, "--heldout", "bundled held-out text")
    c.add_argument("--tasks", help="lm-eval tasks (comma-separated)")
    c.add_argument(
        "--limit",
        type=finite_float(min=0, inclusive=(False, True), example="100"),
        help="lm-eval items per task",
    )
    _add_gen_check(c)
    add_json_arg(c)
    add_quiet_arg(c)
    add_placement_args(c)
    c.set_defaults(out=None, recover=None, force=False)
