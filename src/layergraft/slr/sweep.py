"""``sweep``: score every restored interval on the CRC proxy and choose one (the paper's rule).

The base and post models are loaded once; the two references, then every interval
``[s, e)`` (hybrids made in memory, never written) and, with ``method="soup"|"both"``, 21
weight soups are scored on the CRC proxy (exact first-token estimator); the rule of
:mod:`layergraft.slr.selection` picks the interval. The results dict is written as
``results.json`` plus CSV, heatmaps and a Pareto plot (:mod:`layergraft.report.sweep`), and
the selected hybrid can be written to disk at once (``restore_best``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.checkpoint.atomic import check_output_target
from layergraft.errors import InputError
from layergraft.models.load import load_model, load_tokenizer, open_loadable
from layergraft.ranges import Range, format_range
from layergraft.report.sweep import write_sweep_outputs
from layergraft.slr import crc as C
from layergraft.slr.crc_prompts import load_crc_prompts
from layergraft.slr.engines import enumerate_intervals, sweep_intervals_fast, sweep_intervals_swap
from layergraft.slr.pair import check_compatible
from layergraft.slr.restore import restore
from layergraft.slr.selection import pareto_front, select_interval
from layergraft.slr.soup import souped

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
SOUP_ALPHAS = tuple(round(i * 0.05, 2) for i in range(21))
METHODS = ("slr", "soup", "both")


def _scores_json(res: Any) -> dict[str, Any]:
    return {**{k: res.mean[k] for k in ("V", "H", "H_norm")}, "by_category": res.by_category}


def _interval_row(r: Range, res: Any) -> dict[str, Any]:
    return {"interval": format_range(r), "start": r[0], "end": r[1], **_scores_json(res)}


class _Scores:
    """Adapts a user score dict to the ``.mean`` / ``.by_category`` shape of a CrcResult."""

    def __init__(self, d: dict[str, Any]) -> None:
        missing = [k for k in ("V", "H", "H_norm") if k not in d]
        if missing:
            raise InputError(
                f"custom score function must return V, H and H_norm; {missing[0]} is missing"
            )
        self.mean = {k: float(d[k]) for k in ("V", "H", "H_norm")}
        self.by_category = d.get("by_category", {})


def _load_pair(
    base: Any, post: Any, tokenizer: Any, placement: dict[str, Any]
) -> tuple[Any, Any, Any, dict[str, str]]:
    """``(base_model, post_model, tokenizer, inputs)`` from paths (checked as a pair before
    anything loads) or from models already in memory (``tokenizer`` then required)."""
    if hasattr(post, "forward"):
        if tokenizer is None:
            raise InputError(
                "a sweep of in-memory models needs the post model's tokenizer: pass tokenizer="
            )
        return base, post, load_tokenizer(tokenizer), {"base": "in-memory", "post": "in-memory"}
    base_ck, post_ck = open_loadable(base), open_loadable(post)
    check_compatible(base_ck, post_ck)
    post_model = load_model(post_ck, **placement)
    base_model = load_model(base_ck, **placement)
    tok = load_tokenizer(tokenizer if tokenizer is not None else post_ck.path)
    return base_model, post_model, tok, {"base": str(base_ck.origin), "post": str(post_ck.origin)}


def sweep(
    base: Any,
    post: Any,
    out: PathLike | None = None,
    *,
    tokenizer: Any = None,
    prompts: str | Path | Iterable[str] = "all",
    min_len: int = 1,
    max_len: int | None = None,
    starts: Sequence[int] | None = None,
    validity_ratio: float = 0.9,
    diversity_key: str = "H_norm",
    method: str = "slr",
    prefix_reuse: bool = True,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    restore_best: PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    score_model: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score every interval ``[s, e)`` on the CRC proxy (exact estimator) and select one.

    ``base``/``post``: paths (directory, hub id, ``.gguf``) or loaded models (then pass the
    post model's ``tokenizer``). ``method``: ``"slr"`` (intervals), ``"soup"`` (21 alphas) or
    ``"both"``. ``score_model`` replaces the CRC proxy with any function of a model returning
    ``{"V":..,"H":..,"H_norm":..}`` (scored through the in-memory swap). Returns the results
    dict (also written to ``out``).
    """
    if method not in METHODS:
        raise InputError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if diversity_key not in ("H", "H_norm"):
        raise InputError(f"diversity key {diversity_key!r} is not H or H_norm")
    for target in (out, restore_best):
        if target is not None:  # fail before minutes of scoring, not after
            check_output_target(target, force=force)
    if restore_best is not None and hasattr(post, "forward"):
        raise InputError("--restore-best needs base/post given as paths, not in-memory models")
    items = load_crc_prompts(prompts)  # a bad prompt file fails before models load
    t0 = time.perf_counter()
    placement = {"device": device, "dtype": dtype, "device_map": device_map}
    base_model, post_model, tok, inputs = _load_pair(base, post, tokenizer, placement)
    t_load = time.perf_counter() - t0

    adapter = adapter_for_model(post_model)
    intervals = enumerate_intervals(
        adapter.num_layers, min_len=min_len, max_len=max_len, starts=starts
    )
    batch = C.prepare_batch(tok, items, device=next(post_model.parameters()).device)

    def score_full(model: Any) -> Any:
        if score_model is not None:
            return _Scores(score_model(model))
        return C.score_logits(batch, C.forward_last_logits(model, batch))

    from tqdm.auto import tqdm

    n_steps = 2 + len(intervals) * (method != "soup") + len(SOUP_ALPHAS) * (method != "slr")
    bar = tqdm(total=n_steps, desc="CRC sweep", unit="model", disable=not progress)
    t1 = time.perf_counter()
    refs = {"post": score_full(post_model)}
    bar.update(1)
    refs["base"] = score_full(base_model)
    bar.update(1)
    results: dict[str, Any] = {
        "proxy": "crc" if score_model is None else "custom",
        "estimator": "exact",
        "method": method,
        "num_layers": adapter.num_layers,
        "family": adapter.family,
        "inputs": inputs,
        "prompts": {
            "source": str(prompts),
            "n": len(items),
            "categories": sorted({p.category for p in items}),
        },
        "references": {k: _scores_json(v) for k, v in refs.items()},
        "rule": {
            "validity_ratio": validity_ratio,
            "diversity_key": diversity_key,
            "text": f"max {diversity_key} s.t. V >= {validity_ratio:g}·V_post",
        },
        "range_convention": "0-based, half-open [start, end)",
        "intervals": [],
    }
    timing: dict[str, Any] = {
        "load_s": round(t_load, 3),
        "references_s": round(time.perf_counter() - t1, 3),
    }
    v_post = refs["post"].mean["V"]
    if method in ("slr", "both"):
        t2 = time.perf_counter()
        fast = prefix_reuse and score_model is None
        if fast:
            scores = sweep_intervals_fast(
                post_model, base_model, adapter, batch, lambda lg: C.score_logits(batch, lg),
                intervals, progress=bar.update,
            )  # fmt: skip
        else:
            scores = sweep_intervals_swap(
                post_model, base_model, score_full, intervals, adapter=adapter, progress=bar.update
            )
        timing["intervals_s"] = round(time.perf_counter() - t2, 3)
        timing["engine"] = "prefix-reuse" if fast else "swap"
        results.update(_select_interval(intervals, scores, v_post, validity_ratio, diversity_key))
    if method in ("soup", "both"):
        t3 = time.perf_counter()
        rows = []
        for a in SOUP_ALPHAS:
            with souped(post_model, base_model, a):
                rows.append({"alpha": a, **_scores_json(score_full(post_model))})
            bar.update(1)
        timing["soup_s"] = round(time.perf_counter() - t3, 3)
        ssel = select_interval(
            {(i, i): r for i, r in enumerate(rows)}, v_post,
            validity_ratio=validity_ratio, diversity_key=diversity_key,
        )  # fmt: skip
        results["soup"] = {
            "alphas": rows,
            "formula": "(1 - alpha) * post + alpha * base",
            "selected": rows[ssel.interval[0]] if ssel.interval else None,
        }
        if method == "soup":
            results["selection"] = {**ssel.as_json(), "interval": None}
            results["pareto"] = []
    bar.close()
    results["timing"] = timing
    if restore_best is not None and results.get("selected"):
        restore(
            inputs["base"], inputs["post"], results["selected"]["interval"], restore_best,
            force=force, progress=progress,
        )  # fmt: skip
        results["restored_to"] = str(restore_best)
    if out is not None:
        write_sweep_outputs(results, Path(out), force=force)
    return results


def _select_interval(
    intervals: Sequence[Range],
    scores: dict[Range, Any],
    v_post: float,
    validity_ratio: float,
    diversity_key: str,
) -> dict[str, Any]:
    """The interval rows, the selection under the rule, the selected row and the Pareto front."""
    rows = [_interval_row(r, scores[r]) for r in intervals]
    flat = {r: scores[r].mean for r in intervals}
    sel = select_interval(flat, v_post, validity_ratio=validity_ratio, diversity_key=diversity_key)
    chosen = format_range(sel.interval) if sel.interval else None
    return {
        "intervals": rows,
        "selection": sel.as_json(),
        "selected": next((row for row in rows if row["interval"] == chosen), None),
        "pareto": pareto_front(
            {format_range(r): (flat[r]["V"], flat[r][diversity_key]) for r in intervals}
        ),
    }
