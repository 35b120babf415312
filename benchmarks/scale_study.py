"""Does the sweep's ``--dry-run`` plan hold at a real model's shape? A 1B-shape study on the CPU.

A base/post pair of random weights at the Llama-3.2-1B shape (16 layers, d 2048, GQA 32/8,
vocabulary 128,256; :mod:`scale_pair`) is built once, then each measurement runs in a fresh
process (its peak RSS is that process's own, from ``getrusage``):

1. for each search (``exhaustive``, ``halving``): the plan of a partial sweep (``--starts``,
   ``--prompts`` of the first N CRC prompts: one batch) beside that sweep run for real: wall
   seconds against the plan's estimate (prefix reuse; the range when V_end may read every
   continuation), peak RSS against the plan's peak memory. Goal: time within ±25 %, memory
   within ±20 %.
2. the plan of the full sweep (every start) beside what the measured subset extrapolates to:
   the measured seconds after set-up, scaled by the ratio of decoder-layer forwards the plans
   count, plus the set-up.
3. ``restore`` (streaming) of the middle quarter: seconds and peak RSS against the model's
   size on disk.
4. ``prune`` of the same block with the ghost repair: calibration at d = 2048 plus the float64
   fit: seconds and peak RSS.

Everything runs in float32 on the CPU (the checkpoint is bfloat16; the sweep loads it as
float32 on a CPU). Run it on a quiet machine (``cat /proc/loadavg``): plan and measurement are
taken minutes apart, and a neighbour's load between them is an error the plan cannot know.

    python benchmarks/scale_study.py [--shape llama-3.2-1b] [--starts 8,12] [--prompts-n 16]
                                     [--work DIR] [--json docs/bench/scale_1b.json]
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

from scale_pair import build_pair

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
kind, kw = sys.argv[1], json.loads(sys.argv[2])
import layergraft.api as lg
if kind == "sweep":
    res = lg.sweep(kw.pop("base"), kw.pop("post"), progress=False, **kw)
    out = res.get("plan") if res.get("dry_run") else {"intervals": len(res.get("intervals", res.get("rows", [])))}
elif kind == "restore":
    lg.restore(kw.pop("base"), kw.pop("post"), kw.pop("layers"), kw.pop("out"), progress=False, **kw)
    out = {}
elif kind == "prune":
    prov = lg.prune(kw.pop("model"), kw.pop("out"), progress=False, **kw)
    out = {"operators": prov["details"]["operators"], "calibration": prov["details"]["calibration"]}
out["_seconds"] = time.perf_counter() - t0
out["_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("@@" + json.dumps(out, default=str))
"""


def measured(kind: str, **kw) -> dict:
    """Run one API call in a fresh Python process; its result, wall seconds (start-up and
    imports included, as a user's command pays them) and peak RSS."""
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, json.dumps(kw)], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{p.stderr[-3000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("@@")][-1]
    out = json.loads(line[2:])
    out["_wall_s"] = round(wall, 2)
    return out


def prompt_file(path: Path, n: int) -> Path:
    from layergraft.slr.proxy.crc_prompts import load_crc_prompts

    items = load_crc_prompts("all")[:n]
    rows = [{"id": p.id, "category": p.category, "prompt": p.prompt, "valid": list(p.valid)} for p in items]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


#: assumed sustained bfloat16 throughput of one H100 SXM on these GEMMs: 40% of its 989
#: TFLOP/s dense peak (an assumption, not a measurement: gpu_check.py measures it)
H100_FLOPS = 0.4 * 989e12


def h100_estimate(shape: str, positions_per_prompt: float, prompts: int = 48) -> dict:
    """What a full sweep at ``shape`` should cost on one H100, counted, not measured: the
    decoder-layer forwards the plan counts (the sweep's own functions), times the FLOPs of one
    layer on the batch's positions, over :data:`H100_FLOPS`; plus the head calls. Loading the
    two models and Python's per-call overhead are not in it."""
    from scale_pair import config_dict

    from layergraft.slr.sweep.engines import carried_prefix_layers, enumerate_intervals, plan_units

    cfg = config_dict(shape)
    n, d, f, v = (
        cfg["num_hidden_layers"],
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["vocab_size"],
    )
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f  # multiply-adds per position
    units = plan_units(n, enumerate_intervals(n), [])
    starts = [u for u in units if u.kind == "start"]
    forwards = (
        sum(u.cost(n, True) - u.start for u in starts) + carried_prefix_layers(starts) + 2 * n
    )
    intervals = sum(len(u.ends) for u in starts)
    positions = positions_per_prompt * prompts
    layer_flops = 2 * per_layer * positions * forwards
    head_flops = (
        2 * d * v * prompts * 2 * (intervals + 2)
    )  # answer slot + about as many V_end reads
    seconds = (layer_flops + head_flops) / H100_FLOPS
    weights = (
        2 * (per_layer * n + d * v * (1 if cfg["tie_word_embeddings"] else 2)) * 2
    )  # two models, bf16
    return {
        "shape": shape, "intervals": intervals, "prompts": prompts, "positions": round(positions),
        "layer_forwards": forwards, "tflop": round((layer_flops + head_flops) / 1e12, 1),
        "assumed_tflops": H100_FLOPS / 1e12, "compute_seconds": round(seconds, 1),
        "weights_gib": round(weights / 2**30, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--starts", default="8,12", help="the partial sweep's start layers")
    ap.add_argument("--prompts-n", type=int, default=16, help="CRC prompts (one batch)")
    ap.add_argument("--calib-tokens", type=int, default=2048)
    ap.add_argument("--work", help="where the pair is built and kept (default: a temp dir)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="scale-study-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pair = build_pair(args.shape, work / "pair")
    print(f"pair {args.shape}: {pair['params'] / 1e9:.2f}B parameters, {pair['bytes_per_model'] / 1e9:.2f} GB per model "
          f"(bf16), post = base with layers {pair['changed']} changed; built in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    prompts = prompt_file(work / "prompts.jsonl", args.prompts_n)
    res: dict = {"shape": args.shape, "pair": pair, "prompts": args.prompts_n, "starts": args.starts,
                 "loadavg_before": os.getloadavg(), "searches": {}}  # fmt: skip

    for search in ("exhaustive", "halving"):
        common = {"base": pair["base"], "post": pair["post"], "prompts": str(prompts),
                  "search": search, "starts": [int(x) for x in args.starts.split(",")]}  # fmt: skip
        plan = measured("sweep", dry_run=True, **common)
        out = work / f"sweep-{search}"
        run = measured("sweep", out=str(out), force=True, **common)
        est = plan["estimated_seconds"]["prefix-reuse"]
        high = plan["estimated_seconds_every_read"]["prefix-reuse"]
        if search == "halving" and plan.get("halving"):  # survivors unknown: the plan's range
            est, high = plan["halving"]["estimated_seconds"]
        mem = plan["estimated_peak_memory_gib"] * 1024
        full = measured("sweep", dry_run=True, **{k: v for k, v in common.items() if k != "starts"})
        setup = plan["measured"]["setup_s"]
        scale = full["layer_forwards"]["prefix-reuse"] / plan["layer_forwards"]["prefix-reuse"]
        row = {
            "intervals": plan["intervals"],
            "plan_seconds": [est, high],
            "measured_seconds": run["_wall_s"],
            "time_ratio_low": _ratio(run["_wall_s"], est),
            "time_ratio_high": _ratio(run["_wall_s"], high),
            "plan_peak_mib": round(mem),
            "measured_peak_rss_mib": round(run["_peak_rss_mib"]),
            "memory_ratio": _ratio(run["_peak_rss_mib"], mem),
            "layer_forwards": plan["layer_forwards"]["prefix-reuse"],
            "positions": plan["positions_per_forward"]["computed_positions"],
            "plan_memory_parts_gib": plan.get("memory_parts_gib"),
            "full": {
                "intervals": full["intervals"],
                "layer_forwards": full["layer_forwards"]["prefix-reuse"],
                "plan_seconds": (full["halving"]["estimated_seconds"] if search == "halving" and full.get("halving")
                                 else [full["estimated_seconds"]["prefix-reuse"],
                                       full["estimated_seconds_every_read"]["prefix-reuse"]]),
                "extrapolated_seconds": round(setup + (run["_wall_s"] - setup) * scale, 1),
                "plan_peak_mib": round(full["estimated_peak_memory_gib"] * 1024),
            },
            "plan_measured": plan["measured"],
        }  # fmt: skip
        row["halving_plan"] = plan.get("halving")
        res["searches"][search] = row
        print(
            f"\nsweep --search {search} --starts {args.starts} ({row['intervals']} intervals, {args.prompts_n} prompts):"
        )
        print(f"  time   plan {est:.0f}–{high:.0f} s, measured {run['_wall_s']:.0f} s  "
              f"(measured/plan {row['time_ratio_low']}–{row['time_ratio_high']}; goal within 0.75–1.25)")  # fmt: skip
        print(f"  memory plan {mem:.0f} MiB, measured peak RSS {run['_peak_rss_mib']:.0f} MiB "
              f"(ratio {row['memory_ratio']}; goal within 0.8–1.2)")  # fmt: skip
        f = row["full"]
        print(f"  full sweep ({f['intervals']} intervals): plan {f['plan_seconds'][0]:.0f}–{f['plan_seconds'][1]:.0f} s, "
              f"the measured subset extrapolates to {f['extrapolated_seconds']:.0f} s; plan peak {f['plan_peak_mib']} MiB")  # fmt: skip

    ex = res["searches"]["exhaustive"]
    per_prompt = ex["positions"] / args.prompts_n
    res["h100_8b_estimate"] = h100_estimate("llama-3.1-8b", per_prompt)
    h = res["h100_8b_estimate"]
    print(f"\n8B shape on one H100 (counted, not measured): {h['intervals']} intervals, {h['layer_forwards']} layer forwards "
          f"of {h['positions']} positions, {h['tflop']} TFLOP at an assumed {h['assumed_tflops']:.0f} TFLOP/s = "
          f"{h['compute_seconds']} s of compute; {h['weights_gib']} GiB of weights")  # fmt: skip

    s, e = (int(x) for x in pair["changed"].split(":"))
    size = pair["bytes_per_model"]
    r = measured("restore", base=pair["base"], post=pair["post"], out=str(work / "restored"),
                 layers=f"{s}:{e}", force=True)  # fmt: skip
    res["restore"] = {"layers": f"{s}:{e}", "seconds": r["_wall_s"], "peak_rss_mib": round(r["_peak_rss_mib"]),
                      "model_mib": round(size / 2**20), "rss_over_model": _ratio(r["_peak_rss_mib"], size / 2**20)}  # fmt: skip
    print(f"\nrestore {s}:{e}: {r['_wall_s']:.1f} s, peak RSS {r['_peak_rss_mib']:.0f} MiB for a {size / 2**20:.0f} MiB model "
          f"({res['restore']['rss_over_model']}x)")  # fmt: skip

    p = measured("prune", model=pair["post"], out=str(work / "pruned"), remove=f"{s}:{e}",
                 calib_tokens=args.calib_tokens, seqlen=256, batch_size=2, force=True)  # fmt: skip
    res["prune"] = {"remove": f"{s}:{e}", "calib_tokens": p["calibration"]["tokens"], "seconds": p["_wall_s"],
                    "peak_rss_mib": round(p["_peak_rss_mib"]), "model_mib_float32": round(2 * size / 2**20)}  # fmt: skip
    print(f"prune {s}:{e} (ghost, {p['calibration']['tokens']} calibration tokens, d = 2048): {p['_wall_s']:.1f} s, "
          f"peak RSS {p['_peak_rss_mib']:.0f} MiB (the model in float32: {2 * size / 2**20:.0f} MiB)")  # fmt: skip
    res["loadavg_after"] = os.getloadavg()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
