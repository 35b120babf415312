"""``generate``: sample k replies per prompt of a task into a resumable JSONL file.

Models are given as paths (directory, ``.gguf``, hub id) or, for the transformers backend, as
in-memory objects with their tokenizer, so a hybrid made with
:func:`layergraft.slr.hybrid.swap.swapped_layers` is sampled without saving it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from layergraft.checkpoint.outputs import check_output
from layergraft.errors import InputError
from layergraft.gen.answers import extract_final_answer
from layergraft.gen.engine import run_generation
from layergraft.gen.records import check_resumable, default_model_name, weights_digest
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.tasks import TaskPrompt, load_task
from layergraft.gen.vllm import VllmEngine, resolve_backend
from layergraft.models.load import load_model, load_tokenizer, local_dir

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
SUBSETS = ("all", "greedy-failed")


def task_prompts(
    task: str | PathLike | Sequence[TaskPrompt], limit: int | None
) -> list[TaskPrompt]:
    if isinstance(task, (str, os.PathLike)):
        return load_task(task, limit=limit)
    prompts = list(task)
    return prompts[:limit] if limit else prompts


def reasoning_only(prompts: Sequence[TaskPrompt]) -> list[TaskPrompt]:
    reasoning = [p for p in prompts if p.task == "reasoning"]
    if len(reasoning) != len(prompts):
        raise InputError(
            "--subset greedy-failed applies to reasoning prompts only; use --task reasoning"
        )
    return reasoning


def select_greedy_failed(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[TaskPrompt],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    chat_template: bool = True,
    progress: bool = False,
    out: PathLike | None = None,
    model_name: str = "greedy",
    backend: str = "transformers",
    vllm_engine: VllmEngine | None = None,
    weights: str | None = None,
) -> list[TaskPrompt]:
    """Reasoning prompts the model answers WRONG under greedy decoding (the SLR paper's subset:
    diversity only helps where the single most likely answer fails). ``out`` caches the greedy
    replies (a resumable generations file), so a complete cache needs no model."""
    reasoning = reasoning_only(prompts)
    greedy = SamplingSettings(temperature=0.0, min_p=0.0, max_new_tokens=max_new_tokens)
    recs = run_generation(
        model, tokenizer, reasoning, n=1, settings=greedy, batch_size=batch_size,
        chat_template=chat_template, progress=progress, model_name=model_name, out=out,
        backend=backend, vllm_engine=vllm_engine, weights=weights,
    )  # fmt: skip
    return [
        p
        for p, r in zip(reasoning, recs, strict=True)
        if extract_final_answer(r["text"]) != p.answer
    ]


def generate(
    model: PathLike | Any,
    task: str | PathLike | Sequence[TaskPrompt] = "creative",
    *,
    n: int = 32,
    out: PathLike | None = None,
    tokenizer: PathLike | Any | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    min_p: float = 0.1,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 16,
    backend: str = "auto",
    subset: str = "all",
    limit: int | None = None,
    chat_template: bool = True,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    model_name: str | None = None,
    progress: bool = True,
    allow_pickle: bool = False,
) -> list[dict[str, Any]]:
    """Sample ``n`` replies per prompt of ``task`` and return the records (also appended to
    ``out``, a JSONL file that is resumed if it exists).

    ``task``: ``creative`` | ``qa`` | ``reasoning`` | a JSONL path | a list of TaskPrompt.
    ``subset="greedy-failed"`` keeps the reasoning prompts the model gets wrong greedily.
    Everything is validated before a model is loaded.
    """
    settings = SamplingSettings(temperature, top_p, min_p, max_new_tokens, seed)
    if subset not in SUBSETS:
        raise InputError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    if n < 1 or batch_size < 1:
        raise InputError("--n and --batch-size must be at least 1")
    prompts = task_prompts(task, limit)
    if subset == "greedy-failed":
        reasoning_only(prompts)
    chosen = resolve_backend(backend, model)
    name = model_name or default_model_name(model)
    if out is not None:  # appended to (resumed), never an input
        reads = [model, task if isinstance(task, (str, os.PathLike)) else None, tokenizer]
        check_output(out, inputs=reads, kind="file", flag="--out", reuse=True)
    weights = weights_digest(model, allow_pickle) if out is not None else None
    check_resumable(out, settings, name, weights)
    engine = None
    if chosen == "vllm":
        path = local_dir(model, allow_pickle)
        m, tok = None, load_tokenizer(tokenizer if tokenizer is not None else path)
        engine = VllmEngine(str(path))
    elif isinstance(model, (str, os.PathLike)):
        m = load_model(
            model, device=device, dtype=dtype, device_map=device_map, allow_pickle=allow_pickle
        )
        tok = load_tokenizer(tokenizer if tokenizer is not None else local_dir(model))
    else:
        if tokenizer is None:
            raise InputError("an in-memory model needs its tokenizer: pass tokenizer=")
        m, tok = model, load_tokenizer(tokenizer)
    if subset == "greedy-failed":
        prompts = select_greedy_failed(
            m, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
            chat_template=chat_template, progress=progress, backend=chosen, vllm_engine=engine,
        )  # fmt: skip
        log.info("greedy-failed subset: %d prompts", len(prompts))
    return run_generation(
        m, tok, prompts, n=n, settings=settings, out=out, model_name=name, backend=chosen,
        batch_size=batch_size, chat_template=chat_template, progress=progress, vllm_engine=engine,
        weights=weights,
    )  # fmt: skip
