"""Sampling throughput: batched vs one prompt at a time (tokens/s), in one run.

Why: batching is the whole point of the engine's left padding; on a small model each decoding
step is dominated by per-call overhead, so B rows per step should give close to B times the
tokens per second. Goal: >= 4x at batch 16.

Uses the shipped toy post model when present (layergraft.toy.toy_paths), else a tiny random
Llama with the toy tokenizer. Same prompts, same settings (paper defaults: T=1.0, min-p 0.1),
same seed for both runs.

    python benchmarks/bench_generate.py [--prompts 16] [--n 2] [--max-new-tokens 48] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _model_and_tokenizer():
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from layergraft.toy import toy_paths

        _, post = toy_paths()
        return (
            "toy post",
            AutoModelForCausalLM.from_pretrained(post).eval(),
            AutoTokenizer.from_pretrained(post),
        )
    except Exception as exc:  # toy missing: a tiny random Llama instead
        print(f"(toy pair unavailable: {exc}; using a tiny random llama)", file=sys.stderr)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from layergraft.toy.tokenizer import build_tokenizer
        from tiny import make_tiny

        return "tiny random llama", make_tiny("llama", num_layers=4, seed=0), build_tokenizer()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=2, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a tiny model intra-op threads only add sync cost, "
        "and on a shared machine they wait for each other)",
    )
    args = ap.parse_args()

    import torch

    from layergraft.gen.engine import run_generation
    from layergraft.gen.sampling import SamplingSettings
    from layergraft.gen.tasks import load_task

    torch.set_num_threads(args.threads)
    name, model, tok = _model_and_tokenizer()
    prompts = [p for t in ("creative", "qa", "reasoning") for p in load_task(t)][: args.prompts]
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, seed=0)
    # warm-up (allocator, kernels)
    run_generation(model, tok, prompts[:2], n=1, settings=settings, batch_size=2, progress=False)
    rows = []
    for bs in (1, args.batch):
        t0 = time.perf_counter()
        recs = run_generation(
            model, tok, prompts, n=args.n, settings=settings, batch_size=bs, progress=False
        )
        dt = time.perf_counter() - t0
        toks = sum(r["num_tokens"] for r in recs)
        rows.append((bs, len(recs), toks, dt, toks / dt))
    print(f"model: {name}; {len(prompts)} prompts x {args.n} samples, max {args.max_new_tokens} new tokens, "
          f"{args.threads} threads")  # fmt: skip
    print(f"{'batch':>5} {'gens':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for bs, g, toks, dt, tps in rows:
        print(f"{bs:>5} {g:>5} {toks:>7} {dt:>8.2f} {tps:>9.1f}")
    print(f"speed-up batch {args.batch} vs 1: {rows[1][4] / rows[0][4]:.1f}x (goal >= 4x)")


if __name__ == "__main__":
    main()
