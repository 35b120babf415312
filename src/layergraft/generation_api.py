"""Public API of generation and its metrics: :func:`generate`, :func:`diversity`,
:func:`compare`. The CLI (``layergraft generate | diversity | compare``) calls these.

Models are given as paths (directory, ``.gguf``, hub id — resolved by
:func:`layergraft.io.checkpoint.open_checkpoint`) or, for the transformers backend, as
in-memory ``(model, tokenizer)`` pairs, so a hybrid made with
:func:`layergraft.surgery.swap.swapped_layers` is evaluated without saving it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.generate import (
    SamplingSettings,
    VllmEngine,
    check_resumable,
    read_records,
    resolve_backend,
    run_generation,
)
from layergraft.tasks.answers import extract_final_answer
from layergraft.tasks.loaders import TaskPrompt, load_task

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
SUBSETS = ("all", "greedy-failed")

__all__ = [
    "SamplingSettings",
    "compare",
    "diversity",
    "generate",
    "load_model",
    "select_greedy_failed",
]


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


from layergraft.loading import load_tokenizer  # noqa: E402  (the package's one tokenizer loader)


def resolve_model_path(spec: PathLike, allow_pickle: bool = False) -> Path:
    """A local checkpoint directory for a path, ``.gguf`` file or hub id (validated)."""
    from layergraft.io.checkpoint import open_checkpoint

    return open_checkpoint(spec, allow_pickle=allow_pickle, validate_arch=False).path


def load_model(
    model: PathLike | Any,
    tokenizer: PathLike | Any | None = None,
    *,
    device: str = "auto",
    dtype: Any = None,
    allow_pickle: bool = False,
    progress: bool = True,
) -> tuple[Any, Any]:
    """``(model, tokenizer)``: objects pass through; a path loads with transformers.

    dtype: float32 on CPU (bf16 matmuls on CPU are slow and change samples), the checkpoint's
    own dtype on GPU, unless given.
    """
    if isinstance(model, (str, os.PathLike)):
        import torch

        path = resolve_model_path(model, allow_pickle)
        dev = _device(device)
        dt = dtype if dtype is not None else (torch.float32 if dev == "cpu" else "auto")
        from layergraft.loading import load_model as _load

        m = _load(path, dtype=dt).to(dev)
        tok = load_tokenizer(tokenizer if tokenizer is not None else path)
        return m, tok
    if tokenizer is None:
        raise InputError("an in-memory model needs its tokenizer: pass tokenizer=")
    return model, load_tokenizer(tokenizer)


def default_model_name(model: PathLike | Any) -> str:
    """What records call the model: an existing path made absolute (so ``./post`` and ``post``
    resume the same file), a hub id as given, or the class name of an in-memory model."""
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        return str(p.resolve()) if p.exists() else str(model)
    return type(model).__name__


def _prompts(task: str | PathLike | Sequence[TaskPrompt], limit: int | None) -> list[TaskPrompt]:
    if isinstance(task, (str, os.PathLike)):
        return load_task(task, limit=limit)
    prompts = list(task)
    return prompts[:limit] if limit else prompts


def _check_reasoning(prompts: Sequence[TaskPrompt]) -> list[TaskPrompt]:
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
) -> list[TaskPrompt]:
    """Reasoning prompts the model answers WRONG under greedy decoding (the SLR paper's subset:
    diversity only helps where the single most likely answer fails). ``out`` caches the greedy
    replies (a resumable generations file), so a complete cache needs no model."""
    reasoning = _check_reasoning(prompts)
    greedy = SamplingSettings(temperature=0.0, min_p=0.0, max_new_tokens=max_new_tokens)
    recs = run_generation(
        model, tokenizer, reasoning, n=1, settings=greedy, batch_size=batch_size,
        chat_template=chat_template, progress=progress, model_name=model_name, out=out,
        backend=backend, vllm_engine=vllm_engine,
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
    device: str = "auto",
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
    prompts = _prompts(task, limit)
    if subset == "greedy-failed":
        _check_reasoning(prompts)
    chosen = resolve_backend(backend, model)
    name = model_name or default_model_name(model)
    check_resumable(out, settings, name)
    engine = None
    if chosen == "vllm":
        path = resolve_model_path(model, allow_pickle)
        m, tok = None, load_tokenizer(tokenizer if tokenizer is not None else path)
        engine = VllmEngine(str(path))
    else:
        m, tok = load_model(
            model, tokenizer, device=device, allow_pickle=allow_pickle, progress=progress
        )
    if subset == "greedy-failed":
        prompts = select_greedy_failed(
            m, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
            chat_template=chat_template, progress=progress, backend=chosen, vllm_engine=engine,
        )  # fmt: skip
        log.info("greedy-failed subset: %d prompts", len(prompts))
    return run_generation(
        m, tok, prompts, n=n, settings=settings, out=out, model_name=name, backend=chosen,
        batch_size=batch_size, chat_template=chat_template, progress=progress, vllm_engine=engine,
    )  # fmt: skip


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
    from layergraft.compare import make_embedder, make_judge, score_records

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


def compare(
    models: Mapping[str, PathLike | tuple[Any, ...]],
    task: str | PathLike | Sequence[TaskPrompt],
    out: PathLike,
    *,
    n: int = 32,
    settings: SamplingSettings | None = None,
    baselines: bool = True,
    baseline_model: str = "post",
    **kwargs: Any,
) -> dict[str, Any]:
    """Generate (or reuse) samples of every model in ``DIR/gens``, score them, and write
    ``DIR/results.json``, ``DIR/report.md`` and PNG plots.

    ``models``: label -> path | ``(model, tokenizer)`` | ``(model, tokenizer, context)``; the
    last form evaluates an in-memory hybrid without saving it::

        compare({"post": (post, tok), "base": (base, tok),
                 "slr": (post, tok, lambda: swapped_layers(post, base, parse_ranges("2:5")))},
                "creative", "out/")

    Other keyword arguments: see :func:`layergraft.compare.run_compare`.
    """
    from layergraft.compare import run_compare

    return run_compare(
        models, task, out, n=n, settings=settings or SamplingSettings(), baselines=baselines,
        baseline_model=baseline_model, **kwargs,
    )  # fmt: skip
