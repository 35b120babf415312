"""Generation and evaluation commands: ``generate``, ``diversity``, ``compare``, ``ppl``,
``lm-eval`` (the last two measure any model, pruned or not: they lived with the pruning
commands until those outgrew one module)."""

from __future__ import annotations

import argparse
from typing import Any

from layergraft.cli.options import (
    add_command,
    add_json_arg,
    add_placement_args,
    add_ppl_args,
    add_quiet_arg,
    add_ray_args,
    add_renamed,
    finite_float,
    placement_kwargs,
    positive_int,
    print_json,
    ray_kwargs,
)
from layergraft.cli.parser import named_paths


def _add_decoding(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("decoding (defaults: the SLR paper's)")
    g.add_argument(
        "--temperature",
        type=finite_float(min=0, example="0.7"),
        default=1.0,
        help="0 = greedy (default 1.0)",
    )
    g.add_argument(
        "--top-p",
        type=finite_float(min=0, max=1, inclusive=(False, True), example="0.9"),
        default=1.0,
        help="nucleus mass, in (0, 1] (default 1.0 = off)",
    )
    g.add_argument(
        "--min-p",
        type=finite_float(min=0, max=1, inclusive=(True, False), example="0.1"),
        default=0.1,
        help="min-p threshold, in [0, 1) (default 0.1)",
    )
    g.add_argument(
        "--max-new-tokens", type=positive_int, default=256, metavar="N", help="default 256"
    )
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--batch-size", type=positive_int, default=16, metavar="B", help="default 16")
    g.add_argument(
        "--backend",
        choices=("auto", "transformers", "vllm"),
        default="auto",
        help="auto: vLLM when installed and a GPU is present, else transformers",
    )
    g.add_argument(
        "--no-chat-template",
        dest="chat_template",
        action="store_false",
        help="feed the raw prompt (default: the tokenizer's chat template)",
    )


def _add_task(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--task",
        required=True,
        metavar="TASK",
        help="creative | qa | reasoning (bundled sets) or a JSONL prompt file (GSM8K lines work)",
    )
    s.add_argument(
        "--subset",
        choices=("all", "greedy-failed"),
        default="all",
        help="greedy-failed: only reasoning prompts the (post) model gets wrong greedily",
    )
    s.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N prompts")
    s.add_argument("--n", type=positive_int, default=32, help="samples per prompt (default 32)")
    add_quiet_arg(s)


def _add_scoring(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--embedder",
        default="default",
        metavar="DIR",
        help="local sentence-transformers model dir for embedding metrics "
        "(default: packaged all-MiniLM-L6-v2; 'none' skips them)",
    )
    s.add_argument(
        "--judge",
        metavar="DIR",
        help="local HF reward or chat model scoring each reply (off by default; slow)",
    )
    s.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="R",
        help="bootstrap resamples (default 1000)",
    )


def _decoding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        temperature=args.temperature,
        top_p=args.top_p,
        min_p=args.min_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from layergraft.gen.generate import generate

    recs = generate(
        args.model,
        args.task,
        n=args.n,
        out=args.out,
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
        backend=args.backend,
        subset=args.subset,
        limit=args.limit,
        chat_template=args.chat_template,
        progress=not args.quiet,
        allow_pickle=args.allow_pickle,
        **_decoding_kwargs(args),
        **placement_kwargs(args),
    )
    prompts = len({r["prompt_id"] for r in recs})
    print_json({"out": args.out, "prompts": prompts, "generations": len(recs)})
    return 0


def _print_summary(res: dict[str, Any]) -> None:
    print(f"{res['generations']} generations of {res['prompts']} prompts ({res['model']})")
    width = max((len(k) for k in res["mean"]), default=0)
    for k, v in res["mean"].items():
        ci = res["ci95"].get(k)
        tail = f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        print(f"  {k:<{width}}  {v:.4f}{tail}")


def _cmd_diversity(args: argparse.Namespace) -> int:
    from layergraft.checkpoint.atomic import write_json_atomic
    from layergraft.checkpoint.outputs import check_output
    from layergraft.gen.score import diversity

    reads = [args.gens, args.embedder, args.judge]
    if args.out:  # before the scoring, which loads an embedder and maybe a judge
        check_output(args.out, inputs=reads, flag="--out")
    res = diversity(args.gens, embedder=args.embedder, judge=args.judge, bootstrap=args.bootstrap)
    if args.out:
        write_json_atomic(args.out, res, inputs=reads, flag="--out")
    if args.json:
        print_json(res)
    else:
        _print_summary(res)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from layergraft.gen.compare import compare
    from layergraft.gen.distributed import RayGenerator
    from layergraft.gen.sampling import SamplingSettings
    from layergraft.report.compare import headline_metrics

    ray = ray_kwargs(args)
    models = named_paths(args.models, "--models", "post=./post")
    res = compare(
        models,
        args.task,
        args.out,
        n=args.n,
        settings=SamplingSettings(**_decoding_kwargs(args)),
        baselines=args.baselines,
        baseline_model=args.baseline_model,
        tokenizer=args.tokenizer,
        subset=args.subset,
        limit=args.limit,
        batch_size=args.batch_size,
        backend=args.backend,
        embedder=args.embedder,
        judge=args.judge,
        bootstrap=args.bootstrap,
        chat_template=args.chat_template,
        progress=not args.quiet,
        executor=RayGenerator(**ray) if ray is not None else None,
        **placement_kwargs(args, models=list(models.values())),
    )
    summary = {name: r["mean"] for name, r in res["runs"].items()}
    if args.json:
        print_json(summary)
        return 0
    quality, div = headline_metrics(res)
    cols = list(
        dict.fromkeys([quality, "format_validity", "finished_rate", div, "vendi", "self_bleu"])
    )
    width = max(len(n) for n in summary)
    print(f"{'run':<{width}}  " + "  ".join(f"{c:>19}" for c in cols))
    for name, mean in summary.items():
        cells = [f"{mean[c]:>19.4f}" if c in mean else f"{'-':>19}" for c in cols]
        print(f"{name:<{width}}  " + "  ".join(cells))
    files = ", ".join(["results.json", "report.md", *res.get("plots", [])])
    print(f"wrote {args.out}: {files}")
    return 0


def _cmd_ppl(args: argparse.Namespace) -> int:
    from layergraft.evaluate.perplexity import ppl
    from layergraft.text import DEFAULT_HELDOUT

    res = ppl(
        args.model,
        DEFAULT_HELDOUT if args.data is None else args.data,
        seqlen=args.ppl_seqlen,
        stride=args.stride,
        max_tokens=args.ppl_tokens,
        **placement_kwargs(args),
    )
    if args.json:
        print_json(res)
        return 0
    print(
        f"PPL {res['ppl']:.4f} ({res['tokens_scored']} tokens scored in {res['windows']} windows)"
    )
    print(f"definition: {res['definition']}")
    return 0


def _cmd_lm_eval(args: argparse.Namespace) -> int:
    from layergraft.evaluate.harness import lm_eval

    res = lm_eval(
        args.model,
        args.tasks,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        **placement_kwargs(args),
    )
    if args.json:
        print_json(res)
        return 0
    print(f"{'task':<24} {'metric':<10} {'value':>8}")
    for task, metrics in res["results"].items():
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                print(f"{task:<24} {k:<10} {v:8.4f}")
    return 0


def register(sub: Any) -> None:
    """Add this area's subcommands to ``sub`` (an argparse subparsers object)."""
    s = add_command(
        sub,
        "generate",
        _cmd_generate,
        "sample k replies per prompt into a resumable JSONL file",
        "Sample --n replies per prompt (chat template applied) into --out, one JSON "
        "line per generation. An existing --out is resumed: finished (prompt, sample) pairs are "
        "kept, a truncated last line is dropped. Same seed and settings -> same samples.",
    )
    s.add_argument("model", metavar="MODEL", help="model directory, .gguf file or hub id")
    _add_task(s)
    s.add_argument("--out", required=True, metavar="FILE", help="generations JSONL (resumed)")
    s.add_argument("--tokenizer", metavar="DIR", help="tokenizer dir (default: the model's)")
    s.add_argument("--allow-pickle", action="store_true", help="accept .bin pickle checkpoints")
    _add_decoding(s)
    add_placement_args(s)

    d = add_command(
        sub,
        "diversity",
        _cmd_diversity,
        "diversity and quality metrics of a generations file",
        "Per prompt, then averaged over prompts (with bootstrap 95%% CIs): distinct-n, "
        "self-BLEU, embedding diversity, Vendi score, distinct answers; QA validity, reasoning "
        "accuracy and pass@k, format validity; an optional judge.",
    )
    d.add_argument("gens", metavar="GENS", help="JSONL written by layergraft generate")
    add_json_arg(d, "print everything as JSON")
    d.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")
    _add_scoring(d)

    c = add_command(
        sub,
        "compare",
        _cmd_compare,
        "generate, score and report several models side by side",
        "Generate (or reuse DIR/gens/*.jsonl) for every model plus decoding baselines "
        "of the post model (temperature 1.5; no min-p), score them, and write DIR/results.json, "
        "DIR/report.md and PNG plots.",
    )
    c.add_argument(
        "--models", nargs="+", required=True, metavar="NAME=PATH", help="e.g. post=P base=B slr=H"
    )
    _add_task(c)
    c.add_argument("--out", required=True, metavar="DIR", help="output directory (reused)")
    c.add_argument(
        "--tokenizer", metavar="DIR", help="tokenizer for models without a chat template"
    )
    c.add_argument(
        "--baseline-model", default="post", metavar="NAME", help="whose decoding baselines (post)"
    )
    c.add_argument(
        "--no-baselines", dest="baselines", action="store_false", help="skip decoding baselines"
    )
    add_json_arg(c, "print the summary as JSON")
    _add_decoding(c)
    _add_scoring(c)
    add_placement_args(c)
    add_ray_args(c)

    q = add_command(
        sub,
        "ppl",
        _cmd_ppl,
        "token-level perplexity over fixed-length chunks (the pruning papers' definition)",
    )
    q.add_argument("model", help="model directory (ghosted outputs too), .gguf file or hub id")
    add_ppl_args(q, "--data", "bundled held-out text")
    q.add_argument(
        "--stride",
        type=int,
        help="sliding windows every STRIDE tokens (default: non-overlapping chunks)",
    )
    add_renamed(q, "--seqlen", "--ppl-seqlen", "ppl_seqlen", positive_int)
    add_renamed(q, "--max-tokens", "--ppl-tokens", "ppl_tokens", positive_int)
    add_json_arg(q)
    add_placement_args(q)

    e = add_command(
        sub,
        "lm-eval",
        _cmd_lm_eval,
        "run lm-evaluation-harness on the model in memory (bundled offline tasks included)",
    )
    e.add_argument("model", help="model directory (ghosted outputs too), .gguf file or hub id")
    e.add_argument(
        "--tasks", required=True, help="comma-separated task names, e.g. layergraft_cloze"
    )
    e.add_argument(
        "--limit",
        type=finite_float(min=0, inclusive=(False, True), example="100"),
        help="items per task (int) or fraction",
    )
    e.add_argument("--num-fewshot", type=int)
    e.add_argument("--batch-size", type=positive_int, default=8)
    add_json_arg(e)
    add_placement_args(e)
