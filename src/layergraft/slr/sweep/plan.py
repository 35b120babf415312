"""``sweep --dry-run``: what a sweep will do and roughly what it will cost, before it runs.

The plan counts units, intervals and decoder-layer forwards per engine, then times one decoder
layer and the head of the post model on the first real batch and multiplies; memory is the
two models' weights in the compute dtype plus one batch's activations and logits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from layergraft.slr.sweep.engines import Unit
from layergraft.models.runner import LayerRunner

_GIB = 1024**3


def time_layer(post_model: Any, adapter: Any, batch: Any, last_only: bool, repeat: int = 3) -> dict:
    """Seconds of one decoder layer and of one head call on ``batch`` (after a warm-up)."""
    run = LayerRunner(post_model, adapter, batch["input_ids"], batch["attention_mask"])
    layer = adapter.layers(post_model)[0]
    h = run.layer(layer, 0, run.hidden0)
    t0 = time.perf_counter()
    for _ in range(repeat):
        run.layer(layer, 0, h)
    t_layer = (time.perf_counter() - t0) / repeat
    run.logits(h, last_only=last_only)
    t0 = time.perf_counter()
    run.logits(h, last_only=last_only)
    return {"layer_s": t_layer, "head_s": time.perf_counter() - t0}


def sweep_plan(
    units: Sequence[Unit],
    *,
    num_layers: int,
    batches: Sequence[Any],
    timing: dict[str, float],
    weights_bytes: int,
    hidden: int,
    vocab: int,
    element_bytes: int,
    done: int = 0,
) -> dict[str, Any]:
    """The plan as data (the CLI prints :func:`format_plan` of it)."""
    starts = [u for u in units if u.kind == "start"]
    n_int = sum(len(u.ends) for u in starts)
    others = [u for u in units if u.kind != "start"]
    per_batch = {
        "prefix-reuse": sum(u.cost(num_layers, True) for u in starts),
        "swap": sum(u.cost(num_layers, False) for u in starts),
    }
    heads = n_int + len(others)
    n_b = len(batches)
    rows = max(int(b["input_ids"].shape[0]) for b in batches)
    seq = max(int(b["input_ids"].shape[1]) for b in batches)
    estimate = {
        engine: round(
            n_b * ((f + len(others) * num_layers) * timing["layer_s"] + heads * timing["head_s"]), 1
        )
        for engine, f in per_batch.items()
    }
    activations = rows * seq * hidden * element_bytes * 12 + rows * vocab * (element_bytes + 8)
    return {
        "units": len(units),
        "units_done": done,
        "intervals": n_int,
        "references_and_soups": len(others),
        "batches": n_b,
        "rows_per_batch": rows,
        "tokens_per_row": seq,
        "layer_forwards": {k: n_b * (v + len(others) * num_layers) for k, v in per_batch.items()},
        "head_calls": n_b * heads,
        "disk_round_trip": {
            "hybrids_written_and_reloaded": n_int,
            "bytes_each": weights_bytes // 2,
        },
        "measured": {k: round(v, 6) for k, v in timing.items()},
        "estimated_seconds": estimate,
        "estimated_peak_memory_gib": round((weights_bytes + activations) / _GIB, 2),
    }


def format_plan(plan: dict[str, Any]) -> str:
    """A few readable lines."""
    lf, est = plan["layer_forwards"], plan["estimated_seconds"]
    lines = [
        f"{plan['intervals']} intervals in {plan['units']} units ({plan['units_done']} already done), "
        f"plus {plan['references_and_soups']} references/soups; {plan['batches']} batches of "
        f"<= {plan['rows_per_batch']} rows x {plan['tokens_per_row']} tokens",
        f"decoder-layer forwards: prefix reuse {lf['prefix-reuse']:,}, swap from the embeddings "
        f"{lf['swap']:,}; head calls {plan['head_calls']:,}; a disk round trip would write and "
        f"reload {plan['disk_round_trip']['hybrids_written_and_reloaded']} hybrids of "
        f"{plan['disk_round_trip']['bytes_each'] / _GIB:.2f} GiB",
        f"measured on the first batch: one layer {plan['measured']['layer_s'] * 1e3:.1f} ms, "
        f"head {plan['measured']['head_s'] * 1e3:.1f} ms",
        f"estimate: {est['prefix-reuse']:.0f} s with prefix reuse ({est['swap']:.0f} s with "
        f"--no-prefix-reuse), peak memory about {plan['estimated_peak_memory_gib']:.2f} GiB",
    ]
    return "\n".join(lines)
