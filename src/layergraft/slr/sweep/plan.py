"""``sweep --dry-run``: what a sweep will do and what it will cost, before it runs.

Why it must be honest: the plan is what a user reads before committing hours of compute. It
counts units, hybrids and decoder-layer forwards per engine, and the token positions each
forward computes — real tokens, padding, and what packing saved against one padded row per
prompt (``computed`` vs ``unshared``), the continuation positions V_end reads included. It
then times one decoder layer and one head call of the post model on every batch (a warm-up,
then the median of ``REPEATS`` runs, so one slow run on a busy machine does not set the
estimate) and multiplies. Memory is the two models' weights plus one batch's activations and
the head's chunk of logits.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.errors import InputError
from layergraft.models.load import load_model, load_tokenizer
from layergraft.models.runner import HEAD_CHUNK
from layergraft.slr.sweep.engines import Unit, runner_for

_GIB = 1024**3
#: timed runs per measurement (after one warm-up); the median is used
REPEATS = 5


def _median_seconds(fn: Any, repeat: int = REPEATS) -> float:
    fn()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_batch(post_model: Any, adapter: Any, proxy: Any, batch: Any) -> dict[str, float]:
    """Median seconds of one decoder layer and of one hybrid's head (the proxy's reads) on
    ``batch``."""
    run = runner_for(post_model, adapter, batch)
    layer = adapter.layers(post_model)[0]
    h = run.layer(layer, 0, run.hidden0)
    t_layer = _median_seconds(lambda: run.layer(layer, 0, h))
    t_head = _median_seconds(lambda: proxy.score(batch, run, h), repeat=max(REPEATS // 2, 1))
    return {"layer_s": t_layer, "head_s": t_head}


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
) -> dict[str, Any]:
    """The plan as data (the CLI prints :func:`format_plan` of it). ``timings``: one
    :func:`time_batch` per batch."""
    todo = [u for u in units]
    starts = [u for u in todo if u.kind == "start"]
    others = [u for u in todo if u.kind != "start"]
    n_int = sum(len(u.ends) for u in starts)
    per_batch = {
        "prefix-reuse": sum(u.cost(num_layers, True) for u in starts),
        "swap": sum(u.cost(num_layers, False) for u in starts),
    }
    heads = n_int + len(others)
    estimate = {
        engine: round(
            sum(
                (f + len(others) * num_layers) * t["layer_s"] + heads * t["head_s"] for t in timings
            ),
            1,
        )
        for engine, f in per_batch.items()
    }
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
            "repeats": REPEATS,
            "statistic": "median after one warm-up, summed over batches",
        },
        "estimated_seconds": estimate,
        "estimated_peak_memory_gib": round((weights_bytes + activations) / _GIB, 2),
    }  # fmt: skip


def dry_run_plan(
    post: Any, units: list[Unit], done: int, tokenizer: Any, px: Any, placement: dict[str, Any],
    cfg: Any,
) -> dict[str, Any]:  # fmt: skip
    """Load the post model only, time it on every real batch, return ``{"dry_run", "plan"}``
    with the units still to run (``done`` of ``units`` are in the journal already)."""
    if hasattr(px, "score_model"):
        raise InputError("--dry-run needs the crc or ppl proxy, not a custom score function")
    if hasattr(post, "forward"):
        model, tok = post, load_tokenizer(tokenizer)
    else:  # a WorkerSpec
        model = load_model(post.post, **placement)
        tok = load_tokenizer(post.tokenizer)
    adapter = adapter_for_model(model)
    batches = px.batches(tok, next(model.parameters()).device, model)
    params = list(model.parameters())
    plan = sweep_plan(
        units,
        num_layers=adapter.num_layers,
        batches=batches,
        timings=[time_batch(model, adapter, px, b) for b in batches],
        weights_bytes=2 * sum(p.numel() * p.element_size() for p in params),
        hidden=adapter.hidden_size,
        vocab=adapter.vocab_size,
        element_bytes=params[0].element_size(),
        done=done,
    )
    plan["settings"] = cfg.as_json()
    return {"dry_run": True, "plan": plan}


def format_plan(plan: dict[str, Any]) -> str:
    """A few readable lines."""
    lf, est = plan["layer_forwards"], plan["estimated_seconds"]
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
        f"{plan['measured']['layer_s'] * 1e3:.1f} ms, one hybrid's head "
        f"{plan['measured']['head_s'] * 1e3:.1f} ms (all batches)",
        f"estimate: {est['prefix-reuse']:.0f} s with prefix reuse ({est['swap']:.0f} s with "
        f"--no-prefix-reuse), peak memory about {plan['estimated_peak_memory_gib']:.2f} GiB",
    ]
    return "\n".join(lines)
