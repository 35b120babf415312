"""The optional vLLM backend (``layergraft[vllm]``, GPU): same jobs, same record format.

vLLM seeds each request with the same per-(prompt, sample) seed as the transformers backend,
but its sampler is its own, so the two backends do not give the same samples.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.jobs import Job
from layergraft.gen.sampling import SamplingSettings, sample_seed

BACKENDS = ("auto", "transformers", "vllm")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def resolve_backend(backend: str, model: Any) -> str:
    """``auto``: vLLM when installed, a GPU is present and the model is a path; else transformers."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    is_path = isinstance(model, (str, os.PathLike))
    if backend == "vllm":
        if not vllm_available():
            raise InputError(
                "--backend vllm needs vLLM; pip install 'layergraft[vllm]' or use --backend transformers"
            )
        if not is_path:
            raise InputError(
                "the vLLM backend loads models from disk; save the in-memory model or use the transformers backend"
            )
        return "vllm"
    if backend == "auto" and is_path and vllm_available() and _cuda_available():
        return "vllm"
    return "transformers"


class VllmEngine:
    """vLLM, loaded once per model path; one request per (prompt, sample) with its own seed."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        from vllm import LLM  # type: ignore[import-not-found]

        self.llm = LLM(model=str(path), **kwargs)

    def generate(
        self, tokenizer: Any, jobs: Sequence[Job], settings: SamplingSettings, eos: list[int]
    ) -> list[tuple[str, int, bool]]:
        from vllm import SamplingParams  # type: ignore[import-not-found]

        params = [
            SamplingParams(
                n=1,
                temperature=settings.temperature,
                top_p=settings.top_p,
                min_p=settings.min_p,
                max_tokens=settings.max_new_tokens,
                seed=sample_seed(settings.seed, j.prompt.id, j.sample) % (2**31),
                stop_token_ids=eos,
            )
            for j in jobs
        ]
        prompts = [{"prompt_token_ids": list(j.ids)} for j in jobs]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for o in outs:
            c = o.outputs[0]
            finished = c.finish_reason == "stop"
            results.append((c.text, len(c.token_ids), finished))
        return results
