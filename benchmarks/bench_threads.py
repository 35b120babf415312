"""torch's thread count on a busy machine: 1, 2 and ``auto`` threads, idle and under load.

Why: torch's default (one thread per core) collapses when other processes hold cores, because
OpenMP's threads wait for each other after every small operation (see
:mod:`layergraft.models.threads`). This measures, side by side in one run, what ``--threads``
chooses and what it costs: generation with the toy post model (16 prompts x 48 new tokens,
one batch, layergraft's engine) and one exact CRC scoring pass (48 prompts), each at threads
1, 2 and auto, with 0, 1 and 2 extra busy processes (Python spin loops, bounded in time and
always stopped). Every measurement runs in a fresh process, as a CLI command would, which
applies the count through :func:`~layergraft.models.threads.apply_threads` before torch is
imported; a run slower than ``--timeout`` is stopped and reported as at least that long.

"idle" means no spin loops of ours: whatever else the machine runs is measured before each
condition (``other_load``: busy cores outside this benchmark, from /proc/stat) and recorded.

    python benchmarks/bench_threads.py [--timeout 30] [--out docs/bench/threads.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("1", "2", "auto")
LOADS = (0, 1, 2)
GEN_PROMPTS, GEN_TOKENS, CRC_PROMPTS = 16, 48, 48


def spin(deadline: float) -> None:
    """A busy process: spins until ``deadline`` (time.time()), so it ends even if orphaned."""
    while time.time() < deadline:
        pass


def child(threads: str) -> None:
    """One measurement, in this fresh process: apply the count, load the toy post model, warm
    up, then time generation and one CRC pass. Prints one JSON line."""
    from layergraft.models.threads import apply_threads, resolve_threads

    t_resolve = time.perf_counter()
    count, why = resolve_threads(threads)  # what apply_threads will choose, and why
    t_resolve = time.perf_counter() - t_resolve
    apply_threads(count)  # the CLI's path: applied when torch is imported below
    import torch

    from layergraft.gen.engine import run_generation
    from layergraft.gen.sampling import SamplingSettings
    from layergraft.gen.tasks import load_task
    from layergraft.models.load import load_model, load_tokenizer
    from layergraft.slr.proxy.crc import crc_exact
    from layergraft.slr.proxy.crc_prompts import load_crc_prompts
    from layergraft.toy import toy_paths

    assert torch.get_num_threads() == count, (torch.get_num_threads(), count)
    _, post = toy_paths()
    model, tok = load_model(post), load_tokenizer(post)
    prompts = [p for t in ("creative", "qa", "reasoning") for p in load_task(t)][:GEN_PROMPTS]
    crc_prompts = load_crc_prompts("all")[:CRC_PROMPTS]
    settings = SamplingSettings(max_new_tokens=GEN_TOKENS, seed=0)
    run_generation(model, tok, prompts[:2], n=1, settings=SamplingSettings(max_new_tokens=4, seed=0), batch_size=2, progress=False)  # fmt: skip
    crc_exact(model, tok, crc_prompts[:4])
    t0 = time.perf_counter()
    recs = run_generation(model, tok, prompts, n=1, settings=settings, batch_size=GEN_PROMPTS, progress=False)  # fmt: skip
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    crc_exact(model, tok, crc_prompts)
    crc_s = time.perf_counter() - t0
    tokens = sum(r["num_tokens"] for r in recs)
    out = {"threads": count, "why": why, "resolve_s": t_resolve, "gen_s": gen_s, "gen_tokens": tokens, "crc_s": crc_s}  # fmt: skip
    print(json.dumps(out))


def measure(threads: str, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, __file__, "--child", threads],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:  # subprocess.run kills the child
        return {"setting": threads, "timed_out": True, "wall_s": time.perf_counter() - t0}
    if p.returncode != 0:
        raise RuntimeError(f"child --threads {threads} failed:\n{p.stderr}")
    row = json.loads(p.stdout.strip().splitlines()[-1])
    return {"setting": threads, "timed_out": False, "wall_s": time.perf_counter() - t0, **row}


def run_condition(load: int, timeout: float) -> dict:
    """Every thread setting with ``load`` spin loops running throughout."""
    from layergraft.models.threads import other_load

    before = other_load(0.5)  # the machine's own load, before our spinners
    deadline = time.time() + len(SETTINGS) * (timeout + 10) + 30
    spinners = [mp.Process(target=spin, args=(deadline,), daemon=True) for _ in range(load)]
    try:
        for s in spinners:
            s.start()
        time.sleep(1.0 if load else 0.0)
        during = other_load(0.5)
        rows = [measure(t, timeout) for t in SETTINGS]
    finally:
        for s in spinners:
            s.terminate()
        for s in spinners:
            s.join(5)
    return {
        "spinners": load,
        "other_load_before": round(before, 2),
        "other_load_with_spinners": round(during, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "rows": rows,
    }


def _fmt(row: dict, key: str, timeout: float) -> str:
    return f">{timeout:.0f}" if row["timed_out"] else f"{row[key]:.2f}"


def table(conditions: list[dict], timeout: float) -> str:
    lines = [
        f"{'load':<22} {'threads':>8} {'used':>5} {'gen s':>7} {'x best':>7} {'crc s':>7} {'x best':>7}",
    ]
    for c in conditions:
        label = f"+{c['spinners']} busy (other {c['other_load_with_spinners']:.1f})"
        done = [r for r in c["rows"] if not r["timed_out"]]
        best_g = min((r["gen_s"] for r in done), default=float("nan"))
        best_c = min((r["crc_s"] for r in done), default=float("nan"))
        for r in c["rows"]:
            used = "?" if r["timed_out"] else str(r["threads"])
            xg = f">{timeout / best_g:.1f}" if r["timed_out"] else f"{r['gen_s'] / best_g:.2f}"
            xc = f">{timeout / best_c:.1f}" if r["timed_out"] else f"{r['crc_s'] / best_c:.2f}"
            lines.append(
                f"{label:<22} {r['setting']:>8} {used:>5} {_fmt(r, 'gen_s', timeout):>7} {xg:>7} "
                f"{_fmt(r, 'crc_s', timeout):>7} {xc:>7}"
            )
            label = ""
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "threads.json")
    ap.add_argument("--child", metavar="THREADS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    from layergraft.models.threads import usable_cores

    t0 = time.time()
    conditions = [run_condition(load, args.timeout) for load in LOADS]
    import torch

    result = {
        "benchmark": "benchmarks/bench_threads.py",
        "what": f"toy post model, float32 on the CPU: generation {GEN_PROMPTS} prompts x {GEN_TOKENS} new tokens in one batch; one exact CRC pass over {CRC_PROMPTS} prompts; each in a fresh process after a warm-up",  # fmt: skip
        "machine": {
            "usable_cores": usable_cores(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "timeout_s": args.timeout,
        "total_s": round(time.time() - t0, 1),
        "conditions": conditions,
    }
    print(table(conditions, args.timeout))
    print(f"total {result['total_s']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
