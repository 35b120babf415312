"""lm-evaluation-harness on a model *in memory*, with layergraft's bundled offline tasks.

Why in memory: a pruned model with ghost operators is a Python object with hooks; handing
lm-eval a path would make it reload the model (and need ``trust_remote_code``). ``HFLM``
accepts a ``PreTrainedModel`` plus tokenizer, so what is evaluated is exactly what was pruned.

Why bundled tasks: the standard tasks download their datasets; ``data/lm_eval_tasks`` holds
task YAMLs whose data are local JSONL files, registered through ``TaskManager(include_path=)``.
The YAMLs name their data file as ``__DATA_DIR__/x.jsonl``; :func:`local_task_dir` renders them
with the absolute path into a temp dir (lm-eval resolves relative ``data_files`` against the
working directory, not the YAML).

``layergraft_cloze``: next-word multiple choice built from the bundled *held-out* text
(never seen by the toy models nor by calibration): a passage, the true next word and three
distractor words drawn from the same text (fixed seed); ``acc`` = the true word gets the
highest log-likelihood. See :func:`build_cloze_items`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.models.load import model_and_tokenizer

log = logging.getLogger(__name__)
TASKS_DIR = Path(__file__).parents[1] / "data" / "lm_eval_tasks"


def build_cloze_items(text: str, n: int = 40, seed: int = 0, context_words: int = 12) -> list[dict]:
    """``n`` next-word items from ``text``: context = ``context_words`` words ending a
    sentence prefix, choices = the true next word + 3 distinct distractors (alphabetic words
    of 4+ letters from the same text), shuffled; ``label`` = index of the true word."""
    rng = random.Random(seed)
    words = text.split()
    pool = sorted({w for w in words if re.fullmatch(r"[a-z]{4,}", w)})
    items: list[dict] = []
    tried: set[int] = set()
    while len(items) < n and len(tried) < len(words):
        i = rng.randrange(context_words, len(words) - 1)
        if i in tried:
            continue
        tried.add(i)
        target = words[i]
        if not re.fullmatch(r"[a-z]{4,}", target):
            continue
        distract = rng.sample([w for w in pool if w != target], 3)
        choices = [target, *distract]
        rng.shuffle(choices)
        items.append(
            {
                "context": " ".join(words[i - context_words : i]),
                "choices": choices,
                "label": choices.index(target),
            }
        )
    return items


def local_task_dir(dest: Path | None = None) -> Path:
    """The bundled task YAMLs rendered with absolute data paths (into ``dest`` or a temp dir)."""
    out = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="layergraft-tasks-"))
    out.mkdir(parents=True, exist_ok=True)
    for y in TASKS_DIR.glob("*.yaml"):
        (out / y.name).write_text(y.read_text().replace("__DATA_DIR__", str(TASKS_DIR)))
    return out


def local_tasks() -> list[str]:
    return sorted(
        m.group(1)
        for y in TASKS_DIR.glob("*.yaml")
        if (m := re.search(r"^task:\s*(\S+)", y.read_text(), re.M))
    )


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: str | Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    seed: int = 1234,
) -> dict[str, Any]:
    """Evaluate ``model`` (in memory) on ``tasks``; returns ``{"results": {task: metrics},
    "tasks": [...], "limit": ..., "versions": ...}`` (JSON-ready)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:  # pragma: no cover - optional dependency
        raise InputError("lm-eval is not installed; pip install 'layergraft[eval]'") from e
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [t for t in names if t]
    if not names:
        raise InputError("no lm-eval tasks given; e.g. --tasks layergraft_cloze")
    if isinstance(limit, float) and limit.is_integer() and limit >= 1:
        limit = int(limit)
    with tempfile.TemporaryDirectory(prefix="layergraft-tasks-") as tmp:
        # indexing lm-eval's thousands of built-in YAMLs takes seconds: skip it when every
        # requested task is one of ours
        only_local = set(names) <= set(local_tasks())
        tm = TaskManager(
            include_path=str(local_task_dir(Path(tmp))), include_defaults=not only_local
        )
        unknown = [t for t in names if t not in tm.all_tasks]
        if unknown:
            raise InputError(
                f"unknown lm-eval task {unknown[0]!r}; bundled offline tasks: {', '.join(local_tasks())}"
            )
        dev = str(next(model.parameters()).device)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=dev)
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=tm,
            limit=limit,
            num_fewshot=num_fewshot,
            log_samples=False,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    results = {
        task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float))}
        for task, metrics in res["results"].items()
    }
    return {
        "results": results,
        "tasks": names,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "n_samples": res.get("n-samples", {}),
        "lm_eval_version": getattr(lm_eval, "__version__", "?"),
    }


def lm_eval(
    model: str | os.PathLike[str] | tuple[Any, Any],
    tasks: str | Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> dict[str, Any]:
    """Run lm-evaluation-harness on the model in memory (ghosted outputs included)."""
    m, tok, origin = model_and_tokenizer(model, device=device, dtype=dtype, device_map=device_map)
    out = run_lm_eval(m, tok, tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size)
    out["model"] = origin
    return out
