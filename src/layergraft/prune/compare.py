"""``compare-recovery`` (``prune --compare``): every recovery method on one removal.

Why one command: the methods differ only in the operator fitted at each gap, so the fair
comparison fits them all from one set of calibration statistics (one streaming pass over the
dense model), on the same gaps, and scores each pruned model on the same held-out text (and
lm-eval tasks), next to the dense model as the reference row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from layergraft.errors import InputError
from layergraft.evaluate.harness import run_lm_eval
from layergraft.evaluate.perplexity import definition, perplexity
from layergraft.models.batching import fit_context
from layergraft.prune import ghost as G
from layergraft.prune import recover as R
from layergraft.prune.gencheck import check_gen_check
from layergraft.prune.gencheck import gen_check as run_gen_check
from layergraft.prune.hadamard import factor
from layergraft.prune.job import (
    ModelLike,
    load_job,
    open_input,
    refuse_ghosted_selection,
    warn_greedy_fit,
)
from layergraft.prune.model import collect_stats
from layergraft.prune.recover import check_damp
from layergraft.prune.residual import check_norm
from layergraft.prune.undo import pruned_in_place
from layergraft.ranges import format_ranges
from layergraft.text import DEFAULT_CALIB, DEFAULT_HELDOUT, read_text, tokenize

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


def _n_params(model: Any) -> int:
    """Parameters of the model as it would be saved: a scalar ghost (``scale`` kept unfolded
    while comparing, :mod:`layergraft.prune.undo`) is folded on save and adds none."""
    ghosts = getattr(model, G.ATTR, {})
    unfolded = sum(g.scale.numel() for g in ghosts.values() if g.kind == "scalar")
    return sum(p.numel() for p in model.parameters()) - unfolded


def compare_recovery(
    model: ModelLike,
    *,
    remove: str | Sequence[Any] | None = None,
    auto: int | None = None,
    metric: str = "angular",
    methods: Sequence[str] | None = None,
    calib: PathLike = DEFAULT_CALIB,
    data: PathLike = DEFAULT_HELDOUT,
    calib_tokens: int = 8192,
    seqlen: int = 512,
    batch_size: int = 4,
    ppl_seqlen: int = 2048,
    ppl_max_tokens: int | None = None,
    damp: float | None = None,
    damp_abs: float | None = None,
    bias: bool = False,
    sequential: bool = False,
    max_boundaries: int | None = None,
    normalise: str = "delta",
    gen_check: int | None = None,
    tasks: str | Sequence[str] | None = None,
    limit: int | float | None = None,
    progress: bool = False,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> dict[str, Any]:
    """Every recovery method on the same removal, fitted from one set of statistics, with
    parameter count, held-out perplexity (and lm-eval accuracy when ``tasks``; greedy chat
    replies to ``gen_check`` QA prompts, :mod:`layergraft.prune.gencheck`) per method, plus
    the dense model as the reference row."""
    methods = list(methods or R.METHODS)
    bad = [x for x in methods if x not in R.METHODS]
    if bad:
        raise InputError(f"unknown recovery method {bad[0]!r}; choose from {', '.join(R.METHODS)}")
    damp = check_damp(damp, damp_abs)
    check_norm(normalise)
    held = read_text(data, "evaluation")
    # as in prune: no fit on NaN/Inf weights (a ghosted model is accepted: it is evaluated)
    inp = open_input(model, calib=calib, remove=remove, auto=auto, accept_ghosted=True)
    refuse_ghosted_selection(inp, metric, auto)
    if gen_check is not None:
        has = inp.ck.has_chat_template if inp.ck is not None else bool(getattr(inp.spec[1], "chat_template", None))  # type: ignore[index]  # fmt: skip
        check_gen_check(gen_check, has, inp.origin)
    job = load_job(
        inp, calib=calib, calib_tokens=calib_tokens, seqlen=seqlen, batch_size=batch_size,
        device=device, dtype=dtype, device_map=device_map,
    )  # fmt: skip
    dense, tok, adapter = job.model, job.tokenizer, job.adapter
    ppl_seqlen = fit_context(ppl_seqlen, adapter.context_length, "--ppl-seqlen")
    gaps = job.gaps(remove, auto, metric, damp=damp, max_boundaries=max_boundaries, norm=normalise)
    warn_greedy_fit(auto, metric, sequential)
    if "replaceme" in methods and gaps[0][0] == 0:
        log.warning("replaceme skipped: gap %d:%d starts at layer 0", *gaps[0])
        methods.remove("replaceme")
    post_norm = getattr(adapter.layers(dense)[0], "post_feedforward_layernorm", None) is not None
    if "replaceme" in methods and post_norm:
        log.warning("replaceme skipped: %s normalises the MLP output (no fold)", adapter.family)
        methods.remove("replaceme")
    if "rotate" in methods and factor(adapter.hidden_size) is None:
        log.warning("rotate skipped: no Hadamard matrix of order %d", adapter.hidden_size)
        methods.remove("rotate")
    ids = tokenize(tok, held)[: ppl_max_tokens or None]

    def evaluate(m: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"params": _n_params(m)}
        row["ppl"] = perplexity(m, ids, seqlen=ppl_seqlen)["ppl"]
        if tasks:
            res = run_lm_eval(m, tok, tasks, limit=limit)
            row["lm_eval"] = {t: v.get("acc") for t, v in res["results"].items()}
        if gen_check:
            row["gen_check"] = run_gen_check(m, tok, gen_check, batch_size=batch_size)
        return row

    rows = [{"method": "dense", **evaluate(dense)}]
    stats = None
    if not sequential and any(x != "none" for x in methods):
        stats = collect_stats(
            dense, adapter, job.batches, gaps, mlp="replaceme" in methods,
            rotation=R.rotation_for(methods, adapter.hidden_size), progress=progress,
        )  # fmt: skip
    for method in methods:  # one dense model, pruned and put back per method (no copies)
        with pruned_in_place(
            dense, adapter, gaps, method, job.batches, damp=damp, bias=bias,
            sequential=sequential, stats=stats,
        ) as p:  # fmt: skip
            rows.append({"method": method, **evaluate(p.model), "operators": p.describe()})
    return {
        "model": inp.origin,
        "removed": format_ranges(gaps),
        "fit": "sequential" if sequential else "dense",
        "selection": job.selection,
        "calibration": {"file": str(calib), "tokens": sum(b.n_tokens for b in job.batches)},
        "heldout": {"file": str(data), "tokens": len(ids)},
        "ppl_definition": definition(ppl_seqlen),
        "rows": rows,
    }
