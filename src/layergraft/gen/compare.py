"""``compare``: generate, score and report several models side by side on one task.

Why results are data first (DESIGN.md): the table and the plots are rendered from
``results.json`` (:mod:`layergraft.report.compare`), so a report can be re-rendered or
re-plotted without regenerating anything. Generations live in ``DIR/gens/<run>.jsonl`` and are
reused (or resumed) by the next run with the same settings.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from layergraft.checkpoint.outputs import check_output
from layergraft.errors import InputError
from layergraft.gen.engine import run_generation
from layergraft.gen.generate import reasoning_only, select_greedy_failed, task_prompts
from layergraft.gen.model_cache import ModelCache
from layergraft.gen.records import check_resumable, read_records
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.score import make_embedder, make_judge, score_records
from layergraft.gen.vllm import resolve_backend
from layergraft.models.load import local_dir
from layergraft.models.placement import check_placement
from layergraft.report.compare import write_compare_outputs

log = logging.getLogger(__name__)


def baseline_runs(name: str, settings: SamplingSettings) -> list[tuple[str, SamplingSettings]]:
    """The decoding baselines of model ``name``: temperature 1.5, and no min-p."""
    return [
        (f"{name}@T1.5", replace(settings, temperature=1.5)),
        (f"{name}@no-min-p", replace(settings, min_p=0.0)),
    ]


def safe_name(name: str) -> str:
    """A label as a file name: ':' (layer ranges, 'slr0:3') becomes '_'."""
    return "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)


def _complete(
    path: Path,
    prompts: Sequence[Any],
    n: int,
    settings: SamplingSettings,
    model_name: str,
    weights: str | None,
) -> bool:
    """Does ``path`` already hold every (prompt, sample) of this run? A file of another model,
    other weights or other settings is an error (never silently mixed), via
    :func:`check_resumable`."""
    check_resumable(path, settings, model_name, weights)
    if not path.exists():
        return False
    have = {(r["prompt_id"], int(r["sample"])) for r in read_records(path)}
    return all((p.id, i) in have for p in prompts for i in range(n))


def compare(
    models: Mapping[str, Any],
    task: Any,
    out: str | os.PathLike[str],
    *,
    n: int = 32,
    settings: SamplingSettings | None = None,
    baselines: bool = True,
    baseline_model: str = "post",
    tokenizer: Any = None,
    subset: str = "all",
    limit: int | None = None,
    batch_size: int = 16,
    backend: str = "auto",
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    embedder: Any = "default",
    judge: Any = None,
    bootstrap: int = 1000,
    seed: int = 0,
    chat_template: bool = True,
    progress: bool = True,
    plots: bool = True,
    executor: Any = None,
) -> dict[str, Any]:
    """Generate (or reuse) samples of every model in ``DIR/gens``, score them, and write
    ``DIR/results.json``, ``DIR/report.md`` and PNG plots.

    ``models`` maps a label to a path, an in-memory ``(model, tokenizer)`` pair, or a
    ``(model, tokenizer, context)`` triple whose ``context()`` is entered while that model
    generates — so one loaded post model serves both as ``post`` and, inside
    ``lambda: swapped_layers(post, base, ranges)``, as the SLR hybrid, with nothing saved::

        compare({"post": (post, tok), "base": (base, tok),
                 "slr": (post, tok, lambda: swapped_layers(post, base, parse_ranges("2:5")))},
                "creative", "out/")

    A model whose tokenizer has no chat template (a base model) uses ``tokenizer`` if given,
    else the tokenizer of ``baseline_model`` — the paper evaluates base and hybrids in the post
    model's chat format. Beside the given models, ``baseline_model`` is also sampled at
    temperature 1.5 and without min-p (``baselines``): restoring layers must beat simply
    turning up the randomness at the same quality. ``executor``
    (:mod:`layergraft.gen.distributed`) generates the runs still to do elsewhere, each loading
    its model from its path; scoring stays here.
    """
    settings = settings or SamplingSettings()
    if not models:
        raise InputError("--models is empty; give NAME=PATH pairs, e.g. post=P base=B")
    for label in models:
        if not re.fullmatch(r"[\w.:-]+", label) or "@" in label:
            raise InputError(
                f"model label {label!r}: use letters, digits and '-', '_', '.', ':' only"
            )
    if len({safe_name(m) for m in models}) != len(models):
        raise InputError("two model labels map to the same file name; make them differ in letters")
    if baselines and baseline_model not in models:
        raise InputError(
            f"decoding baselines need a model labelled {baseline_model!r}; add {baseline_model}=PATH "
            "to --models, or pass --no-baselines"
        )
    paths = [spec for spec in models.values() if isinstance(spec, (str, os.PathLike))]
    local = [local_dir(spec) for spec in paths]  # fail fast on a bad path, before any generation
    # the directory is reused (its gens/ resumed), never an input or inside one
    reads = [*paths, task if isinstance(task, (str, os.PathLike)) else None, tokenizer]
    reads += [x for x in (embedder, judge) if isinstance(x, (str, os.PathLike))]
    out_dir = check_output(out, inputs=reads, kind="dir", flag="--out", reuse=True)
    check_placement(device, dtype, device_map, models=local)
    prompts = task_prompts(task, limit)
    if subset == "greedy-failed":
        reasoning_only(prompts)
    elif subset != "all":
        raise InputError(f"unknown subset {subset!r}; choose all or greedy-failed")
    emb = make_embedder(embedder)
    jdg = make_judge(judge)
    # created by the first generation written, so a refusal before that leaves nothing
    gens_dir = out_dir / "gens"

    # baselines right after their model, so each model is loaded once and freed after its runs
    runs: list[tuple[str, str, SamplingSettings]] = []
    for m in models:
        runs.append((m, m, settings))
        if baselines and m == baseline_model:
            runs += [(name, m, s) for name, s in baseline_runs(m, settings)]

    cache = ModelCache(
        models, tokenizer, baseline_model, chat_template,
        {"device": device, "dtype": dtype, "device_map": device_map},
    )  # fmt: skip

    if subset == "greedy-failed":
        label = baseline_model if baseline_model in models else next(iter(models))
        greedy_path = gens_dir / f"{safe_name(label)}@greedy.jsonl"
        greedy = SamplingSettings(
            temperature=0.0, min_p=0.0, max_new_tokens=settings.max_new_tokens
        )
        done = _complete(
            greedy_path, prompts, 1, greedy, cache.record_name(label), cache.weights(label)
        )
        m, tok = (None, None) if done else cache.hf(label)
        prompts = select_greedy_failed(
            m, tok, prompts, max_new_tokens=settings.max_new_tokens, batch_size=batch_size,
            chat_template=chat_template, progress=progress, out=greedy_path,
            model_name=cache.record_name(label), weights=cache.weights(label),
        )  # fmt: skip
        if not prompts:
            raise InputError(
                "the greedy-failed subset is empty: the model solves every prompt greedily; use --subset all"
            )

    results: dict[str, Any] = {
        "task": str(task) if isinstance(task, (str, os.PathLike)) else "custom",
        "subset": subset,
        "prompt_ids": [p.id for p in prompts],
        "n": n,
        "settings": settings.to_json(),
        "models": {
            k: (str(v) if isinstance(v, (str, os.PathLike)) else "in-memory")
            for k, v in models.items()
        },
        "runs": {},
    }
    if executor is not None:  # the runs not yet complete, generated on workers at once
        todo = [
            (r, gens_dir / f"{safe_name(r)}.jsonl", label, s) for r, label, s in runs
            if not _complete(gens_dir / f"{safe_name(r)}.jsonl", prompts, n, s,
                             cache.record_name(label), cache.weights(label))
        ]  # fmt: skip
        executor.generate(
            todo, cache, prompts, n=n, batch_size=batch_size, chat_template=chat_template,
            backend=backend, progress=progress,
        )  # fmt: skip
    for run_name, label, s in runs:
        path = gens_dir / f"{safe_name(run_name)}.jsonl"
        model_name, weights = cache.record_name(label), cache.weights(label)
        if _complete(path, prompts, n, s, model_name, weights):  # reuse: no model needed
            wanted = {(p.id, i) for p in prompts for i in range(n)}
            recs = [r for r in read_records(path) if (r["prompt_id"], int(r["sample"])) in wanted]
        else:
            spec = models[label]
            chosen = resolve_backend(backend, spec[0] if isinstance(spec, tuple) else spec)
            if chosen == "vllm":
                m, tok, engine = None, cache.tokenizer(label), cache.vllm(label)
            else:
                (m, tok), engine = cache.hf(label), None
            # (model, tokenizer, context): e.g. lambda: swapped_layers(post, base, ranges)
            ctx = spec[2]() if isinstance(spec, tuple) and len(spec) > 2 else nullcontext()
            with ctx:
                recs = run_generation(
                    m, tok, prompts, n=n, settings=s, out=path, model_name=model_name,
                    backend=chosen, batch_size=batch_size, chat_template=chat_template,
                    progress=progress, vllm_engine=engine, weights=weights,
                )  # fmt: skip
        scored = score_records(recs, embedder=emb, judge=jdg, bootstrap=bootstrap, seed=seed)
        scored["label"] = label
        scored["generations_file"] = str(path.relative_to(out_dir))
        results["runs"][run_name] = scored
    cache.release()
    out_dir.mkdir(exist_ok=True)  # every run reused from elsewhere: nothing generated here
    return write_compare_outputs(results, out_dir, plots=plots)
