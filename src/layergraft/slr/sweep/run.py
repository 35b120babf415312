"""``sweep``: score every restored interval on a proxy and choose one (the paper's rule).

The steps: validate everything cheap (pair, prompts or text, outputs) -> plan the units
(:mod:`layergraft.slr.sweep.engines`) -> with ``dry_run`` stop at :mod:`layergraft.slr.sweep.plan` -> open
``OUT/intervals.jsonl`` (:mod:`layergraft.slr.sweep.journal`; ``resume`` continues it) -> score the
units not yet done with a :class:`~layergraft.slr.sweep.worker.SweepWorker` (the models are loaded
once, and only if there is work) -> assemble the results from the journal
(:mod:`layergraft.slr.sweep.assemble`) -> write results.json, CSV and plots
(:mod:`layergraft.report.sweep`) -> optionally restore the selected hybrid.

Proxies: ``crc`` (the CRC task, exact first-token estimator; the paper's rule) or ``ppl``
(perplexity on ``data``; the lowest is selected). ``method``: intervals (``slr``), the 21 weight
soups (``soup``) or ``both``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.checkpoint.atomic import check_output_target, write_json_atomic
from layergraft.errors import InputError, OutputError
from layergraft.models.batching import fit_context
from layergraft.models.load import load_model, load_tokenizer, open_loadable
from layergraft.models.placement import Placement
from layergraft.report.sweep import write_sweep_outputs
from layergraft.slr.sweep.assemble import assemble_crc, assemble_ppl
from layergraft.slr.proxy.crc import CrcProxy
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.slr.hybrid.diff import change_vs_gain, diff
from layergraft.slr.sweep.engines import Unit, enumerate_intervals, parse_sweep_parts, plan_units
from layergraft.slr.sweep.journal import Journal, row_key
from layergraft.slr.hybrid.pair import check_compatible
from layergraft.slr.sweep.plan import sweep_plan, time_layer
from layergraft.slr.proxy.ppl import PplProxy
from layergraft.slr.hybrid.restore import restore
from layergraft.slr.hybrid.soup import soup
from layergraft.slr.sweep.worker import CustomProxy, SweepWorker, WorkerSpec
from layergraft.version import __version__

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
SOUP_ALPHAS = tuple(round(i * 0.05, 2) for i in range(21))
METHODS = ("slr", "soup", "both")
PROXIES = ("crc", "ppl")


def _make_proxy(
    proxy: str, prompts: Any, data: Any, seqlen: int, max_tokens: int | None, batch_size: int | None,
    score_model: Callable[[Any], dict[str, Any]] | None,
) -> Any:  # fmt: skip
    if score_model is not None:
        return CustomProxy(score_model)
    if proxy == "ppl":
        if data is None:
            raise InputError("--proxy ppl needs --data FILE (text, or JSONL with a text field)")
        return PplProxy(str(data), seqlen=seqlen, max_tokens=max_tokens, batch_size=batch_size or 4)
    return CrcProxy(load_crc_prompts(prompts), source=str(prompts), batch_size=batch_size or 64)


def _fingerprint(ck: Any) -> dict[str, Any]:
    """What identifies an input for the journal (no mtime: a copied checkpoint is the same)."""
    fp = ck.fingerprint()
    return {
        "origin": fp["origin"],
        "files": [(f["name"], f["size"], f["header_sha256"]) for f in fp["files"]],
    }


def sweep(
    base: Any,
    post: Any,
    out: PathLike | None = None,
    *,
    tokenizer: Any = None,
    proxy: str = "crc",
    prompts: str | Path | Iterable[str] = "all",
    data: PathLike | None = None,
    seqlen: int = 2048,
    max_tokens: int | None = None,
    min_len: int = 1,
    max_len: int | None = None,
    starts: Sequence[int] | None = None,
    validity_ratio: float = 0.9,
    diversity_key: str = "H_norm",
    method: str = "slr",
    parts: str | Sequence[str] = "all",
    prefix_reuse: bool = True,
    batch_size: int | None = None,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    restore_best: PathLike | None = None,
    force: bool = False,
    resume: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    score_model: Callable[[Any], dict[str, Any]] | None = None,
    executor: Any = None,
) -> dict[str, Any]:
    """Score every interval ``[s, e)`` (and/or soup) on a proxy and select one.

    ``base``/``post``: paths (directory, hub id, ``.gguf``) or loaded models (then pass the
    post model's ``tokenizer``). ``proxy``: ``"crc"`` (``prompts``) or ``"ppl"`` (``data``,
    ``seqlen``, ``max_tokens``); ``parts`` (``"attn,mlp,all"``) scores every interval once
    per part — restoring only the layers' attention, MLP or norms, or whole layers — with one
    selection each; ``score_model`` replaces the proxy with any function of a model
    returning ``{"V":..,"H":..,"H_norm":..}`` (scored through the in-memory swap). With
    ``out``, every finished unit is appended durably to ``out/intervals.jsonl`` and ``resume``
    continues a killed sweep. ``dry_run`` returns the plan without scoring. ``executor``
    (:mod:`layergraft.slr.sweep.distributed`) scores the units elsewhere. Returns the results dict
    (also ``out/results.json``).
    """
    if method not in METHODS:
        raise InputError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if proxy not in PROXIES:
        raise InputError(f"--proxy {proxy!r} is not one of {', '.join(PROXIES)}")
    if diversity_key not in ("H", "H_norm"):
        raise InputError(f"diversity key {diversity_key!r} is not H or H_norm")
    sweep_parts = parse_sweep_parts(parts)
    if resume and out is None:
        raise InputError("--resume needs --out DIR (the sweep to continue)")
    if resume and force:
        raise InputError("--resume continues DIR and --force starts it over; give one of them")
    in_memory = hasattr(post, "forward")
    if restore_best is not None and in_memory:
        raise InputError("--restore-best needs base/post given as paths, not in-memory models")
    if out is not None and not (resume or force or dry_run) and Path(out).exists():
        raise OutputError(
            f"output {out} already exists; pass --resume to continue that sweep or --force to start over"
        )
    if restore_best is not None:
        check_output_target(restore_best, force=force)  # fail before hours of scoring
    placement = {"device": device, "dtype": dtype, "device_map": device_map}
    Placement(**placement)  # a bad --dtype / --device + --device-map fails now
    if in_memory:
        if tokenizer is None:
            raise InputError(
                "a sweep of in-memory models needs the post model's tokenizer: pass tokenizer="
            )
        adapter = adapter_for_model(post)
        num_layers, family, context = adapter.num_layers, adapter.family, adapter.context_length
        inputs = {"base": "in-memory", "post": "in-memory"}
        config_inputs: dict[str, Any] = inputs
    else:
        base_ck, post_ck = open_loadable(base), open_loadable(post)
        check_compatible(base_ck, post_ck)
        num_layers, family = post_ck.adapter.num_layers, post_ck.adapter.family
        context = post_ck.adapter.context_length
        inputs = {"base": str(base_ck.origin), "post": str(post_ck.origin)}
        config_inputs = {"base": _fingerprint(base_ck), "post": _fingerprint(post_ck)}
        tok_spec = str(tokenizer or post_ck.path)
    if proxy == "ppl":  # rows longer than the model's context would not be text it can read
        seqlen = fit_context(seqlen, context, "--ppl-seqlen")
    px = _make_proxy(proxy, prompts, data, seqlen, max_tokens, batch_size, score_model)
    intervals = (
        enumerate_intervals(num_layers, min_len=min_len, max_len=max_len, starts=starts)
        if method != "soup"
        else []
    )
    units = plan_units(num_layers, intervals, SOUP_ALPHAS if method != "slr" else (), sweep_parts)
    if not in_memory:
        spec = WorkerSpec(
            str(base_ck.path), str(post_ck.path), tok_spec, px, placement, prefix_reuse
        )
    header = {"proxy": px.kind, "num_layers": num_layers, "family": family, "inputs": inputs}
    if px.kind == "crc":
        header = {**header, "estimator": "exact", "prompts": px.describe()}
    elif px.kind == "custom":
        header = {**header, "proxy": "custom", "estimator": "exact", "prompts": px.describe()}
    config = {
        "proxy": px.kind,
        "proxy_fingerprint": px.fingerprint(),
        "inputs": config_inputs,
        "num_layers": num_layers,
        "engine": "prefix-reuse" if prefix_reuse and px.kind != "custom" else "swap",
        "placement": {
            k: v if isinstance(v, (str, dict, type(None))) else str(v) for k, v in placement.items()
        },
        "layergraft": __version__,
    }

    journal: Journal | None = None
    rows: list[dict[str, Any]] = []
    done: set[str] = set()
    if out is not None and not dry_run:
        journal = Journal.open(out, config, resume=resume, force=force)
        rows, done = journal.rows, journal.done
    pending = [u for u in units if not set(u.keys) <= done]

    t0 = time.perf_counter()
    if dry_run:
        return _dry_run(
            post if in_memory else spec, units, len(units) - len(pending), tokenizer, px, placement
        )
    if pending:
        if executor is None:
            worker = (
                SweepWorker(base, post, load_tokenizer(tokenizer), px, prefix_reuse=prefix_reuse)
                if in_memory
                else SweepWorker.from_spec(spec)
            )
            executor = _LocalExecutor(worker)
        elif in_memory:
            raise InputError(
                "a distributed sweep loads the models on its workers: give paths, not models"
            )
        else:
            executor.prepare(spec)
        _run_units(executor, pending, num_layers, journal, rows, progress)
    elapsed = time.perf_counter() - t0

    planned = {k for u in units for k in u.keys}
    mine = [r for r in rows if row_key(r) in planned]
    if px.kind == "ppl":
        ref_tokens = next(r["scores"]["tokens"] for r in mine if r["kind"] == "reference")
        results = assemble_ppl(
            mine, header=header, method=method,
            definition=px.definition(ref_tokens // (px.seqlen - 1)), parts=sweep_parts,
        )  # fmt: skip
    else:
        results = assemble_crc(
            mine, header=header, method=method, validity_ratio=validity_ratio,
            diversity_key=diversity_key, parts=sweep_parts,
        )  # fmt: skip
    if not in_memory and px.kind == "crc" and results["intervals"]:
        change = diff(base_ck, post_ck, progress=False)
        post_div = results["references"]["post"][diversity_key]
        results["weight_change"] = change_vs_gain(
            change, results["intervals"], diversity_key, post_div
        )
        if out is not None:
            write_json_atomic(Path(out) / "diff.json", change)
    if restore_best is not None:
        results["restored_to"] = _restore_best(
            results, inputs, restore_best, method, force, progress
        )
    if out is not None:
        write_sweep_outputs(results, Path(out))
        write_json_atomic(
            Path(out) / "run.json",
            {"seconds": round(elapsed, 3), "units_run": len(pending), "units_resumed": len(units) - len(pending),
             "engine": config["engine"], "executor": getattr(executor, "name", "local")},
        )  # fmt: skip
    return results


class _LocalExecutor:
    """Units scored one after another by one in-process worker."""

    name = "local"

    def __init__(self, worker: SweepWorker) -> None:
        self.worker = worker

    def run(self, units: Sequence[Unit], num_layers: int) -> Iterable[list[dict[str, Any]]]:
        for u in units:
            yield self.worker.run(u)


def _run_units(
    executor: Any,
    units: Sequence[Unit],
    num_layers: int,
    journal: Journal | None,
    rows: list[dict[str, Any]],
    progress: bool,
) -> None:
    """Score ``units`` and record every unit's rows as it finishes (journal or memory)."""
    from tqdm.auto import tqdm

    total = sum(len(u.keys) for u in units)
    with tqdm(total=total, desc="sweep", unit="hybrid", disable=not progress) as bar:
        for unit_rows in executor.run(units, num_layers):
            if journal is not None:
                journal.append(unit_rows)
            else:
                rows.extend(json.loads(json.dumps(r)) for r in unit_rows)
            bar.update(len(unit_rows))


def _dry_run(
    post: Any, units: list[Unit], done: int, tokenizer: Any, px: Any, placement: dict[str, Any]
) -> dict[str, Any]:
    """Load the post model only, time one layer on the first real batch, return the plan."""
    if isinstance(post, WorkerSpec):
        model = load_model(post.post, **placement)
        tok = load_tokenizer(post.tokenizer)
    else:
        model, tok = post, load_tokenizer(tokenizer)
    if not hasattr(px, "batches") or isinstance(px, CustomProxy):
        raise InputError("--dry-run needs the crc or ppl proxy, not a custom score function")
    adapter = adapter_for_model(model)
    batches = px.batches(tok, next(model.parameters()).device)
    params = list(model.parameters())
    elem = params[0].element_size()
    return {
        "dry_run": True,
        "plan": sweep_plan(
            units,
            num_layers=adapter.num_layers,
            batches=batches,
            timing=time_layer(model, adapter, batches[0], px.last_only),
            weights_bytes=2 * sum(p.numel() * p.element_size() for p in params),
            hidden=adapter.hidden_size,
            vocab=adapter.vocab_size,
            element_bytes=elem,
            done=done,
        ),  # fmt: skip
    }


def _restore_best(
    results: dict[str, Any], inputs: dict[str, str], target: PathLike, method: str, force: bool,
    progress: bool,
) -> str | None:  # fmt: skip
    """Write the selected hybrid (the selected soup with ``method="soup"``); None, with a
    warning naming why, when nothing was selected."""
    if method == "soup":
        chosen = (results.get("soup") or {}).get("selected")
        if chosen is None:
            log.warning("--restore-best: no soup alpha met the rule; nothing written to %s", target)
            return None
        soup(
            inputs["base"], inputs["post"], chosen["alpha"], target, force=force, progress=progress
        )
        return str(target)
    chosen = results.get("selected")
    if chosen is None:
        thr = (results.get("selection") or {}).get("validity_threshold")
        why = f"no interval met V >= {thr:.3f}" if thr is not None else "no interval was scored"
        log.warning("--restore-best: %s; nothing written to %s", why, target)
        return None
    restore(
        inputs["base"], inputs["post"], chosen["interval"], target, force=force, progress=progress
    )
    return str(target)


def sweep_ppl(
    base: Any, post: Any, data: PathLike, out: PathLike | None = None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`sweep` with ``proxy="ppl"`` (every interval scored by perplexity on ``data``)."""
    return sweep(base, post, out, proxy="ppl", data=data, **kwargs)
