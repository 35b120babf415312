"""``sweep``: score every hybrid of a family on a proxy and choose one.

The steps: settings in one :class:`~layergraft.slr.sweep.config.SweepConfig` -> validate
everything cheap (pair, prompts or text, end markers, outputs) -> plan the units
(:mod:`.engines`) -> with ``dry_run`` stop at :mod:`.plan` -> open ``OUT/intervals.jsonl``
(:mod:`.journal`; ``resume`` continues it) -> score the units not yet done with a
:class:`~layergraft.slr.sweep.worker.SweepWorker` (the models are loaded once, and only if
there is work) -> assemble the results from the journal (:mod:`.assemble`) -> optionally
validate the best candidates by generation (:mod:`.validate`) -> write results.json, CSV and
plots (:mod:`layergraft.report.sweep`) -> optionally write the chosen hybrid.

Proxies: ``crc`` (the CRC task, exact first-token estimator with the format score V_end) or
``ppl`` (perplexity on ``data``; the lowest is selected). ``method``: intervals (``slr``), the
21 whole-model soups (``soup``) or ``both``; ``alphas`` blends the intervals' layers instead
of restoring them (interval soups); ``parts`` restores only attention, MLP or norms.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.checkpoint.atomic import write_json_atomic
from layergraft.checkpoint.outputs import check_output
from layergraft.errors import InputError, OutputError
from layergraft.gen.ends import EndMarkers, EndWarning, find_end_markers
from layergraft.models.batching import fit_context
from layergraft.models.load import load_tokenizer, open_loadable
from layergraft.models.placement import check_placement
from layergraft.report.sweep import write_sweep_outputs
from layergraft.slr.hybrid import candidate
from layergraft.slr.hybrid.diff import change_vs_gain, diff
from layergraft.slr.hybrid.pair import check_compatible
from layergraft.slr.proxy.crc import CrcProxy
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.slr.proxy.custom import CustomProxy
from layergraft.slr.proxy.ppl import PplProxy
from layergraft.slr.sweep.assemble import assemble_crc, assemble_ppl
from layergraft.slr.sweep.config import SweepConfig, parse_alphas, parse_sweep_parts
from layergraft.slr.sweep.engines import enumerate_intervals, plan_units
from layergraft.slr.sweep.execute import Execution
from layergraft.slr.sweep.halving import run_halving
from layergraft.slr.sweep.journal import Journal, done_keys, inspect_journal, rows_in_plan_order
from layergraft.slr.sweep.plan import dry_run_plan
from layergraft.slr.sweep.validate import validate_candidates
from layergraft.slr.sweep.worker import WorkerSpec
from layergraft.text import read_text
from layergraft.version import __version__

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
_FIELDS = {f.name for f in dataclasses.fields(SweepConfig)}


def make_config(settings: dict[str, Any]) -> SweepConfig:
    """A :class:`SweepConfig` from the API's keyword arguments (strings and lists accepted
    where the CLI gives them: ``parts="attn,all"``, ``alphas="0.5,1"``, ``starts=[0, 2]``)."""
    bad = sorted(set(settings) - _FIELDS)
    if bad:
        raise TypeError(f"sweep() got an unexpected keyword argument {bad[0]!r}")
    s = dict(settings)
    if "parts" in s:
        s["parts"] = parse_sweep_parts(s["parts"])
    if "alphas" in s:
        s["alphas"] = parse_alphas(s["alphas"])
    if s.get("starts") is not None:
        s["starts"] = tuple(s["starts"])
    for k in ("prompts", "data"):
        if s.get(k) is not None and not isinstance(s[k], str):
            s[k] = str(s[k]) if isinstance(s[k], os.PathLike) else s[k]
    return SweepConfig(**s)


def _make_proxy(
    cfg: SweepConfig, ends: EndMarkers, score_model: Callable[[Any], dict[str, Any]] | None
) -> Any:
    if score_model is not None:
        return CustomProxy(score_model)
    if cfg.proxy == "ppl":
        return PplProxy(
            str(cfg.data), seqlen=cfg.seqlen, max_tokens=cfg.max_tokens,
            batch_size=4 if cfg.batch_size is None else cfg.batch_size,
        )  # fmt: skip
    prompts = cfg.prompts if isinstance(cfg.prompts, str) else list(cfg.prompts)
    return CrcProxy(
        load_crc_prompts(prompts), source=str(cfg.prompts),
        batch_size=64 if cfg.batch_size is None else cfg.batch_size,
        ends=ends, v_end=cfg.v_end, layout=cfg.packing,
    )  # fmt: skip


def _fingerprint(ck: Any) -> dict[str, Any]:
    """What identifies an input for the journal: its files by name, size and header, and a
    sample of their bytes (``content``), because a model trained again at the same path keeps
    all the rest and its old rows would be resumed as if they were its own. No mtime: a copied
    checkpoint is the same."""
    fp = ck.fingerprint()
    return {
        "origin": fp["origin"],
        "files": [(f["name"], f["size"], f["header_sha256"]) for f in fp["files"]],
        "content": [f["sample_sha256"] for f in fp["files"]],
    }


def sweep(
    base: Any,
    post: Any,
    out: PathLike | None = None,
    *,
    config: SweepConfig | None = None,
    tokenizer: Any = None,
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
    **settings: Any,
) -> dict[str, Any]:
    """Score every hybrid the settings ask for on a proxy and select one.

    ``base``/``post``: paths (directory, hub id, ``.gguf``) or loaded models (then pass the
    post model's ``tokenizer``). The settings (``config``, or its fields as keywords:
    ``proxy``, ``prompts``, ``method``, ``parts``, ``alphas``, ``rule``, ``validate``, ...)
    are those of :class:`~layergraft.slr.sweep.config.SweepConfig`. ``score_model`` replaces
    the proxy with any function of a model returning ``{"V":..,"H":..,"H_norm":..}`` (scored
    through the in-memory swap). With ``out``, every finished unit is appended durably to
    ``out/intervals.jsonl`` and ``resume`` continues a killed sweep. ``dry_run`` returns the
    plan without scoring. ``executor`` (:mod:`.distributed`) scores the units elsewhere.
    ``restore_best`` writes the chosen hybrid: the validated choice with ``validate``, else
    the active rule's best over the families swept. Returns the results dict (also
    ``out/results.json``).
    """
    cfg = config if config is not None else make_config(settings)
    if config is not None and settings:
        raise TypeError("give the settings either as config= or as keywords, not both")
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
    placement = {"device": device, "dtype": dtype, "device_map": device_map}
    if in_memory:
        if tokenizer is None:
            raise InputError(
                "a sweep of in-memory models needs the post model's tokenizer: pass tokenizer="
            )
        adapter = adapter_for_model(post)
        num_layers, family, context = adapter.num_layers, adapter.family, adapter.context_length
        inputs = {"base": "in-memory", "post": "in-memory"}
        config_inputs: dict[str, Any] = inputs
        tok, gen_source = load_tokenizer(tokenizer), post
    else:
        base_ck, post_ck = open_loadable(base), open_loadable(post)
        check_compatible(base_ck, post_ck)
        num_layers, family = post_ck.adapter.num_layers, post_ck.adapter.family
        context = post_ck.adapter.context_length
        inputs = {"base": str(base_ck.origin), "post": str(post_ck.origin)}
        config_inputs = {"base": _fingerprint(base_ck), "post": _fingerprint(post_ck)}
        tok_spec = str(tokenizer or post_ck.path)
        tok, gen_source = None, post_ck.path
    # every output and the placement are checked before anything is loaded or written
    readable = [] if in_memory else [base_ck, post_ck]
    readable += [Path(x) for x in (cfg.prompts, cfg.data) if x is not None and Path(x).exists()]
    check_placement(device, dtype, device_map, models=[] if in_memory else [base_ck, post_ck])
    if out is not None and not dry_run:
        check_output(out, inputs=readable, kind="dir", flag="--out", force=force, reuse=resume)
    if restore_best is not None:  # fail before hours of scoring
        check_output(restore_best, inputs=readable, kind="dir", flag="--restore-best", force=force)
    if cfg.proxy == "ppl":  # rows longer than the model's context would not be text it can read
        if score_model is None and cfg.data is not None:  # a missing --data before that warning
            read_text(str(cfg.data), "perplexity")
        cfg = dataclasses.replace(cfg, seqlen=fit_context(cfg.seqlen, context, "--ppl-seqlen"))
    ends = EndMarkers(())
    if cfg.uses_v_end and score_model is None:
        if tok is None:
            tok = load_tokenizer(tok_spec)
        with warnings.catch_warnings():
            if cfg.rule == "format":  # the refusal below says it in one line
                warnings.simplefilter("ignore", EndWarning)
            ends = find_end_markers(tok, gen_source)
        if cfg.rule == "format" and not ends.ids:
            raise InputError(
                "--rule format needs the model's end markers and this one has none (no "
                "eos_token_id in its generation config or its tokenizer, no end of turn in "
                "its chat template); use --rule paper"
            )
    px = _make_proxy(cfg, ends, score_model)
    intervals = (
        enumerate_intervals(num_layers, min_len=cfg.min_len, max_len=cfg.max_len, starts=cfg.starts)
        if cfg.method != "soup"
        else []
    )
    units = plan_units(num_layers, intervals, cfg.soups, cfg.parts, cfg.alphas)
    if not in_memory:
        spec = WorkerSpec(
            str(base_ck.path), str(post_ck.path), tok_spec, px, placement, cfg.prefix_reuse
        )
    header = {
        "proxy": px.kind, "num_layers": num_layers, "family": family, "inputs": inputs,
        "settings": cfg.as_json(),
    }  # fmt: skip
    if px.kind in ("crc", "custom"):
        header = {**header, "estimator": "exact", "prompts": px.describe()}
    engine = "prefix-reuse" if cfg.prefix_reuse and px.kind != "custom" else "swap"
    journal_config = {
        "rows": cfg.rows_key(),
        "selection": cfg.selection(),
        "proxy_fingerprint": px.fingerprint(),
        "inputs": config_inputs,
        "num_layers": num_layers,
        "engine": engine,
        "placement": {
            k: v if isinstance(v, (str, dict, type(None))) else str(v) for k, v in placement.items()
        },
        "layergraft": __version__,
    }

    if dry_run:
        done = done_keys(inspect_journal(out, journal_config)) if resume else set()
        ndone = sum(1 for u in units if set(u.keys) <= done)
        return dry_run_plan(
            post if in_memory else spec, units, ndone, tokenizer, px, placement, cfg
        )
    journal: Journal | None = None
    rows: list[dict[str, Any]] = []
    if out is not None:
        journal = Journal.open(out, journal_config, resume=resume, force=force)
        rows = journal.rows
    t0 = time.perf_counter()
    run = Execution(
        spec=None if in_memory else spec, pair=(base, post, tok) if in_memory else None,
        proxy=px, prefix_reuse=cfg.prefix_reuse, executor=executor, journal=journal, rows=rows,
        num_layers=num_layers, progress=progress,
    )  # fmt: skip
    search = None
    if cfg.search == "halving" and px.kind == "crc":
        mine, search = run_halving(run, units, cfg, px, num_layers, rule=resolved_rule(cfg, ends))
    else:
        run.run(units)
        mine = rows_in_plan_order(rows, units)
    elapsed = time.perf_counter() - t0

    if px.kind == "ppl":
        ref_tokens = next(r["scores"]["tokens"] for r in mine if r["kind"] == "reference")
        results = assemble_ppl(
            mine, header=header, method=cfg.method,
            definition=px.definition(ref_tokens // (px.seqlen - 1)), parts=cfg.parts,
        )  # fmt: skip
    else:
        results = assemble_crc(
            mine, header=header, method=cfg.method, rule=cfg.rule,
            validity_ratio=cfg.validity_ratio, end_ratio=cfg.end_ratio,
            diversity_key=cfg.diversity_key, parts=cfg.parts,
        )  # fmt: skip
    change = None
    if not in_memory and px.kind == "crc" and results["intervals"]:
        change = diff(base_ck, post_ck, progress=False)
        post_div = results["references"]["post"][cfg.diversity_key]
        results["weight_change"] = change_vs_gain(
            change, results["intervals"], cfg.diversity_key, post_div
        )
    if search is not None:
        results["search"] = search
    if cfg.validate is not None:
        results["validation"] = validate_candidates(
            results, cfg, out=out, worker=run.worker, spec=None if in_memory else spec,
            pair=(base, post, tok) if in_memory else None, executor=run.executor,
            progress=progress,
        )  # fmt: skip
    if restore_best is not None:
        results["restored_to"] = _restore_best(results, inputs, restore_best, force, progress)
    if out is not None:  # every file after the last check: a refusal leaves the directory as it was
        if change is not None:
            write_json_atomic(Path(out) / "diff.json", change)
        write_sweep_outputs(results, Path(out))
        write_json_atomic(
            Path(out) / "run.json",
            {"seconds": round(elapsed, 3), "units_run": run.units_run,
             "units_resumed": max(len(units) - run.units_run, 0), "engine": engine,
             "executor": run.name},
        )  # fmt: skip
    return results


def resolved_rule(cfg: SweepConfig, ends: EndMarkers) -> str:
    """The rule a CRC sweep selects by: the one asked for, else format where V_end exists."""
    if cfg.rule is not None:
        return cfg.rule
    return "format" if ends.ids and cfg.v_end != "off" else "paper"


def chosen_hybrid(results: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The hybrid a sweep stands behind, and why: the validated choice when candidates were
    validated, else the active rule's best over every family swept."""
    val = results.get("validation")
    if val is not None:
        return val.get("chosen"), val.get("verdict", "")
    rule = results.get("rule", {}).get("name")
    best = (results.get("best") or {}).get(rule) if rule else results.get("selected")
    if best is None and results.get("soup"):
        best = results["soup"].get("selected")
    thr = (results.get("selection") or {}).get("validity_threshold")
    why = f"no hybrid met the rule ({results.get('rule', {}).get('text', '')})"
    return best, (why if thr is not None else "nothing was scored")


def _restore_best(
    results: dict[str, Any], inputs: dict[str, str], target: PathLike, force: bool, progress: bool
) -> str | None:
    """Write the chosen hybrid (:func:`chosen_hybrid`); None, with a warning naming why,
    when nothing was chosen."""
    best, why = chosen_hybrid(results)
    if best is None:
        log.warning("--restore-best: %s; nothing written to %s", why, target)
        return None
    candidate.write(best, inputs["base"], inputs["post"], target, force=force, progress=progress)
    if results.get("validation") is None:  # say it where the pick is read: results and console
        results.setdefault("caveats", []).append(
            f"the hybrid written to {target} is the {_pick_name(results)} and was not "
            "validated by generation: add --validate K to check that it keeps the chat format"
        )
    return str(target)


def _pick_name(results: dict[str, Any]) -> str:
    rule = (results.get("rule") or {}).get("name")
    return f"{rule} rule's pick" if rule else "lowest-perplexity pick"


def sweep_ppl(
    base: Any, post: Any, data: PathLike, out: PathLike | None = None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`sweep` with ``proxy="ppl"`` (every interval scored by perplexity on ``data``)."""
    return sweep(base, post, out, proxy="ppl", data=data, **kwargs)
