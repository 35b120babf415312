"""One GPU check that fits a 15-minute device lease: CUDA and bfloat16 paths, and an 8B sweep's cost.

Why: every number layergraft had measured came from a 2-core CPU. The CUDA and bfloat16 paths
of CRC, the sweep, calibration and generation had never run, and nobody knew what a sweep of an
8B model costs on one GPU. GPU time comes in leases of 15 minutes, so this script is ready
before a GPU is: one command, nothing fetched, planned at about 4 minutes on one H100 (goal:
at most 8, leaving a rerun inside the lease), one JSON file.

Sections, in order (each one in its own ``try``: an error is recorded and the next one runs;
the JSON is rewritten after every section, so a lease that runs out keeps what finished; a
section that would start after ``--budget-s`` is skipped and marked so):

1. ``toy``: the toy pair's CRC (post model) and exhaustive sweep on ``--device`` in float32
   and in bfloat16, against the same on the CPU in float32: the largest difference of any
   score (V, H, H_norm, V_end of every prompt, interval and reference), and whether both
   selection rules (``paper``, ``format``) pick the same interval.
2. ``pair``: a base/post pair of random weights at the 8B shape (:mod:`scale_pair`: d 4096,
   GQA 32/8, MLP 14336, vocabulary 128,256) built on the device, with **fewer layers**
   (``--layers``, default 8 of 32) so that building, loading, restoring and pruning it fit
   the lease and the disk (64 GiB): 5.6 GB per model instead of 16 GB. What is measured on it
   is extrapolated to 32 layers, and the JSON says how.
3. ``sweep``: the exhaustive and the halving sweep of that pair (V_end on, the toy's chat
   template), every unit timed on its own (``torch.cuda.synchronize`` around it), one start
   unit among them; the peak GPU memory; the dry-run plan of the same sweep beside the
   measured time. Extrapolated to the full 528-interval sweep of 32 layers: the seconds per
   decoder-layer forward, per head call and per runner built are fitted (non-negative least
   squares) to the measured units and multiplied by the full sweep's counts (the counts the
   plan uses: :mod:`layergraft.slr.sweep.engines`); loading and the weight diff scale with the
   bytes; memory adds the 24 missing layers of both models. Halving's second stage depends on
   how many candidates survive, so its estimate is a range (no survivor .. all of them) with
   the measured share of survivors as the point.
4. ``restore``: ``restore`` of the changed layers against ``cp -r`` of the same files
   (warm page cache), GB/s of the model written; with and without output hashing.
5. ``prune``: ``prune --recover ghost`` of the changed block at d = 4096: load, calibration
   plus ghost fit, write; seconds and peak memory.
6. ``generate``: the engine's sampling throughput at batch 32 (tokens/s after a warm-up
   batch), on the 8B-shape pair's post model; extrapolated to 32 layers by the bytes of
   weights read per decoding step.

On a GPU (planned at about 4 minutes on one H100, an estimate: it has not run on a GPU yet;
11 GB of disk in a temp dir removed at the end)::

    python benchmarks/gpu_check.py --out docs/bench/gpu_check_h100.json

On the CPU, the same code at a tiny shape (CI runs it; under a minute)::

    python benchmarks/gpu_check.py --device cpu --shape tiny --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_pair  # noqa: E402

SHAPES = {"tiny": "tiny", "8b": "llama-3.1-8b"}
DEFAULTS = {  # per --shape: what fits a CI minute on 2 cores, and what fits the lease on a GPU
    "tiny": dict(layers=2, prompts_n=10, toy_prompts_n=8, toy_starts="all", calib_tokens=512,
                 seqlen=128, gen_new_tokens=8, gen_batches=1),
    "8b": dict(layers=8, prompts_n=48, toy_prompts_n=48, toy_starts="all", calib_tokens=8192,
               seqlen=512, gen_new_tokens=128, gen_batches=2),
}  # fmt: skip
GEN_BATCH = 32
_MIB = 2**20


# ------------------------------------------------------------------------- timing and memory


def sync(device: str) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


class Peak:
    """Peak memory inside a ``with`` block: the GPU's allocated and reserved bytes (CUDA,
    from ``reset_peak_memory_stats``) and this process's resident set, sampled every 20 ms."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device
        self.rss = 0
        self.gpu: dict[str, float] = {}
        self._stop = threading.Event()

    def _rss_now(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # no /proc: the process's peak so far
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss = max(self.rss, self._rss_now())

    def __enter__(self) -> Peak:
        gc.collect()
        if self.cuda:
            import torch

            dev = torch.device(self.device)
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        self.rss = self._rss_now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.rss = max(self.rss, self._rss_now())
        if self.cuda:
            import torch

            dev = torch.device(self.device)
            torch.cuda.synchronize(dev)
            self.gpu = {
                "peak_gpu_allocated_mib": round(torch.cuda.max_memory_allocated(dev) / _MIB),
                "peak_gpu_reserved_mib": round(torch.cuda.max_memory_reserved(dev) / _MIB),
            }
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def as_json(self) -> dict[str, Any]:
        return {**self.gpu, "peak_rss_mib": round(self.rss / _MIB)}


@contextmanager
def timed(device: str) -> Iterator[dict[str, float]]:
    """``with timed(dev) as t: ...`` then ``t["s"]``: wall seconds, device work included."""
    out: dict[str, float] = {}
    sync(device)
    t0 = time.perf_counter()
    yield out
    sync(device)
    out["s"] = round(time.perf_counter() - t0, 3)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.safetensors"))


# ------------------------------------------------------------------------- comparing results


def numeric_leaves(x: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON-like structure, by its path (``a.b.3.V``)."""
    if isinstance(x, (dict, list, tuple)):
        items = x.items() if isinstance(x, dict) else enumerate(x)
        out: dict[str, float] = {}
        for k, v in items:
            out.update(numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(x, (bool, str)) or x is None:
        return {}
    try:  # int, float, and numpy's or torch's scalars
        return {prefix: float(x)}
    except (TypeError, ValueError):
        return {}


def max_difference(a: Any, b: Any) -> dict[str, Any]:
    """The largest absolute difference of the numbers two results share, where it is, and
    how many numbers one has and the other lacks."""
    la, lb = numeric_leaves(a), numeric_leaves(b)
    worst, where = 0.0, None
    for k in la.keys() & lb.keys():
        x, y = la[k], lb[k]
        d = 0.0 if (x != x and y != y) else abs(x - y)  # NaN in both: the same
        if d != d:
            d = float("inf")
        if d > worst:
            worst, where = d, k
    return {
        "max_abs_diff": worst,
        "at": where,
        "numbers_compared": len(la.keys() & lb.keys()),
        "numbers_unmatched": len(la.keys() ^ lb.keys()),
    }


def sweep_scores(res: dict[str, Any]) -> dict[str, Any]:
    """A sweep's scores keyed by what they are (references, and intervals by label)."""
    return {
        "references": res.get("references", {}),
        "intervals": {r["interval"]: r for r in res.get("intervals", [])},
    }


def selections(res: dict[str, Any]) -> dict[str, Any]:
    """Each rule's chosen interval (``results["selections"]``), None where nothing was chosen."""
    return {rule: (sel or {}).get("interval") for rule, sel in res.get("selections", {}).items()}


# ------------------------------------------------------------------------- sweep timing


class TimedExecutor:
    """``sweep(..., executor=TimedExecutor(dev))``: the units scored in this process by the
    ordinary :class:`~layergraft.slr.sweep.worker.SweepWorker`, in the order the sweep gives
    them, each one timed on its own (device synchronised), with what it computed per batch:
    decoder-layer forwards, head calls and layer runners built (the post prefix is carried
    from one start unit to the next, :class:`~layergraft.slr.sweep.engines.PostPrefix`)."""

    name = "local-timed"

    def __init__(self, device: str) -> None:
        self.device = device
        self.worker: Any = None
        self.load_s = 0.0
        self.units: list[dict[str, Any]] = []
        self.batches: dict[int, int] = {}
        self._at: dict[int, int] = {}  # stage -> the start the carried post prefix is at

    def prepare(self, spec: Any) -> None:
        from layergraft.slr.sweep.worker import SweepWorker

        with timed(self.device) as t:
            self.worker = SweepWorker.from_spec(spec)
        self.load_s = t["s"]

    def run(self, units: Any, num_layers: int) -> Iterator[list[dict[str, Any]]]:
        for u in units:
            feats = unit_features(u, num_layers, self._at)
            self.batches.setdefault(u.stage, len(self.worker.for_stage(u.stage)[1]))
            with timed(self.device) as t:
                rows = self.worker.run(u)
            self.units.append(
                {"kind": u.kind, "name": u.name, "start": u.start, "ends": len(u.ends),
                 "stage": u.stage, "seconds": t["s"], **feats}
            )  # fmt: skip
            yield rows


def unit_features(u: Any, num_layers: int, at: dict[int, int]) -> dict[str, int]:
    """Per batch: decoder-layer forwards, head calls and runners built of unit ``u`` run
    after the units that set ``at`` (updated), with prefix reuse."""
    if u.kind != "start":
        return {"layer_forwards": num_layers, "heads": 1, "runners": 1}
    last = at.get(u.stage)
    fresh = last is None or u.start < last
    prefix = u.start if fresh else u.start - last
    at[u.stage] = u.start
    return {
        "layer_forwards": u.cost(num_layers, True) - u.start + prefix,
        "heads": len(u.ends),
        "runners": int(fresh),
    }


FEATURES = ("layer_forwards", "heads", "runners")


def fit_seconds(units: list[dict[str, Any]]) -> dict[str, float] | None:
    """Seconds per layer forward, head call and runner (summed over the batches), the
    non-negative least-squares fit to the units' measured seconds; None without units."""
    import numpy as np

    if not units:
        return None
    x = np.array([[u[f] for f in FEATURES] for u in units], dtype=float)
    y = np.array([u["seconds"] for u in units], dtype=float)
    best: tuple[float, np.ndarray] | None = None
    for k in range(len(FEATURES), 0, -1):  # every subset of the features: NNLS for 3 columns
        for cols in combinations(range(len(FEATURES)), k):
            sol, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if (sol < -1e-12).any():
                continue
            coef = np.zeros(len(FEATURES))
            coef[list(cols)] = np.clip(sol, 0.0, None)
            resid = float(((x @ coef - y) ** 2).sum())
            if best is None or resid < best[0] - 1e-15:
                best = (resid, coef)
    assert best is not None  # one column alone always has a non-negative solution (y >= 0)
    coef = best[1]
    out = {f"{f}_s": float(c) for f, c in zip(FEATURES, coef, strict=True)}
    pred = x @ coef
    out["max_rel_error"] = float(np.max(np.abs(pred - y) / np.maximum(y, 1e-9)))
    return out


def full_units(num_layers: int, stage: int = 0) -> list[dict[str, int]]:
    """The features of every unit of the full exhaustive sweep of ``num_layers``, in the order
    a local sweep runs them."""
    from layergraft.slr.sweep.engines import enumerate_intervals, plan_units

    at: dict[int, int] = {}
    units = plan_units(num_layers, enumerate_intervals(num_layers), ())
    return [unit_features(dataclasses.replace(u, stage=stage), num_layers, at) for u in units]


def predict(coef: dict[str, float], units: list[dict[str, int]]) -> float:
    return sum(sum(coef[f"{f}_s"] * u[f] for f in FEATURES) for u in units)


# ------------------------------------------------------------------------- the sections


def prompt_file(path: Path, n: int) -> Path:
    """The first ``n`` CRC prompts taken alternately from each category (so that halving has
    every category at any ``n``), as a JSONL prompt file."""
    from layergraft.slr.proxy.crc_prompts import load_crc_prompts

    items = load_crc_prompts("all")
    by_cat: dict[str, list[Any]] = {}
    for p in items:
        by_cat.setdefault(p.category, []).append(p)
    order = [p for group in zip(*by_cat.values(), strict=False) for p in group]
    order += [p for p in items if p not in order]
    rows = [{"id": p.id, "category": p.category, "prompt": p.prompt, "valid": list(p.valid)}
            for p in order[:n]]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def section_toy(ctx: Context) -> dict[str, Any]:
    """CRC and sweep of the toy pair on the device in float32 and bfloat16 against the CPU
    in float32."""
    import layergraft.api as lg

    base, post = (str(p) for p in lg.toy_paths())
    prompts = str(prompt_file(ctx.work / "toy_prompts.jsonl", ctx.a.toy_prompts_n))
    starts = None if ctx.a.toy_starts == "all" else [int(x) for x in ctx.a.toy_starts.split(",")]

    def one(device: str, dtype: str) -> dict[str, Any]:
        with timed(device) as tc:
            c = lg.crc(post, prompts=prompts, device=device, dtype=dtype)
        with timed(device) as ts:
            s = lg.sweep(base, post, prompts=prompts, starts=starts, device=device, dtype=dtype,
                         progress=False)  # fmt: skip
        return {"crc": c, "sweep": s, "seconds": {"crc": tc["s"], "sweep": ts["s"]}}

    ref = one("cpu", "float32")
    out: dict[str, Any] = {
        "prompts": ctx.a.toy_prompts_n,
        "starts": ctx.a.toy_starts,
        "reference": {
            "device": "cpu",
            "dtype": "float32",
            "seconds": ref["seconds"],
            "selections": selections(ref["sweep"]),
            "post_crc": ref["crc"]["mean"],
        },  # fmt: skip
        "runs": {},
    }
    for dtype in ("float32", "bfloat16"):
        got = one(ctx.device, dtype)
        sel = selections(got["sweep"])
        out["runs"][dtype] = {
            "device": ctx.device,
            "seconds": got["seconds"],
            "crc": max_difference(ref["crc"], got["crc"]),
            "sweep": max_difference(sweep_scores(ref["sweep"]), sweep_scores(got["sweep"])),
            "selections": sel,
            "same_selection": {r: sel.get(r) == v for r, v in out["reference"]["selections"].items()},
        }  # fmt: skip
        ctx.partial(out)
    return out


def section_pair(ctx: Context) -> dict[str, Any]:
    """The 8B-shape (or tiny) pair, built on the device, with ``--layers`` layers."""
    shape = SHAPES[ctx.a.shape]
    full = scale_pair.SHAPES[shape]["num_hidden_layers"]
    layers = ctx.a.layers or full
    name = shape
    if layers != full:  # the real shape with fewer layers: registered under its own name
        name = f"{shape}-{layers}-layers"
        scale_pair.SHAPES[name] = dict(scale_pair.SHAPES[shape], num_hidden_layers=layers)
    with Peak(ctx.device) as pk, timed(ctx.device) as t:
        info = scale_pair.build_pair(name, ctx.work / "pair", device=ctx.device, dtype="bfloat16")
    cfg = scale_pair.config_dict(name)
    per_layer = [0] * layers
    other = 0
    for _, shp, layer in scale_pair.tensor_shapes(cfg):
        n = 2  # bfloat16
        for d in shp:
            n *= d
        if layer is None:
            other += n
        else:
            per_layer[layer] += n
    ctx.pair = {
        **info, "shape": shape, "layers": layers, "full_layers": full,
        "layer_bytes": per_layer[0], "non_layer_bytes": other,
        "full_bytes_per_model": other + full * per_layer[0],
    }  # fmt: skip
    return {
        "shape": shape, "layers": layers, "full_layers": full,
        "reduced": layers != full,
        "note": (f"the {shape} shape with {layers} of its {full} decoder layers (every other "
                 "dimension real); timings and memory are extrapolated to "
                 f"{full} layers where said") if layers != full else "the full shape",
        "changed": info["changed"], "params": info["params"],
        "bytes_per_model": info["bytes_per_model"],
        "full_bytes_per_model": ctx.pair["full_bytes_per_model"],
        "layer_bytes": per_layer[0], "seconds": t["s"], **pk.as_json(),
    }  # fmt: skip


def _sweep_timed(ctx: Context, search: str, prompts: str) -> dict[str, Any]:
    import layergraft.api as lg

    p = ctx.pair
    ex = TimedExecutor(ctx.device)
    with Peak(ctx.device) as pk, timed(ctx.device) as t:
        res = lg.sweep(p["base"], p["post"], prompts=prompts, search=search, device=ctx.device,
                       dtype=ctx.a.dtype, executor=ex, progress=False)  # fmt: skip
    units_s = sum(u["seconds"] for u in ex.units)
    post_ref = res["references"]["post"]
    return {
        "wall_s": t["s"],
        "load_and_batches_s": ex.load_s,
        "units_s": round(units_s, 3),
        "after_units_s": round(t["s"] - ex.load_s - units_s, 3),  # selection, weight diff
        "intervals_in_results": len(res.get("intervals", [])),  # halving: the survivors
        "batches": ex.batches,
        "units": ex.units,
        "rule": res.get("rule", {}).get("name"),
        "v_end": res.get("settings", {}).get("v_end"),
        "post_scores": {k: post_ref.get(k) for k in ("V", "H_norm", "V_end")},
        "selections": selections(res),
        "search": {k: v for k, v in res.get("search", {}).items() if k != "dropped"},
        "memory": pk.as_json(),
    }


def section_sweep(ctx: Context) -> dict[str, Any]:
    """Exhaustive and halving sweeps of the pair, timed by unit; the plan; the full sweep."""
    import layergraft.api as lg

    p = ctx.pair
    L, full = p["layers"], p["full_layers"]
    prompts = str(prompt_file(ctx.work / "prompts.jsonl", ctx.a.prompts_n))
    out: dict[str, Any] = {"prompts": ctx.a.prompts_n, "layers": L, "full_layers": full}
    with timed(ctx.device) as t:  # planned as halving: the exhaustive estimate comes with it
        plan = lg.sweep(p["base"], p["post"], prompts=prompts, dry_run=True, search="halving",
                        device=ctx.device, dtype=ctx.a.dtype, progress=False)["plan"]  # fmt: skip
    out["plan"] = {
        "seconds_to_plan": t["s"],
        "intervals": plan["intervals"],
        "estimated_seconds": plan["estimated_seconds"]["prefix-reuse"],
        "estimated_seconds_every_read": plan["estimated_seconds_every_read"]["prefix-reuse"],
        "estimated_peak_memory_gib": plan["estimated_peak_memory_gib"],
        "measured": plan["measured"],
        "halving_estimated_seconds": (plan.get("halving") or {}).get("estimated_seconds"),
    }
    ctx.partial(out)
    ex = _sweep_timed(ctx, "exhaustive", prompts)
    out["exhaustive"] = ex
    plan_range = (out["plan"]["estimated_seconds"], out["plan"]["estimated_seconds_every_read"])
    for key, measured in (("load_and_units", ex["load_and_batches_s"] + ex["units_s"]),
                          ("wall", ex["wall_s"])):  # fmt: skip
        out["plan"][f"measured_{key}_over_plan"] = [
            round(measured / x, 3) if x else None for x in plan_range
        ]
    out["plan"]["compared"] = (
        "the measured sweep (load + units, and the whole call with the weight diff) against "
        "the plan's low and high estimate"
    )
    starts = [u for u in ex["units"] if u["kind"] == "start"]
    if starts:
        out["start_unit"] = {k: starts[0][k] for k in ("start", "ends", "seconds", *FEATURES)}
    ctx.partial(out)
    out["halving"] = _sweep_timed(ctx, "halving", prompts)
    hv_plan = out["plan"]["halving_estimated_seconds"]
    if hv_plan:
        hv = out["halving"]
        for key, measured in (("load_and_units", hv["load_and_batches_s"] + hv["units_s"]),
                              ("wall", hv["wall_s"])):  # fmt: skip
            out["plan"][f"halving_measured_{key}_over_plan"] = [
                round(measured / x, 3) if x else None for x in hv_plan
            ]
    ctx.partial(out)
    out["full"] = extrapolate(ctx, out)
    return out


def extrapolate(ctx: Context, out: dict[str, Any]) -> dict[str, Any]:
    """The full exhaustive and halving sweep at ``full_layers`` from the measured units."""
    p = ctx.pair
    L, full = p["layers"], p["full_layers"]
    grow = p["full_bytes_per_model"] / p["bytes_per_model"]
    ex, hv = out["exhaustive"], out["halving"]
    units_full = full_units(full)
    res: dict[str, Any] = {
        "intervals": full * (full + 1) // 2,
        "layer_forwards_per_batch": sum(u["layer_forwards"] for u in units_full),
        "head_calls_per_batch": sum(u["heads"] for u in units_full),
        "method": (
            "seconds per layer forward, head call and runner fitted (non-negative least squares) "
            "to the measured units of each stage, times the full sweep's counts; loading and the "
            f"work after the units (weight diff, selection) scaled by the bytes ({grow:.2f}x); "
            "peak memory plus both models' missing layers"
        ),
    }
    res["caveats"] = [
        "random weights: the post model is not collapsed, so V_end reads nearly every "
        "continuation (a real pair's sweep sits nearer the plan's low end) and halving drops "
        "fewer candidates than on a real pair",
        "loading from a warm page cache (the pair was just written)",
    ]
    coef = fit_seconds([u for u in ex["units"] if u["stage"] == 0])
    setup = ex["load_and_batches_s"] * grow
    after = max(ex["after_units_s"], 0.0) * grow
    on_gpu = "peak_gpu_allocated_mib" in ex["memory"]
    widen = 2 if ctx.a.dtype == "float32" or (ctx.a.dtype == "auto" and not on_gpu) else 1
    extra_layers = 2 * (full - L) * p["layer_bytes"] * widen / _MIB  # bf16 on disk
    mem = ex["memory"].get("peak_gpu_allocated_mib", ex["memory"]["peak_rss_mib"])
    res["peak_memory_mib"] = round(mem + extra_layers)
    res["peak_memory_kind"] = "gpu allocated" if on_gpu else "rss"
    if coef is not None:
        units_s = predict(coef, units_full)
        res["exhaustive"] = {
            "seconds": round(setup + units_s + after, 1),
            "units_s": round(units_s, 1), "setup_s": round(setup, 1), "after_units_s": round(after, 1),
            "fit": coef,
        }  # fmt: skip
        lf = sum(u["layer_forwards"] for u in ex["units"])
        res["exhaustive"]["by_layer_forward_ratio_s"] = round(  # scale_study's simpler way
            setup + ex["units_s"] * res["layer_forwards_per_batch"] / lf + after, 1
        )
    pm = out["plan"]["measured"]
    plan_units_s = sum(
        u["layer_forwards"] * pm["layer_s"] + u["heads"] * pm["head_s"] + u["runners"] * pm["runner_s"]
        for u in units_full
    )  # fmt: skip
    res["plan_model_s"] = round(pm["setup_s"] * grow + plan_units_s, 1)
    res["plan_model_note"] = "the dry run's own per-layer and per-head timings, at the full counts"
    s1 = fit_seconds([u for u in hv["units"] if u["stage"] == 1])
    s2_units = [u for u in hv["units"] if u["stage"] == 2]
    s2 = fit_seconds(s2_units) if len({u["layer_forwards"] for u in s2_units}) >= 2 else None
    s2_from = "stage-2 units"
    if s2 is None:  # too few survivors to fit: all prompts' seconds, an upper bound
        s2, s2_from = coef, "the exhaustive fit (an upper bound: stage 2 reads fewer prompts)"
    if s1 is not None and s2 is not None:
        stage1 = predict(s1, full_units(full, 1))
        refs = full_units(full, 2)[:2]  # the references come first
        low = predict(s2, refs)
        high = predict(s2, full_units(full, 2))
        search = hv.get("search", {})
        share = (search["survivors"] / search["candidates"]) if search.get("candidates") else 1.0
        hsetup = hv["load_and_batches_s"] * grow
        hafter = max(hv["after_units_s"], 0.0) * grow
        res["halving"] = {
            "seconds": round(hsetup + stage1 + low + share * (high - low) + hafter, 1),
            "seconds_range": [round(hsetup + stage1 + low + hafter, 1),
                              round(hsetup + stage1 + high + hafter, 1)],
            "stage1_s": round(stage1, 1), "stage2_s_range": [round(low, 1), round(high, 1)],
            "survivor_share_measured": round(share, 4),
            "stage2_fit_from": s2_from, "fit_stage1": s1,
        }  # fmt: skip
    else:
        res["halving"] = {"note": "halving fell back to exhaustive: " + str(hv.get("search"))}
    return res


def section_restore(ctx: Context) -> dict[str, Any]:
    """``restore`` of the changed layers against ``cp -r`` of the same files."""
    import layergraft.api as lg

    p = ctx.pair
    out: dict[str, Any] = {"layers": p["changed"], "page_cache": "warm (files just written)"}
    copy_dir = ctx.work / "copy"
    shutil.rmtree(copy_dir, ignore_errors=True)
    with timed("cpu") as t:
        if shutil.which("cp"):
            subprocess.run(["cp", "-r", p["post"], str(copy_dir)], check=True)
        else:
            shutil.copytree(p["post"], copy_dir)
    size = dir_bytes(copy_dir)
    out["copy"] = {"seconds": t["s"], "bytes": size, "gb_per_s": round(size / 1e9 / t["s"], 3)}
    shutil.rmtree(copy_dir, ignore_errors=True)
    for label, hash_outputs in (("restore", True), ("restore_no_hash", False)):
        target = ctx.work / label
        with Peak("cpu") as pk, timed("cpu") as t:
            lg.restore(p["base"], p["post"], p["changed"], target, force=True,
                       hash_outputs=hash_outputs, progress=False)  # fmt: skip
        size = dir_bytes(target)
        out[label] = {
            "seconds": t["s"], "bytes": size, "gb_per_s": round(size / 1e9 / t["s"], 3),
            "time_over_copy": round(t["s"] / out["copy"]["seconds"], 2), **pk.as_json(),
        }  # fmt: skip
        shutil.rmtree(target, ignore_errors=True)
    return out


def section_prune(ctx: Context) -> dict[str, Any]:
    """``prune --recover ghost`` of the changed block: load, calibration plus fit, write."""
    import layergraft.api as lg
    import layergraft.prune.pipeline as pl

    p = ctx.pair
    phases: dict[str, float] = {}

    def timing(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kw: Any) -> Any:
            with timed(ctx.device) as t:
                r = fn(*args, **kw)
            phases[name] = t["s"]
            return r

        return wrapped

    originals = {k: getattr(pl, k) for k in ("load_job", "prune_model") if hasattr(pl, k)}
    for k, fn in originals.items():  # the phases, where the pipeline still calls them so
        setattr(pl, k, timing(k, fn))
    target = ctx.work / "pruned"
    try:
        with Peak(ctx.device) as pk, timed(ctx.device) as t:
            prov = lg.prune(p["post"], target, remove=p["changed"], recover="ghost",
                            calib_tokens=ctx.a.calib_tokens, seqlen=ctx.a.seqlen, batch_size=4,
                            device=ctx.device, dtype=ctx.a.dtype, force=True, progress=False)  # fmt: skip
    finally:
        for k, fn in originals.items():
            setattr(pl, k, fn)
    cfg = json.loads((Path(p["post"]) / "config.json").read_text())
    out = {
        "remove": p["changed"], "d": cfg["hidden_size"],
        "calibration_tokens": prov["details"]["calibration"]["tokens"],
        "seqlen": ctx.a.seqlen, "seconds": t["s"],
        "load_s": phases.get("load_job"),
        "calibrate_and_fit_s": phases.get("prune_model"),
        "written_bytes": dir_bytes(target), **pk.as_json(),
    }  # fmt: skip
    if p["layers"] != p["full_layers"] and "peak_gpu_allocated_mib" in out:
        # the model sits on the GPU whole: the full depth adds its missing layers' weights
        extra = (p["full_layers"] - p["layers"]) * p["layer_bytes"] / _MIB
        out["full_layers_peak_gpu_mib"] = round(out["peak_gpu_allocated_mib"] + extra)
    if len(phases) == 2:
        out["write_s"] = round(t["s"] - sum(phases.values()), 3)
    shutil.rmtree(target, ignore_errors=True)
    return out


def section_generate(ctx: Context) -> dict[str, Any]:
    """Sampling throughput at batch 32 on the pair's post model (after a warm-up batch)."""
    import layergraft.api as lg
    from layergraft.gen.tasks import load_task

    p = ctx.pair
    model = lg.load_model(p["post"], device=ctx.device, dtype=ctx.a.dtype)
    tasks = load_task("creative")
    prompts = [tasks[i % len(tasks)] for i in range(GEN_BATCH)]
    # distinct ids: one sample of each of 32 prompts is one batch of 32
    prompts = [dataclasses.replace(t, id=f"{t.id}-{i}") for i, t in enumerate(prompts)]
    kw = dict(tokenizer=p["post"], n=1, batch_size=GEN_BATCH, backend="transformers",
              progress=False, seed=0)  # fmt: skip
    try:
        with timed(ctx.device) as tw:
            lg.generate(model, prompts, max_new_tokens=min(8, ctx.a.gen_new_tokens), **kw)
        recs: list[dict[str, Any]] = []
        with Peak(ctx.device) as pk, timed(ctx.device) as t:
            for b in range(ctx.a.gen_batches):
                recs += lg.generate(model, prompts, max_new_tokens=ctx.a.gen_new_tokens,
                                    **{**kw, "seed": b + 1})  # fmt: skip
    finally:
        del model
    tokens = sum(r["num_tokens"] for r in recs)
    out = {
        "model": f"{p['shape']} with {p['layers']} layers (random weights)",
        "batch_size": GEN_BATCH, "batches": ctx.a.gen_batches,
        "max_new_tokens": ctx.a.gen_new_tokens, "tokens": tokens,
        "stopped_early": sum(1 for r in recs if r["finished"]),
        "warmup_s": tw["s"], "seconds": t["s"],
        "tokens_per_s": round(tokens / t["s"], 1),
        "steps_per_s": round(ctx.a.gen_batches * ctx.a.gen_new_tokens / t["s"], 2),
        **pk.as_json(),
    }  # fmt: skip
    if p["layers"] != p["full_layers"]:
        head = p["non_layer_bytes"] / 2  # the head is read every step, the embedding is not
        ratio = (p["full_layers"] * p["layer_bytes"] + head) / (
            p["layers"] * p["layer_bytes"] + head
        )
        out["full_layers"] = p["full_layers"]
        out["full_layers_tokens_per_s"] = round(out["tokens_per_s"] / ratio, 1)
        out["full_layers_note"] = (
            f"step time scaled by the weight bytes read per step ({ratio:.2f}x): decoding at "
            "batch 32 is bound by memory bandwidth and per-layer launch overhead, both per layer"
        )
    return out


# ------------------------------------------------------------------------- the run


class Context:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.a, self.work, self.device = args, work, args.device
        self.t0 = time.perf_counter()
        self.pair: dict[str, Any] = {}
        self.result: dict[str, Any] = {}
        self.current = ""

    def partial(self, data: dict[str, Any]) -> None:
        """Save what the running section has so far (kept if the lease ends inside it)."""
        self.result["sections"][self.current] = {"status": "running", **data}
        self.save()

    def save(self) -> None:
        """The JSON as it stands (atomically: a killed run leaves the last complete one)."""
        self.result["seconds"] = round(time.perf_counter() - self.t0, 1)
        self.result["cpu_seconds"] = round(time.process_time(), 1)  # this process, all threads
        path = Path(self.a.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=2, default=str) + "\n")
        os.replace(tmp, path)


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    from layergraft.version import __version__

    env: dict[str, Any] = {
        "device": device, "torch": torch.__version__, "transformers": transformers.__version__,
        "layergraft": __version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    if device.startswith("cuda"):
        try:
            props = torch.cuda.get_device_properties(torch.device(device))
            env |= {
                "gpu": torch.cuda.get_device_name(torch.device(device)),
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            }
        except Exception as e:  # no usable GPU: every section will say so in its own error
            env["gpu_error"] = f"{type(e).__name__}: {e}"
    return env


SECTIONS: list[tuple[str, Callable[[Context], dict[str, Any]], bool]] = [
    ("toy", section_toy, False),
    ("pair", section_pair, False),
    ("sweep", section_sweep, True),  # True: needs the pair
    ("restore", section_restore, True),
    ("prune", section_prune, True),
    ("generate", section_generate, True),
]


def headline(name: str, r: dict[str, Any]) -> str:
    """One line of a finished section for the table."""
    try:
        if name == "toy":
            return "; ".join(
                f"{dt}: sweep max|diff| {x['sweep']['max_abs_diff']:.2e}, crc {x['crc']['max_abs_diff']:.2e}, "
                f"same pick {all(x['same_selection'].values())}"
                for dt, x in r["runs"].items()
            )  # fmt: skip
        if name == "pair":
            size = r["bytes_per_model"]
            size_text = f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.2f} MB"
            return f"{r['layers']}/{r['full_layers']} layers, {size_text} per model"
        if name == "sweep":
            f = r["full"]
            ex, hv = f.get("exhaustive", {}), f.get("halving", {})
            return (
                f"measured {r['exhaustive']['wall_s']:.1f} s exhaustive, {r['halving']['wall_s']:.1f} s halving; "
                f"full {f['intervals']} intervals: exhaustive ~{ex.get('seconds', float('nan')):.1f} s, "
                f"halving ~{hv.get('seconds', float('nan')):.1f} s, peak {f['peak_memory_mib'] / 1024:.1f} GiB"
            )  # fmt: skip
        if name == "restore":
            return (
                f"restore {r['restore']['gb_per_s']:.2f} GB/s (no hash {r['restore_no_hash']['gb_per_s']:.2f}), "
                f"cp -r {r['copy']['gb_per_s']:.2f} GB/s"
            )  # fmt: skip
        if name == "prune":
            return (
                f"d={r['d']}: calibrate+fit {r['calibrate_and_fit_s']} s, total {r['seconds']} s, "
                f"peak {r.get('peak_gpu_allocated_mib', r['peak_rss_mib'])} MiB"
            )  # fmt: skip
        if name == "generate":
            extra = (
                f" ({r['full_layers']} layers ~{r['full_layers_tokens_per_s']})"
                if "full_layers_tokens_per_s" in r
                else ""
            )
            return f"{r['tokens_per_s']} tokens/s at batch {r['batch_size']}{extra}"
    except (KeyError, TypeError, ValueError) as e:
        return f"({type(e).__name__}: {e})"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)"
    )
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None,
                    help="decoder layers of the pair (default: 8 at --shape 8b, every one at tiny; "
                         "0: the real count)")  # fmt: skip
    ap.add_argument("--dtype", default="auto", help="the pair's compute dtype (auto: bfloat16 on a GPU, float32 on the CPU)")  # fmt: skip
    ap.add_argument("--prompts-n", type=int, default=None, help="CRC prompts of the pair's sweeps")
    ap.add_argument("--toy-prompts-n", type=int, default=None, help="CRC prompts of the toy comparison")  # fmt: skip
    ap.add_argument("--toy-starts", default=None, help="the toy sweep's start layers (all, or e.g. 4,5,6,7)")  # fmt: skip
    ap.add_argument("--calib-tokens", type=int, default=None)
    ap.add_argument("--seqlen", type=int, default=None)
    ap.add_argument("--gen-new-tokens", type=int, default=None)
    ap.add_argument("--gen-batches", type=int, default=None)
    ap.add_argument("--threads", default="auto",
                    help="torch CPU threads (auto: the free cores, layergraft's rule; --threads of the CLI)")  # fmt: skip
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="sections that would start after this many seconds are skipped")  # fmt: skip
    ap.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    ap.add_argument("--work", default=None, help="where the pair is built (default: a temp dir, removed)")  # fmt: skip
    ap.add_argument("--out", default="docs/bench/gpu_check.json")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS[args.shape].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    import torch

    from layergraft.models.threads import apply_threads

    apply_threads(args.threads)  # what the CLI's --threads does; the API leaves torch's default
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    only = set(args.only.split(",")) if args.only else None

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, work)
    ctx.result = {
        "script": "benchmarks/gpu_check.py",
        "args": vars(args),
        "environment": environment(args.device),
        "budget_s": args.budget_s,
        "sections": {},
        "finished": False,
    }
    ctx.save()
    try:
        for name, fn, needs_pair in SECTIONS:
            if only is not None and name not in only and not (name == "pair" and only - {"toy"}):
                continue
            elapsed = time.perf_counter() - ctx.t0
            if elapsed > args.budget_s:
                r: dict[str, Any] = {"status": "skipped", "why": f"budget: {elapsed:.0f} s > --budget-s {args.budget_s:g}"}  # fmt: skip
            elif needs_pair and not ctx.pair:
                r = {"status": "skipped", "why": "no pair (the pair section did not finish)"}
            else:
                print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
                t0, c0 = time.perf_counter(), time.process_time()
                ctx.current = name
                ctx.partial({})
                try:
                    r = {"status": "ok", **fn(ctx)}
                except Exception as e:  # recorded, and the next section runs
                    r = {"status": "error", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
                    print(r["traceback"], file=sys.stderr, flush=True)
                r["section_s"] = round(time.perf_counter() - t0, 1)
                r["section_cpu_s"] = round(time.process_time() - c0, 1)
            ctx.result["sections"][name] = r
            ctx.save()
        ctx.result["finished"] = True
        ctx.save()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\ngpu_check on {ctx.result['environment'].get('gpu', args.device)} "
          f"({args.shape}, {ctx.result['seconds']:.0f} s) -> {args.out}")  # fmt: skip
    for name, r in ctx.result["sections"].items():
        line = headline(name, r) if r["status"] == "ok" else r.get("error") or r.get("why", "")
        print(f"  {name:9s} {r['status']:7s} {r.get('section_s', 0):7.1f} s  {line}")
    return 0 if all(r["status"] == "ok" for r in ctx.result["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
