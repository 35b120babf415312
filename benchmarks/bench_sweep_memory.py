"""Peak memory of a sweep does not grow with the number of prompts beyond one batch.

Runs ``layergraft sweep`` on the toy pair in a fresh process twice, side by side: on the 48
bundled CRC prompts and on 480 (the same prompts ten times, with distinct ids), both with
``--batch-size 16``, and prints each run's peak RSS (``getrusage`` of the child) and the ratio
(goal: 480 / 48 <= 1.2x).

    python benchmarks/bench_sweep_memory.py [--batch-size 16] [--max-len 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prompt_file(path: Path, copies: int) -> Path:
    from layergraft.slr.proxy.crc_prompts import load_crc_prompts

    items = load_crc_prompts("all")
    rows = [
        {"id": f"{p.id}-{k}", "category": p.category, "prompt": p.prompt, "valid": list(p.valid)}
        for k in range(copies)
        for p in items
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def peak_rss_mib(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one command in a fresh process (Linux ru_maxrss is KiB)."""
    t0 = time.perf_counter()
    code = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=3, help="intervals of at most N layers")
    args = ap.parse_args()
    from layergraft.toy import toy_paths

    base, post = toy_paths()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for copies in (1, 10):
            prompts = prompt_file(Path(tmp) / f"p{copies}.jsonl", copies)
            argv = [
                sys.executable, "-m", "layergraft", "sweep", "--base", str(base), "--post",
                str(post), "--prompts", str(prompts), "--batch-size", str(args.batch_size),
                "--max-len", str(args.max_len), "--quiet", "--out", str(Path(tmp) / f"s{copies}"),
            ]  # fmt: skip
            env_threads = os.environ.get("OMP_NUM_THREADS", "default")
            rss, secs = peak_rss_mib(argv)
            rows.append((48 * copies, rss, secs))
            print(f"{48 * copies:4d} prompts: peak RSS {rss:7.1f} MiB, {secs:6.1f} s "
                  f"(batch size {args.batch_size}, threads {env_threads})")  # fmt: skip
    ratio = rows[1][1] / rows[0][1]
    print(f"peak RSS 480 / 48 prompts = {ratio:.2f}x  (goal <= 1.2x)")


if __name__ == "__main__":
    main()
