"""Selective Layer Restoration, end to end: CRC scoring, the all-interval sweep, selection.

``sweep`` loads the base and post models once, scores the two references and every
interval on the CRC proxy (hybrids made in memory, never written), applies the paper's rule,
and writes results.json / results.csv / heatmaps / Pareto plot. ``crc`` scores one model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.ranges import Range, format_range

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
SOUP_ALPHAS = tuple(round(i * 0.05, 2) for i in range(21))


def _result_row(r: Range, res: Any) -> dict[str, Any]:
    return {
        "interval": format_range(r),
        "start": r[0],
        "end": r[1],
        **{k: res.mean[k] for k in ("V", "H", "H_norm")},
        "by_category": res.by_category,
    }


def _ref_row(res: Any) -> dict[str, Any]:
    return {**{k: res.mean[k] for k in ("V", "H", "H_norm")}, "by_category": res.by_category}


def crc(
    model: Any,
    tokenizer: Any = None,
    *,
    prompts: str | Path | Iterable[str] = "all",
    estimator: str = "exact",
    samples: int = 32,
    temperature: float = 1.0,
    min_p: float = 0.1,
    seed: int = 0,
    batch_size: int = 64,
    dtype: str | None = "auto",
    device: str | None = None,
) -> dict[str, Any]:
    """CRC validity/diversity of one model (a path/hub id, or a loaded model + tokenizer)."""
    from layergraft.proxy import crc as crcmod

    if estimator not in ("exact", "sample"):
        raise InputError(
            f"--estimator {estimator!r} is not 'exact' or 'sample'; choose one of them"
        )
    items = crcmod.load_crc_prompts(prompts)  # a bad prompt file fails before the model loads
    if not hasattr(model, "forward"):
        from layergraft.loading import load_causal_lm

        model, tokenizer, _ = load_causal_lm(model, dtype=dtype, device=device)
    if estimator == "exact":
        res = crcmod.crc_exact(model, tokenizer, items, batch_size=batch_size)
    else:  # "sample" (checked above)
        res = crcmod.crc_sampled(
            model,
            tokenizer,
            items,
            samples=samples,
            temperature=temperature,
            min_p=min_p,
            seed=seed,
            batch_size=batch_size,
        )
    out = res.to_dict()
    out["estimator"] = estimator
    if estimator == "sample":
        out["settings"] = {
            "samples": samples,
            "temperature": temperature,
            "min_p": min_p,
            "seed": seed,
        }
    return out


def sweep(
    base: Any,
    post: Any,
    out: PathLike | None = None,
    *,
    prompts: str | Path | Iterable[str] = "all",
    min_len: int = 1,
    max_len: int | None = None,
    starts: Sequence[int] | None = None,
    validity_ratio: float = 0.9,
    diversity_key: str = "H_norm",
    method: str = "slr",
    prefix_reuse: bool = True,
    dtype: str | None = "auto",
    device: str | None = None,
    device_map: Any = None,
    restore_best: PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    score_model: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score every interval ``[s, e)`` on the CRC proxy (exact estimator) and select one.

    ``method``: ``"slr"`` (intervals), ``"soup"`` (21 alphas) or ``"both"``. ``score_model``
    replaces the CRC proxy with any function of a model returning ``{"V":..,"H":..,"H_norm":..}``
    (scored through the in-memory swap). Returns the results dict (also written to ``out``).
    """
    from layergraft.loading import load_causal_lm
    from layergraft.surgery.restore import check_compatible

    if method not in ("slr", "soup", "both"):
        raise InputError(f"--method {method!r} is not one of slr, soup, both")
    if diversity_key not in ("H", "H_norm"):
        raise InputError(f"diversity key {diversity_key!r} is not H or H_norm")
    from layergraft.io.atomic import check_output_target

    for target in (out, restore_best):
        if target is not None:  # fail before minutes of scoring, not after
            check_output_target(target, force=force)
    if score_model is None:
        from layergraft.proxy import crc as crcmod

        crcmod.load_crc_prompts(prompts)  # likewise a bad prompt file, before loading models
    t0 = time.perf_counter()
    if hasattr(post, "forward"):
        post_model, tokenizer = post, None
        base_model = base
        base_ck = post_ck = None
    else:
        from layergraft.loading import open_loadable

        base_ck, post_ck = open_loadable(base), open_loadable(post)
        check_compatible(base_ck, post_ck)
        post_model, tokenizer, _ = load_causal_lm(
            post_ck, dtype=dtype, device=device, device_map=device_map
        )
        base_model, _, _ = load_causal_lm(
            base_ck, dtype=dtype, device=device, device_map=device_map, with_tokenizer=False
        )
    if tokenizer is None:
        raise InputError(
            "sweep needs the post model's tokenizer; pass model paths, or use sweep_models()"
        )
    return sweep_models(
        base_model,
        post_model,
        tokenizer,
        out,
        prompts=prompts,
        min_len=min_len,
        max_len=max_len,
        starts=starts,
        validity_ratio=validity_ratio,
        diversity_key=diversity_key,
        method=method,
        prefix_reuse=prefix_reuse,
        progress=progress,
        score_model=score_model,
        inputs={
            "base": str(base_ck.origin) if base_ck else "in-memory",
            "post": str(post_ck.origin) if post_ck else "in-memory",
        },
        restore_best=restore_best,
        force=force,
        load_seconds=time.perf_counter() - t0,
    )


def sweep_models(
    base_model: Any,
    post_model: Any,
    tokenizer: Any,
    out: PathLike | None = None,
    *,
    prompts: str | Path | Iterable[str] = "all",
    min_len: int = 1,
    max_len: int | None = None,
    starts: Sequence[int] | None = None,
    validity_ratio: float = 0.9,
    diversity_key: str = "H_norm",
    method: str = "slr",
    prefix_reuse: bool = True,
    progress: bool = True,
    score_model: Callable[[Any], dict[str, Any]] | None = None,
    inputs: dict[str, str] | None = None,
    restore_best: PathLike | None = None,
    force: bool = False,
    load_seconds: float = 0.0,
) -> dict[str, Any]:
    """:func:`sweep` on models already in memory (the post model's tokenizer given)."""
    from tqdm.auto import tqdm

    from layergraft.arch import adapter_for_model
    from layergraft.proxy import crc as crcmod
    from layergraft.proxy.sweep import (
        enumerate_intervals,
        pareto_front,
        select_interval,
        sweep_intervals_fast,
        sweep_intervals_swap,
    )
    from layergraft.surgery.soup import souped

    t0 = time.perf_counter()
    adapter = adapter_for_model(post_model)
    L = adapter.num_layers
    intervals = enumerate_intervals(L, min_len=min_len, max_len=max_len, starts=starts)
    items = crcmod.load_crc_prompts(prompts)
    batch = crcmod.prepare_batch(tokenizer, items, device=next(post_model.parameters()).device)

    def score_logits(logits: Any) -> Any:
        return crcmod.score_logits(batch, logits)

    def score_full(model: Any) -> Any:
        if score_model is not None:
            return _Scores(score_model(model))
        return crcmod.score_logits(batch, crcmod.forward_last_logits(model, batch))

    n_steps = (
        2
        + (len(intervals) if method in ("slr", "both") else 0)
        + (len(SOUP_ALPHAS) if method in ("soup", "both") else 0)
    )
    bar = tqdm(total=n_steps, desc="CRC sweep", unit="model", disable=not progress)
    refs = {"post": score_full(post_model)}
    bar.update(1)
    refs["base"] = score_full(base_model)
    bar.update(1)
    t_ref = time.perf_counter() - t0

    results: dict[str, Any] = {
        "proxy": "crc" if score_model is None else "custom",
        "estimator": "exact",
        "method": method,
        "num_layers": L,
        "family": adapter.family,
        "inputs": inputs or {},
        "prompts": {
            "source": str(prompts),
            "n": len(items),
            "categories": sorted({p.category for p in items}),
        },
        "references": {k: _ref_row(v) for k, v in refs.items()},
        "rule": {
            "validity_ratio": validity_ratio,
            "diversity_key": diversity_key,
            "text": f"max {diversity_key} s.t. V >= {validity_ratio:g}·V_post",
        },
        "range_convention": "0-based, half-open [start, end)",
        "intervals": [],
    }
    timing: dict[str, float] = {"load_s": round(load_seconds, 3), "references_s": round(t_ref, 3)}
    if method in ("slr", "both"):
        t1 = time.perf_counter()
        if prefix_reuse and score_model is None:
            scores = sweep_intervals_fast(
                post_model, base_model, adapter, batch, score_logits, intervals, progress=bar.update
            )
        else:
            scores = sweep_intervals_swap(
                post_model, base_model, score_full, intervals, adapter=adapter, progress=bar.update
            )
        timing["intervals_s"] = round(time.perf_counter() - t1, 3)
        timing["engine"] = "prefix-reuse" if prefix_reuse and score_model is None else "swap"  # type: ignore[assignment]
        results["intervals"] = [_result_row(r, scores[r]) for r in intervals]
        flat = {r: scores[r].mean for r in intervals}
        sel = select_interval(
            flat, refs["post"].mean["V"], validity_ratio=validity_ratio, diversity_key=diversity_key
        )
        results["selection"] = sel.as_json()
        results["selected"] = next(
            (
                row
                for row in results["intervals"]
                if sel.interval and row["interval"] == format_range(sel.interval)
            ),
            None,
        )
        front = pareto_front(
            {format_range(r): (flat[r]["V"], flat[r][diversity_key]) for r in intervals}
        )
        results["pareto"] = front
    if method in ("soup", "both"):
        t2 = time.perf_counter()
        rows = []
        for a in SOUP_ALPHAS:
            with souped(post_model, base_model, a):
                res = score_full(post_model)
            rows.append({"alpha": a, **_ref_row(res)})
            bar.update(1)
        timing["soup_s"] = round(time.perf_counter() - t2, 3)
        flat_soup = {(i, i): r for i, r in enumerate(rows)}
        ssel = select_interval(
            flat_soup,
            refs["post"].mean["V"],
            validity_ratio=validity_ratio,
            diversity_key=diversity_key,
        )
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
        if inputs is None or "in-memory" in inputs.values():
            raise InputError("--restore-best needs base/post given as paths, not in-memory models")
        from layergraft.api import restore

        restore(
            inputs["base"],
            inputs["post"],
            results["selected"]["interval"],
            restore_best,
            force=force,
            progress=progress,
        )
        results["restored_to"] = str(restore_best)
    if out is not None:
        write_sweep_outputs(results, Path(out), force=force)
    return results


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


def write_sweep_outputs(results: dict[str, Any], out: Path, *, force: bool = False) -> Path:
    """results.json, results.csv, heatmaps.png, pareto.png and summary.md, atomically."""
    from layergraft.io.atomic import atomic_dir
    from layergraft.report import plot_pareto, plot_sweep_heatmaps, sweep_table, write_sweep_csv

    with atomic_dir(out, force=force) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_sweep_csv(results, tmp / "results.csv")
        if results["intervals"]:
            plot_sweep_heatmaps(results, tmp / "heatmaps.png")
        plot_pareto(results, tmp / "pareto.png")
        (tmp / "summary.md").write_text(sweep_table(results) + "\n")
    return out


# ---------------------------------------------------------------------------- PPL proxy


class _Ppl:
    """Perplexity of one model/hybrid in the ``.mean`` shape the sweep engines pass around."""

    def __init__(self, nll_sum: float, n: int) -> None:
        import math

        self.mean = {"ppl": math.exp(nll_sum / n), "nll": nll_sum / n, "tokens": n}
        self.by_category: dict[str, Any] = {}


def ppl_batch(
    tokenizer: Any, data: PathLike, *, seqlen: int = 256, max_tokens: int = 4096, device: Any = None
) -> dict[str, Any]:
    """Fixed-length rows of the text's tokens (no padding) for the PPL proxy."""
    import torch

    from layergraft.calibrate import read_text, tokenize

    ids = tokenize(tokenizer, read_text(data, "perplexity"))[:max_tokens]
    n_rows = len(ids) // seqlen
    if n_rows < 1:
        raise InputError(
            f"{data}: {len(ids)} tokens, fewer than one row of --seqlen {seqlen}; give more text or a smaller --seqlen"
        )
    rows = torch.tensor(ids[: n_rows * seqlen], dtype=torch.long).reshape(n_rows, seqlen)
    if device is not None:
        rows = rows.to(device)
    return {"input_ids": rows, "attention_mask": torch.ones_like(rows)}


def ppl_from_logits(batch: dict[str, Any], logits: Any) -> _Ppl:
    """Token-level NLL of every next token in the rows (first token of a row is context)."""
    import torch

    targets = batch["input_ids"][:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].double().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )
    return _Ppl(float(nll), targets.numel())


def sweep_ppl(
    base: Any,
    post: Any,
    data: PathLike,
    out: PathLike | None = None,
    *,
    seqlen: int = 256,
    max_tokens: int = 4096,
    min_len: int = 1,
    max_len: int | None = None,
    starts: Sequence[int] | None = None,
    dtype: str | None = "auto",
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every interval by perplexity on ``data`` instead of CRC; select the lowest.

    Same engine as the CRC sweep (prefix reuse, all positions' logits), same outputs
    (results.json, results.csv, a heatmap)."""
    from tqdm.auto import tqdm

    from layergraft.arch import adapter_for_model
    from layergraft.io.atomic import atomic_dir, check_output_target
    from layergraft.loading import load_causal_lm
    from layergraft.proxy.sweep import enumerate_intervals, sweep_intervals_fast

    if out is not None:
        check_output_target(out, force=force)
    post_model, tok, post_ck = load_causal_lm(post, dtype=dtype, device=device)
    base_model, _, base_ck = load_causal_lm(base, dtype=dtype, device=device, with_tokenizer=False)
    adapter = adapter_for_model(post_model)
    L = adapter.num_layers
    intervals = enumerate_intervals(L, min_len=min_len, max_len=max_len, starts=starts)
    batch = ppl_batch(
        tok, data, seqlen=seqlen, max_tokens=max_tokens, device=next(post_model.parameters()).device
    )

    def full(m: Any) -> _Ppl:
        import torch

        with torch.no_grad():
            return ppl_from_logits(batch, m(**batch, use_cache=False).logits)

    bar = tqdm(total=len(intervals) + 2, desc="PPL sweep", unit="model", disable=not progress)
    refs = {"post": full(post_model).mean}
    refs["base"] = full(base_model).mean
    bar.update(2)
    scores = sweep_intervals_fast(
        post_model,
        base_model,
        adapter,
        batch,
        lambda lg: ppl_from_logits(batch, lg),
        intervals,
        progress=bar.update,
        last_only=False,
    )
    bar.close()
    rows = [
        {"interval": format_range(r), "start": r[0], "end": r[1], **scores[r].mean}
        for r in intervals
    ]
    best = min(rows, key=lambda r: (r["ppl"], r["end"] - r["start"], r["start"]))
    results = {
        "proxy": "ppl",
        "definition": f"token-level perplexity over {batch['input_ids'].shape[0]} rows of {seqlen} tokens of {data}",
        "num_layers": L,
        "inputs": {
            "base": base_ck.origin if base_ck else str(base),
            "post": post_ck.origin if post_ck else str(post),
        },
        "references": refs,
        "rule": {"text": "min ppl"},
        "range_convention": "0-based, half-open [start, end)",
        "intervals": rows,
        "selection": {"interval": best["interval"], "rule": "min ppl"},
        "selected": best,
    }
    if out is not None:
        from layergraft.report import plot_ppl_heatmap

        with atomic_dir(out, force=force) as tmp:
            (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            lines = ["interval,start,end,ppl,nll"] + [
                f"{r['interval']},{r['start']},{r['end']},{r['ppl']:.6f},{r['nll']:.6f}"
                for r in rows
            ]
            (tmp / "results.csv").write_text("\n".join(lines) + "\n")
            plot_ppl_heatmap(results, tmp / "heatmap.png")
    return results
