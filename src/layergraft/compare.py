"""Scoring generations and comparing models: results.json first, then Markdown and PNGs.

Why results are data first (DESIGN.md): the table and the plots are rendered from
``results.json``, so a report can be re-rendered or re-plotted without regenerating anything.

Confidence intervals: the unit of sampling is the PROMPT (samples of one prompt are not
independent), so each 95% CI is a percentile bootstrap over prompts of the mean of the
per-prompt values, with a seeded numpy generator (same seed -> same intervals).

Decoding baselines: beside the given models, the ``post`` model is also sampled at temperature
1.5 (``post@T1.5``) and without min-p (``post@no-min-p``): restoring layers must beat simply
turning up the randomness at the same quality.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.generate import SamplingSettings, group_by_prompt
from layergraft.metrics import diversity as D
from layergraft.metrics import quality as Q

log = logging.getLogger(__name__)

DIVERSITY_METRICS = (
    "distinct_1", "distinct_2", "distinct_3", "distinct_4", "self_bleu",
    "embedding_diversity", "vendi", "distinct_answers", "distinct_valid_answers",
    "distinct_final_answers", "distinct_reasoning_paths",
)  # fmt: skip
QUALITY_METRICS = ("valid_rate", "accuracy", "format_validity", "judge")
LOWER_IS_MORE_DIVERSE = frozenset({"self_bleu"})
UNIT_INTERVAL = frozenset(
    {"valid_rate", "accuracy", "format_validity", "judge", "self_bleu", "embedding_diversity"}
    | {f"distinct_{k}" for k in range(1, 5)}
)


# --------------------------------------------------------------------------- scoring


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
        from layergraft.metrics.judge import HFJudge

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
        "per_prompt": per_prompt,
    }


# --------------------------------------------------------------------------- runs


def baseline_runs(name: str, settings: SamplingSettings) -> list[tuple[str, SamplingSettings]]:
    """The decoding baselines of model ``name``: temperature 1.5, and no min-p."""
    return [
        (f"{name}@T1.5", replace(settings, temperature=1.5)),
        (f"{name}@no-min-p", replace(settings, min_p=0.0)),
    ]


def _safe_name(name: str) -> str:
    """A label as a file name: ':' (layer ranges, 'slr0:3') becomes '_'."""
    return "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)


def _complete(
    path: Path, prompts: Sequence[Any], n: int, settings: SamplingSettings, model_name: str
) -> bool:
    """Does ``path`` already hold every (prompt, sample) of this run? A file of another model
    or other settings is an error (never silently mixed), via :func:`check_resumable`."""
    from layergraft.generate import check_resumable, read_records

    check_resumable(path, settings, model_name)
    if not path.exists():
        return False
    have = {(r["prompt_id"], int(r["sample"])) for r in read_records(path)}
    return all((p.id, i) in have for p in prompts for i in range(n))


class _ModelCache:
    """Loads each model when first needed and frees it when another one is needed.

    Why one at a time: comparing four 8B models must not need four models' memory. In-memory
    models are the caller's and are only referenced. A model whose tokenizer has no chat
    template (a base model) borrows the given ``tokenizer`` or the baseline (post) model's:
    the paper samples base and hybrids in the post model's chat format.
    """

    def __init__(
        self,
        models: Mapping[str, Any],
        tokenizer: Any,
        baseline_model: str,
        device: str,
        chat_template: bool,
        progress: bool,
    ) -> None:
        self.models, self.shared_tok, self.baseline = models, tokenizer, baseline_model
        self.device, self.chat_template, self.progress = device, chat_template, progress
        self.current: tuple[str, str, Any] | None = None  # (label, kind, object)
        self.toks: dict[str, Any] = {}

    def record_name(self, label: str) -> str:
        from layergraft.generation_api import default_model_name

        spec = self.models[label]
        return f"{label}:{'in-memory' if isinstance(spec, tuple) else default_model_name(spec)}"

    def _path(self, label: str) -> Path:
        from layergraft.generation_api import resolve_model_path

        return resolve_model_path(self.models[label])

    def tokenizer(self, label: str) -> Any:
        from layergraft.generation_api import load_tokenizer

        if label not in self.toks:
            spec = self.models[label]
            tok = load_tokenizer(spec[1] if isinstance(spec, tuple) else self._path(label))
            if self.chat_template and not getattr(tok, "chat_template", None):
                if self.shared_tok is not None:
                    tok = load_tokenizer(self.shared_tok)
                elif label != self.baseline and self.baseline in self.models:
                    tok = self.tokenizer(self.baseline)
                else:
                    raise InputError(
                        f"model {label!r} has no chat template; pass --tokenizer DIR (e.g. the post model's)"
                    )
                if not getattr(tok, "chat_template", None):
                    raise InputError(
                        f"model {label!r} has no chat template, nor has the tokenizer it would borrow; pass --tokenizer DIR"
                    )
                log.warning("model %r has no chat template; using another tokenizer's", label)
            self.toks[label] = tok
        return self.toks[label]

    def _switch(self, label: str, kind: str, make: Any) -> Any:
        if self.current is not None and self.current[:2] == (label, kind):
            return self.current[2]
        self.release()
        obj = make()
        self.current = (label, kind, obj)
        return obj

    def hf(self, label: str) -> tuple[Any, Any]:
        from layergraft.generation_api import load_model

        spec = self.models[label]
        tok = self.tokenizer(label)
        if isinstance(spec, tuple):
            return spec[0], tok
        model = self._switch(
            label,
            "hf",
            lambda: load_model(spec, tok, device=self.device, progress=self.progress)[0],
        )
        return model, tok

    def vllm(self, label: str) -> Any:
        from layergraft.generate import VllmEngine

        return self._switch(label, "vllm", lambda: VllmEngine(str(self._path(label))))

    def release(self) -> None:
        if self.current is None:
            return
        self.current = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


def run_compare(
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
    device: str = "auto",
    embedder: Any = "default",
    judge: Any = None,
    bootstrap: int = 1000,
    seed: int = 0,
    chat_template: bool = True,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Generate/reuse ``DIR/gens/<run>.jsonl`` per run, score, and write results + report.

    ``models`` maps a label to a path, an in-memory ``(model, tokenizer)`` pair, or a
    ``(model, tokenizer, context)`` triple whose ``context()`` is entered while that model
    generates — so one loaded post model serves both as ``post`` and, inside
    ``lambda: swapped_layers(post, base, ranges)``, as the SLR hybrid, with nothing saved. A model
    whose tokenizer has no chat template (a base model) uses ``tokenizer`` if given, else the
    tokenizer of ``baseline_model`` — the paper evaluates base and hybrids in the post model's
    chat format.
    """
    from layergraft.generate import read_records, resolve_backend, run_generation
    from layergraft.generation_api import (
        _check_reasoning,
        _prompts,
        resolve_model_path,
        select_greedy_failed,
    )

    settings = settings or SamplingSettings()
    if not models:
        raise InputError("--models is empty; give NAME=PATH pairs, e.g. post=P base=B")
    for label in models:
        if not re.fullmatch(r"[\w.:-]+", label) or "@" in label:
            raise InputError(
                f"model label {label!r}: use letters, digits and '-', '_', '.', ':' only"
            )
    if len({_safe_name(m) for m in models}) != len(models):
        raise InputError("two model labels map to the same file name; make them differ in letters")
    if baselines and baseline_model not in models:
        raise InputError(
            f"decoding baselines need a model labelled {baseline_model!r}; add {baseline_model}=PATH "
            "to --models, or pass --no-baselines"
        )
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; give a directory")
    for spec in models.values():
        if isinstance(spec, (str, os.PathLike)):
            resolve_model_path(spec)  # fail fast on a bad path, before any generation
    prompts = _prompts(task, limit)
    if subset == "greedy-failed":
        _check_reasoning(prompts)
    elif subset != "all":
        raise InputError(f"unknown subset {subset!r}; choose all or greedy-failed")
    emb = make_embedder(embedder)
    jdg = make_judge(judge)
    gens_dir = out_dir / "gens"
    gens_dir.mkdir(parents=True, exist_ok=True)

    # baselines right after their model, so each model is loaded once and freed after its runs
    runs: list[tuple[str, str, SamplingSettings]] = []
    for m in models:
        runs.append((m, m, settings))
        if baselines and m == baseline_model:
            runs += [(name, m, s) for name, s in baseline_runs(m, settings)]

    cache = _ModelCache(models, tokenizer, baseline_model, device, chat_template, progress)

    if subset == "greedy-failed":
        label = baseline_model if baseline_model in models else next(iter(models))
        greedy_path = gens_dir / f"{_safe_name(label)}@greedy.jsonl"
        greedy = SamplingSettings(
            temperature=0.0, min_p=0.0, max_new_tokens=settings.max_new_tokens
        )
        done = _complete(greedy_path, prompts, 1, greedy, cache.record_name(label))
        m, tok = (None, None) if done else cache.hf(label)
        prompts = select_greedy_failed(
            m, tok, prompts, max_new_tokens=settings.max_new_tokens, batch_size=batch_size,
            chat_template=chat_template, progress=progress, out=greedy_path,
            model_name=cache.record_name(label),
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
    for run_name, label, s in runs:
        path = gens_dir / f"{_safe_name(run_name)}.jsonl"
        model_name = cache.record_name(label)
        if _complete(path, prompts, n, s, model_name):  # reuse: no model needed
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
                    progress=progress, vllm_engine=engine,
                )  # fmt: skip
        scored = score_records(recs, embedder=emb, judge=jdg, bootstrap=bootstrap, seed=seed)
        scored["label"] = label
        scored["generations_file"] = str(path.relative_to(out_dir))
        results["runs"][run_name] = scored
    cache.release()
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "report.md", render_markdown(results))
    if plots:
        results["plots"] = render_plots(results, out_dir)
        write_json_atomic(out_dir / "results.json", results)
        write_text_atomic(out_dir / "report.md", render_markdown(results))
    return results


# --------------------------------------------------------------------------- rendering


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def table_metrics(results: Mapping[str, Any]) -> list[str]:
    """Columns of the report table: quality first, then diversity, only those present."""
    present: set[str] = set()
    for r in results["runs"].values():
        present |= set(r["mean"])
    passk = sorted((m for m in present if m.startswith("pass@")), key=lambda m: int(m[5:]))
    order = [
        *QUALITY_METRICS[:1],
        "accuracy",
        *passk,
        "format_validity",
        "judge",
        *DIVERSITY_METRICS,
    ]
    seen: list[str] = []
    for m in order:
        if m in present and m not in seen:
            seen.append(m)
    return seen


def _fmt(mean: float, ci: Sequence[float] | None) -> str:
    big = abs(mean) >= 10
    f = (lambda x: f"{x:.1f}") if big else (lambda x: f"{x:.3f}")
    return f"{f(mean)} [{f(ci[0])}, {f(ci[1])}]" if ci else f(mean)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The report: setup, then a models x metrics table of means with bootstrap 95% CIs."""
    metrics = table_metrics(results)
    s = results["settings"]
    lines = [
        "# Diversity and quality comparison",
        "",
        f"- task: `{results['task']}` (subset: {results['subset']}), "
        f"{len(results['prompt_ids'])} prompts x {results['n']} samples",
        f"- decoding: temperature {s['temperature']}, top-p {s['top_p']}, min-p {s['min_p']}, "
        f"max new tokens {s['max_new_tokens']}, seed {s['seed']}",
        "- values: mean over prompts of per-prompt metrics; [95% CI] percentile bootstrap over "
        "prompts (seeded); self_bleu: lower = more diverse",
        "",
    ]
    lines.append("| run | " + " | ".join(metrics) + " |")
    lines.append("|---|" + "---|" * len(metrics))
    for name, r in results["runs"].items():
        st = r.get("settings") or {}
        label = f"{name} (T={st.get('temperature')}, min-p={st.get('min_p')})"
        cells = [_fmt(r["mean"][m], r["ci95"].get(m)) if m in r["mean"] else "–" for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Models", ""]
    lines += [f"- `{k}`: {v}" for k, v in results["models"].items()]
    if results.get("plots"):
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in results["plots"]]
    lines += ["", "Generated by `layergraft compare`; all numbers are in `results.json`.", ""]
    return "\n".join(lines)


def headline_metrics(results: Mapping[str, Any]) -> tuple[str, str]:
    """(quality, diversity) metric for the scatter plot, by what the runs have."""
    present: set[str] = set()
    for r in results["runs"].values():
        present |= set(r["mean"])
    quality = next(
        (m for m in ("accuracy", "valid_rate", "judge", "format_validity") if m in present),
        "format_validity",
    )
    div = next(
        (m for m in ("embedding_diversity", "vendi", "distinct_2") if m in present), "distinct_2"
    )
    return quality, div


def render_plots(results: Mapping[str, Any], out_dir: Path) -> list[str]:
    """Bar charts (one panel per headline metric, CI error bars) and a quality-vs-diversity
    scatter, drawn with matplotlib's Agg backend (no display needed). Returns relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    names = list(runs)
    quality, div = headline_metrics(results)
    panel = [
        m
        for m in (quality, "format_validity", div, "vendi", "distinct_2", "self_bleu")
        if any(m in r["mean"] for r in runs.values())
    ]
    panel = list(dict.fromkeys(panel))
    paths = []
    fig, axes = plt.subplots(1, len(panel), figsize=(3.2 * len(panel), 3.6), squeeze=False)
    for ax, m in zip(axes[0], panel, strict=True):
        means = [runs[n]["mean"].get(m, float("nan")) for n in names]
        err = [[0.0] * len(names), [0.0] * len(names)]
        for i, n in enumerate(names):
            c = runs[n]["ci95"].get(m)
            if c:
                err[0][i] = max(means[i] - c[0], 0.0)
                err[1][i] = max(c[1] - means[i], 0.0)
        ax.bar(
            range(len(names)),
            means,
            yerr=err,
            capsize=3,
            color=[f"C{i}" for i in range(len(names))],
        )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(m + (" (lower = diverse)" if m in LOWER_IS_MORE_DIVERSE else ""), fontsize=9)
        if m in UNIT_INTERVAL:
            ax.set_ylim(0.0, 1.05)
    fig.tight_layout()
    fig.savefig(out_dir / "metrics_bars.png", dpi=120)
    plt.close(fig)
    paths.append("metrics_bars.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    for i, n in enumerate(names):
        r = runs[n]
        if quality not in r["mean"] or div not in r["mean"]:
            continue
        x, y = r["mean"][div], r["mean"][quality]
        cx, cy = r["ci95"].get(div, [x, x]), r["ci95"].get(quality, [y, y])
        ax.errorbar(
            x,
            y,
            xerr=[[x - cx[0]], [cx[1] - x]],
            yerr=[[y - cy[0]], [cy[1] - y]],
            fmt="o",
            color=f"C{i}",
            capsize=3,
        )
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if quality in UNIT_INTERVAL:
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"{div} (diversity)")
    ax.set_ylabel(f"{quality} (quality)")
    ax.set_title("quality vs diversity (95% CI over prompts)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "quality_vs_diversity.png", dpi=120)
    plt.close(fig)
    paths.append("quality_vs_diversity.png")
    return paths
