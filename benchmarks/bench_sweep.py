"""Sweep engines side by side on the same pair, prompts and intervals.

* prefix reuse (default engine): post layer inputs recorded once, base chain grown per start
* no prefix reuse: every hybrid made by the in-memory swap and run from the embeddings
* disk round trip: every hybrid written with `restore`, reloaded with from_pretrained, scored

Prints wall times and the ratios (goals: disk / reuse >= 20x, no-reuse / reuse >= 1.8x), and
checks that the three engines agree on every interval's V and H.

    python benchmarks/bench_sweep.py [--base B --post P] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base")
    ap.add_argument("--post")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch

    from layergraft.api import restore
    from layergraft.arch import adapter_for_model
    from layergraft.models.load import load_model, load_with_tokenizer
    from layergraft.slr import crc as crcmod
    from layergraft.slr.engines import (
        enumerate_intervals,
        sweep_intervals_fast,
        sweep_intervals_swap,
    )
    from layergraft.toy import toy_paths

    torch.set_num_threads(2)
    base, post = (args.base, args.post) if args.base else toy_paths()
    mp, tok, _ = load_with_tokenizer(post, device="cpu")
    mb = load_model(base, device="cpu")
    ad = adapter_for_model(mp)
    items = crcmod.load_crc_prompts("all")
    batch = crcmod.prepare_batch(tok, items)
    intervals = enumerate_intervals(ad.num_layers)

    def fast():
        return sweep_intervals_fast(
            mp, mb, ad, batch, lambda lg: crcmod.score_logits(batch, lg), intervals
        )

    def swap():
        return sweep_intervals_swap(
            mp,
            mb,
            lambda m: crcmod.score_logits(batch, crcmod.forward_last_logits(m, batch)),
            intervals,
            adapter=ad,
        )

    def disk():
        out = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (s, e) in enumerate(intervals):
                d = Path(tmp) / f"h{i}"
                restore(base, post, f"{s}:{e}", d, progress=False)
                m = load_model(d, device="cpu")
                out[(s, e)] = crcmod.score_logits(batch, crcmod.forward_last_logits(m, batch))
        return out

    times: dict[str, list[float]] = {
        "prefix reuse": [],
        "no prefix reuse": [],
        "disk round trip": [],
    }
    results = {}
    for _ in range(args.repeat):
        for name, fn in (
            ("prefix reuse", fast),
            ("no prefix reuse", swap),
            ("disk round trip", disk),
        ):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    worst = max(
        abs(results[a][r].mean[k] - results["prefix reuse"][r].mean[k])
        for a in ("no prefix reuse", "disk round trip")
        for r in intervals
        for k in ("V", "H")
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{len(intervals)} intervals x {len(items)} CRC prompts, {ad.num_layers}-layer {ad.family}, median of {args.repeat}"
    )
    for k, v in med.items():
        print(f"{k:<17} {v:7.2f} s")
    print(
        f"disk round trip / prefix reuse = {med['disk round trip'] / med['prefix reuse']:.1f}x  (goal >= 20x)"
    )
    print(
        f"no prefix reuse / prefix reuse = {med['no prefix reuse'] / med['prefix reuse']:.2f}x  (goal >= 1.8x)"
    )
    print(f"largest |difference| in V or H between engines: {worst:.2e}")


if __name__ == "__main__":
    main()
