"""Scoring generations: per-prompt diversity and quality metrics, means and bootstrap CIs.

Confidence intervals: the unit of sampling is the PROMPT (samples of one prompt are not
independent), so each 95% CI is a percentile bootstrap over prompts of the mean of the
per-prompt values, with a seeded numpy generator (same seed -> same intervals).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.metrics import diversity as D
from layergraft.gen.metrics import quality as Q
from layergraft.gen.metrics.judge import HFJudge
from layergraft.gen.records import group_by_prompt, read_records

PathLike = str | os.PathLike[str]
log = logging.getLogger(__name__)


def make_embedder(spec: Any) -> D.Embedder | None:
    """``"default"`` -> packaged MiniLM; None/"none" -> no embedding metrics; path -> that model."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, D.Embedder):
        return spec
    return D.Embedder(None if spec == "default" else spec)


def make_judge(spec: Any) -> Any:
    if spec is None:
        return None
    if isinstance(spec, (str, os.PathLike)):
        return HFJudge(spec)
    return spec


def score_prompt(
    recs: Sequence[dict[str, Any]], emb: Any = None, judge_scores: Sequence[float] | None = None
) -> dict[str, float | int | None]:
    """All metrics of one prompt's samples (the records must share a prompt id)."""
    texts = [str(r["text"]) for r in recs]
    task = str(recs[0].get("task", "creative"))
    ref = recs[0].get("reference") or {}
    out: dict[str, float | int | None] = {"samples": len(texts)}
    for k in range(1, 5):
        out[f"distinct_{k}"] = D.distinct_n(texts, k)
    out["self_bleu"] = D.self_bleu(texts)
    if emb is not None:
        out["embedding_diversity"] = D.embedding_diversity(emb)
        out["vendi"] = D.vendi_score(emb)
    finished = [bool(r.get("finished", True)) for r in recs]
    out["finished_rate"] = Q.finished_rate(finished)
    if task in Q.FORMAT_TASKS:
        out["format_validity"] = Q.format_validity(texts, task, finished)
    out["mean_tokens"] = sum(int(r.get("num_tokens", 0)) for r in recs) / len(recs)
    if task == "qa":
        out["distinct_answers"] = D.distinct_answers(texts)
        if ref.get("valid"):
            valid, aliases = ref["valid"], ref.get("aliases")
            out["valid_rate"] = Q.qa_validity(texts, valid, aliases)
            out["distinct_valid_answers"] = D.distinct_valid_answers(texts, valid, aliases)
    elif task == "reasoning":
        out["distinct_final_answers"] = D.distinct_final_answers(texts)
        out["distinct_reasoning_paths"] = D.distinct_reasoning_paths(texts)
        if ref.get("answer") is not None:
            flags = Q.correct_flags(texts, str(ref["answer"]))
            out["accuracy"] = sum(flags) / len(flags)
            for k in Q.pass_ks(len(flags)):
                out[f"pass@{k}"] = Q.pass_at_k(len(flags), sum(flags), k)
    if judge_scores is not None:
        out["judge"] = sum(judge_scores) / len(judge_scores)
    return out


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean (numpy, seeded). None for no values; a single
    value gives a zero-width interval."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return None
    if v.size == 1 or resamples < 1:
        return float(v.mean()), float(v.mean())
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def aggregate(
    per_prompt: Mapping[str, Mapping[str, Any]], *, bootstrap: int = 1000, seed: int = 0
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Mean over prompts of every metric (prompts where it is undefined are skipped) and its CI."""
    names: list[str] = []
    for m in per_prompt.values():
        names.extend(k for k in m if k not in names)
    mean: dict[str, float] = {}
    ci: dict[str, list[float]] = {}
    for name in names:
        vals = [m[name] for m in per_prompt.values() if m.get(name) is not None]
        if not vals:
            continue
        mean[name] = float(sum(vals) / len(vals))
        c = bootstrap_ci(vals, resamples=bootstrap, seed=seed)
        if c is not None:
            ci[name] = [c[0], c[1]]
    return mean, ci


#: below this share of complete, in-format replies, text diversity measures something else
CAVEAT_BELOW = 0.5


def format_caveats(mean: Mapping[str, Any]) -> list[str]:
    """Why this run's diversity numbers may not compare with others': most replies cut off by
    the token budget, or out of the task's format. A model that loops or ignores the chat
    format scores high on distinct-n and low on self-BLEU without being diverse in any useful
    sense; the quality columns and embedding metrics are the fairer comparison then."""
    out = []
    fin, fmt = mean.get("finished_rate"), mean.get("format_validity")
    if fin is not None and fin < CAVEAT_BELOW:
        out.append(
            f"only {fin:.0%} of replies ended within the token budget: its text diversity "
            "is mostly of cut-off text (raise --max-new-tokens, or read embedding diversity and "
            "the quality columns)"
        )
    if fmt is not None and fmt < CAVEAT_BELOW:
        out.append(
            f"only {fmt:.0%} of replies are complete and in the task's format: distinct-n and "
            "self-BLEU of out-of-format text are not comparable with an in-format model's"
        )
    return out


def score_records(
    records: Sequence[dict[str, Any]],
    *,
    embedder: D.Embedder | None = None,
    judge: Any = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-prompt metrics, their means and bootstrap CIs for one model's generations."""
    groups = group_by_prompt(records)
    embs: dict[str, Any] = {}
    if embedder is not None:
        texts = [str(r["text"]) for g in groups.values() for r in g]
        all_emb = embedder.encode(texts)
        i = 0
        for pid, g in groups.items():
            embs[pid] = all_emb[i : i + len(g)]
            i += len(g)
    per_prompt: dict[str, dict[str, Any]] = {}
    for pid, g in groups.items():
        js = None
        if judge is not None:
            js = judge.score([str(r["prompt"]) for r in g], [str(r["text"]) for r in g])
        per_prompt[pid] = score_prompt(g, embs.get(pid), js)
    mean, ci = aggregate(per_prompt, bootstrap=bootstrap, seed=seed)
    caveats = format_caveats(mean)
    for c in caveats:
        log.warning("%s: %s", records[0].get("model") if records else "generations", c)
    first = records[0] if records else {}
    tasks = sorted({str(r.get("task")) for r in records})
    return {
        "model": first.get("model"),
        "settings": first.get("settings"),
        "tasks": tasks,
        "prompts": len(groups),
        "generations": len(records),
        "embedder": embedder.name if embedder is not None else None,
        "judge": getattr(judge, "name", None) if judge is not None else None,
        "bootstrap": {"resamples": bootstrap, "seed": seed, "level": 0.95, "unit": "prompt"},
        "mean": mean,
        "ci95": ci,
        "caveats": caveats,
        "per_prompt": per_prompt,
    }


def diversity(
    gens: PathLike | Sequence[dict[str, Any]],
    *,
    embedder: PathLike | None | str = "default",
    judge: PathLike | Any | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Diversity and quality metrics of a generations file (or its records): per prompt, then
    the mean over prompts with a seeded bootstrap 95% CI. ``embedder=None`` skips the embedding
    metrics; ``"default"`` is the packaged all-MiniLM-L6-v2; a path picks another local model.
    ``judge``: a local HF reward/chat model dir (or a Judge object); off by default."""
    if isinstance(gens, (str, os.PathLike)):
        p = Path(gens)
        if not p.is_file():
            raise InputError(f"{p}: no such generations file; write one with layergraft generate")
        records = read_records(p)
        if not records:
            raise InputError(f"{p} holds no generations; run layergraft generate first")
    else:
        records = list(gens)
    return score_records(
        records, embedder=make_embedder(embedder), judge=make_judge(judge),
        bootstrap=bootstrap, seed=seed,
    )  # fmt: skip
