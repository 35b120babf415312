"""``sweep --dry-run``: what a sweep will do and what it will cost, before it runs.

Why it must be honest: the plan is what a user reads before committing hours of compute. It
counts units, hybrids and decoder-layer forwards per engine, and the token positions each
forward computes — real tokens, padding, and what packing saved against one padded row per
prompt (``computed`` vs ``unshared``), the continuation positions V_end reads included. It
then times one decoder layer and one head call of the post model on every batch (a warm-up,
then the median of ``REPEATS`` runs, so one slow run on a busy machine does not set the
estimate) and multiplies. Fixed costs are measured too, not assumed away: loading the post
model (the base is the same architecture and size, so it counts twice), preparing the
batches and building a batch's layer runner (once per batch for all start units, once per
reference or soup); on a small model they are most of the sweep (on the toy pair, leaving
them out put the estimate 41% under the measured time). The head is timed twice when V_end is on: reading what the post
model needs, and reading every continuation. V_end reads the position after a character only
where that character is likely enough, so a collapsed post model reads few and a diverse
hybrid nearly all; on Gemma's 262k vocabulary that difference doubled the real cost of a
sweep against a single-figure plan, so the plan gives the range. Memory is the two models' weights plus one batch's activations and
the head's chunk of logits; on a CPU, where the models live in the process's own memory, also
the process before any model (Python, torch: measured) and one checkpoint's files, which are
mapped while a model loads (a bfloat16 checkpoint loaded as float32 at the Llama-3.2-1B shape:
without these two the plan was 21% under the measured peak RSS).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.errors import InputError
from layergraft.models.load import load_model, load_tokenizer
from layergraft.models.runner import HEAD_CHUNK
from layergraft.slr.hybrid.diff import diff_seconds
from layergraft.slr.sweep.engines import Unit, carried_prefix_layers, runner_for
from layergraft.slr.sweep.halving import MIN_STAGE1, stage_prompts

_GIB = 1024**3
#: timed runs per measurement (after one warm-up); the median is used
REPEATS = 5


def process_rss() -> int:
    """This process's resident memory now, in bytes (0 where the system does not say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def checkpoint_bytes(path: Any) -> int:
    """Bytes of a local checkpoint's weight files (a directory's safetensors, or one file);
    0 for a hub id, whose files are only known once downloaded."""
    p = Path(str(path))
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.glob("*.safetensors"))
    return 0


def _wait(device: Any) -> None:
    """Wait for the work queued on a CUDA ``device``: its kernels run asynchronously, so
    without this a layer's time is only the time to launch it."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _median_seconds(fn: Any, repeat: int = REPEATS, device: Any = None) -> float:
    fn()  # warm-up: allocator, kernels, caches
    _wait(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _wait(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_batch(post_model: Any, adapter: Any, proxy: Any, batch: Any) -> dict[str, float]:
    """Median seconds of one decoder layer and of one hybrid's head (the proxy's reads) on
    ``batch``."""
    run = runner_for(post_model, adapter, batch)
    layer = adapter.layers(post_model)[0]
    dev = next(layer.parameters()).device  # on a GPU every time waits for its kernels
    h = run.layer(layer, 0, run.hidden0)
    t_layer = _median_seconds(lambda: run.layer(layer, 0, h), device=dev)
    few = max(REPEATS // 2, 1)
    t_head = _median_seconds(lambda: proxy.score(batch, run, h), repeat=few, device=dev)
    t_all = t_head
    if getattr(proxy, "kind", None) == "crc" and getattr(batch, "ends", ()):
        t_all = _median_seconds(
            lambda: proxy.score(batch, run, h, read_all=True), repeat=few, device=dev
        )
    t_runner = _median_seconds(
        lambda: runner_for(post_model, adapter, batch), repeat=few, device=dev
    )
    return {
        "layer_s": t_layer, "head_s": t_head, "head_all_s": max(t_all, t_head),
        "runner_s": t_runner,
    }  # fmt: skip


def _positions(batch: Any) -> dict[str, int]:
    if hasattr(batch, "packed"):
        return batch.packed.stats.as_json()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = int(ids.numel())
    real = int(mask.sum())
    return {
        "rows": int(ids.shape[0]), "width": int(ids.shape[1]), "computed_positions": n,
        "real_positions": real, "padded_positions": n - real, "unshared_positions": n,
        "padding_share": round((n - real) / n, 4) if n else 0.0,
    }  # fmt: skip


def sweep_plan(
    units: Sequence[Unit],
    *,
    num_layers: int,
    batches: Sequence[Any],
    timings: Sequence[dict[str, float]],
    weights_bytes: int,
    hidden: int,
    vocab: int,
    element_bytes: int,
    done: int = 0,
    setup_s: float = 0.0,
    host_bytes: int = 0,
    diff_s: float = 0.0,
) -> dict[str, Any]:
    """The plan as data (the CLI prints :func:`format_plan` of it). ``timings``: one
    :func:`time_batch` per batch; ``setup_s``: the measured seconds of loading both models
    and preparing the batches; ``host_bytes``: what a CPU run holds besides the weights and
    activations (the process before loading, plus one checkpoint's mapped files); ``diff_s``:
    the weight diff a CRC sweep of checkpoints ends with (:func:`~layergraft.slr.hybrid.diff.diff_seconds`)."""
    todo = [u for u in units]
    starts = [u for u in todo if u.kind == "start"]
    others = [u for u in todo if u.kind != "start"]
    n_int = sum(len(u.ends) for u in starts)
    per_batch = {
        # the post prefix is carried from start to start (engines.PostPrefix)
        "prefix-reuse": sum(u.cost(num_layers, True) - u.start for u in starts)
        + carried_prefix_layers(starts),
        "swap": sum(u.cost(num_layers, False) for u in starts),
    }
    runners = {"prefix-reuse": 1 + len(others), "swap": n_int + len(others)}
    heads = n_int + len(others)

    def seconds(engine: str, head: str) -> float:
        f = per_batch[engine]
        per = (
            (f + len(others) * num_layers) * t["layer_s"] + heads * t[head]
            + runners[engine] * t.get("runner_s", 0.0)
            for t in timings
        )  # fmt: skip
        return round(setup_s + diff_s + sum(per), 1)

    estimate = {engine: seconds(engine, "head_s") for engine in per_batch}
    every_read = {engine: seconds(engine, "head_all_s") for engine in per_batch}
    pos = [_positions(b) for b in batches]
    total = {k: sum(p[k] for p in pos) for k in ("computed_positions", "real_positions",
                                                 "padded_positions", "unshared_positions")}  # fmt: skip
    total["padding_share"] = (
        round(total["padded_positions"] / total["computed_positions"], 4)
        if total["computed_positions"]
        else 0.0
    )
    width = max(p["width"] for p in pos)
    rows = max(p["rows"] for p in pos)
    activations = rows * width * hidden * element_bytes * 12 + HEAD_CHUNK * vocab * (
        element_bytes + 8
    )
    return {
        "units": len(units),
        "units_done": done,
        "intervals": n_int,
        "references_and_soups": len(others),
        "batches": len(batches),
        "positions_per_forward": total,
        "positions_by_batch": pos,
        "layer_forwards": {k: len(batches) * (v + len(others) * num_layers) for k, v in per_batch.items()},
        "head_calls": len(batches) * heads,
        "disk_round_trip": {"hybrids_written_and_reloaded": n_int, "bytes_each": weights_bytes // 2},
        "measured": {
            "layer_s": round(sum(t["layer_s"] for t in timings), 6),
            "head_s": round(sum(t["head_s"] for t in timings), 6),
            "head_all_s": round(sum(t["head_all_s"] for t in timings), 6),
            "runner_s": round(sum(t.get("runner_s", 0.0) for t in timings), 6),
            "setup_s": round(setup_s, 3),
            "weight_diff_s": round(diff_s, 3),
            "repeats": REPEATS,
            "statistic": "median after one warm-up, summed over batches",
        },
        "estimated_seconds": estimate,
        # the same with every V_end continuation read: what diverse hybrids approach
        "estimated_seconds_every_read": every_read,
        "estimated_peak_memory_gib": round((weights_bytes + activations + host_bytes) / _GIB, 2),
        "memory_parts_gib": {
            "weights": round(weights_bytes / _GIB, 2),
            "activations": round(activations / _GIB, 2),
            "process_and_loading": round(host_bytes / _GIB, 2),
        },
    }  # fmt: skip


def dry_run_plan(
    post: Any, units: list[Unit], done: int, tokenizer: Any, px: Any, placement: dict[str, Any],
    cfg: Any,
) -> dict[str, Any]:  # fmt: skip
    """Load the post model only, time it on every real batch, return ``{"dry_run", "plan"}``
    with the units still to run (``done`` of ``units`` are in the journal already)."""
    if hasattr(px, "score_model"):
        raise InputError("--dry-run needs the crc or ppl proxy, not a custom score function")
    t0 = time.perf_counter()
    host, diffing = 0, 0.0
    if hasattr(post, "forward"):  # in memory: the sweep loads nothing either
        model, tok = post, load_tokenizer(tokenizer)
        loading = 0.0
    else:  # a WorkerSpec: the sweep loads the base too, the same architecture and size
        before = process_rss()
        model = load_model(post.post, **placement)
        tok = load_tokenizer(post.tokenizer)
        loading = time.perf_counter() - t0
        if next(model.parameters()).device.type == "cpu":
            host = before + checkpoint_bytes(post.post)
        if getattr(px, "kind", None) == "crc":  # run.py diffs checkpoints after a CRC sweep
            diffing = diff_seconds(post.base, post.post)
    adapter = adapter_for_model(model)
    t0 = time.perf_counter()
    batches = px.batches(tok, next(model.parameters()).device, model)
    preparing = time.perf_counter() - t0
    params = list(model.parameters())
    shape = {
        "num_layers": adapter.num_layers,
        "weights_bytes": 2 * sum(p.numel() * p.element_size() for p in params),
        "hidden": adapter.hidden_size,
        "vocab": adapter.vocab_size,
        "element_bytes": params[0].element_size(),
    }
    plan = sweep_plan(
        units, batches=batches, timings=[time_batch(model, adapter, px, b) for b in batches],
        done=done, setup_s=2 * loading + preparing, host_bytes=host, diff_s=diffing, **shape,
    )  # fmt: skip
    if getattr(cfg, "search", None) == "halving" and getattr(px, "kind", None) == "crc":
        plan["halving"] = halving_estimate(
            units, px, cfg.seed, (model, adapter, tok), shape, 2 * loading + preparing + diffing
        )
    plan["settings"] = cfg.as_json()
    return {"dry_run": True, "plan": plan}


def halving_estimate(
    units: Sequence[Unit], px: Any, seed: int, loaded: tuple[Any, Any, Any],
    shape: dict[str, Any], setup_s: float,
) -> dict[str, Any] | None:  # fmt: skip
    """What ``--search halving`` costs (:mod:`.halving`): every unit on the seeded stage-1
    prompts, then the references and the survivors on the rest. How many survive is known
    only after stage 1, so the estimate is a range: from the references alone (what remains
    when nearly every candidate is dropped) to every unit (nothing dropped), each stage's
    batches prepared and timed as the search will run them. None where the search falls back
    to exhaustive (too few prompts)."""
    model, adapter, tok = loaded
    cats = [p.category for p in px.prompts]
    first, rest = stage_prompts(cats, seed) if len(cats) >= MIN_STAGE1 else ((), ())
    if not rest:
        return None
    stages = []
    for pos in (first, rest):
        t0 = time.perf_counter()
        sub = px.subset(pos)
        bs = sub.batches(tok, next(model.parameters()).device, model)
        setup_s += time.perf_counter() - t0
        stages.append((bs, [time_batch(model, adapter, sub, b) for b in bs]))
    refs = [u for u in units if u.kind == "reference"]

    def cost(us: Sequence[Unit], stage: int, key: str) -> float:
        bs, timings = stages[stage]
        return sweep_plan(us, batches=bs, timings=timings, **shape)[key]["prefix-reuse"]

    low_key, high_key = "estimated_seconds", "estimated_seconds_every_read"
    stage1 = (cost(units, 0, low_key), cost(units, 0, high_key))
    low = setup_s + stage1[0] + cost(refs, 1, low_key)
    high = setup_s + stage1[1] + cost(units, 1, high_key)
    return {
        "stage1_prompts": len(first),
        "stage2_prompts": len(rest),
        "estimated_seconds": [round(low, 1), round(high, 1)],
        "range": "stage 2 for the references only .. for every candidate",
    }


def _span(low: dict[str, float], high: dict[str, float], engine: str) -> str:
    a, b = low[engine], high[engine]
    return f"{a:.0f}" if b <= a else f"{a:.0f}–{b:.0f}"


def format_plan(plan: dict[str, Any]) -> str:
    """A few readable lines."""
    lf, est, m = plan["layer_forwards"], plan["estimated_seconds"], plan["measured"]
    top = plan.get("estimated_seconds_every_read", est)
    pos = plan["positions_per_forward"]
    saved = (
        1 - pos["computed_positions"] / pos["unshared_positions"]
        if pos["unshared_positions"]
        else 0
    )
    lines = [
        f"{plan['intervals']} intervals in {plan['units']} units ({plan['units_done']} already "
        f"done), plus {plan['references_and_soups']} references/soups; {plan['batches']} batch(es)",
        f"token positions per forward: {pos['computed_positions']:,} computed for "
        f"{pos['real_positions']:,} real ({pos['padding_share']:.1%} padding); one padded-free row "
        f"per prompt would hold {pos['unshared_positions']:,} (shared prefixes save {saved:.0%})",
        f"decoder-layer forwards: prefix reuse {lf['prefix-reuse']:,}, swap from the embeddings "
        f"{lf['swap']:,}; head calls {plan['head_calls']:,}; a disk round trip would write and "
        f"reload {plan['disk_round_trip']['hybrids_written_and_reloaded']} hybrids of "
        f"{plan['disk_round_trip']['bytes_each'] / _GIB:.2f} GiB",
        f"measured (median of {plan['measured']['repeats']} after a warm-up): one layer "
        f"{m['layer_s'] * 1e3:.1f} ms, one hybrid's head {m['head_s'] * 1e3:.1f} ms (all "
        "batches)"
        + (
            f", {m['head_all_s'] * 1e3:.1f} ms reading every V_end continuation"
            if m["head_all_s"] > m["head_s"]
            else ""
        ),  # fmt: skip
        f"estimate: {_span(est, top, 'prefix-reuse')} s with prefix reuse, "
        f"{m.get('setup_s', 0):.1f} s of it loading both models and preparing the batches"
        + (f", {m['weight_diff_s']:.1f} s the weight diff" if m.get("weight_diff_s") else "")
        + " "
        f"({_span(est, top, 'swap')} s with --no-prefix-reuse), peak memory about "
        f"{plan['estimated_peak_memory_gib']:.2f} GiB",
    ]
    hv = plan.get("halving")
    if hv:
        lines.append(
            f"--search halving: {hv['estimated_seconds'][0]:.0f}–{hv['estimated_seconds'][1]:.0f} s "
            f"(every candidate on {hv['stage1_prompts']} prompts, then the references up to every "
            f"candidate on the other {hv['stage2_prompts']}: how many survive is known after stage 1)"
        )
    if top["prefix-reuse"] > est["prefix-reuse"]:
        lines.append(
            "  (the low end: hybrids as collapsed as the post model; the high end: hybrids "
            "diverse enough that V_end reads every continuation)"
        )
    return "\n".join(lines)
