"""Sampling k generations per prompt, batched, resumable, deterministic under a seed.

Why our own sampler (:class:`~layergraft.gen.sampling.RowSampler`) inside ``model.generate``:
transformers samples a whole batch from the global RNG, so a sample would depend on which
other prompts share its batch. transformers keeps what it is good at (KV caches of every
architecture, left padding, stopping on EOS).

What is guaranteed (same model, device, dtype, software versions):

* the same seed and settings give the same file, byte for byte, at any batch size where the
  model's logits for a row do not depend on the batch (they do not on CPU float32 in our
  tests); a sample's random stream never depends on its neighbours, so a resumed run draws the
  same samples as an uninterrupted one;
* batched kernels can change logits in the last bits (GPU, bf16); then a draw that falls exactly
  on a probability boundary can differ between batch sizes. Keep ``batch_size`` fixed to
  reproduce a GPU run bit for bit.

Backends: ``transformers`` (default; CPU or GPU) and ``vllm`` (optional extra
``layergraft[vllm]``; GPU). vLLM seeds each request with the same per-(prompt, sample) seed,
but its sampler is its own, so the two backends do not give the same samples.

Output: one JSON line per generation (:mod:`layergraft.gen.records`); an interrupted file is
resumed, never restarted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.ends import stop_token_ids
from layergraft.gen.jobs import Job, pending_jobs
from layergraft.gen.records import check_compatible, drop_partial_line, make_record, read_records
from layergraft.gen.sampling import RowSampler, SamplingSettings, sample_seed
from layergraft.gen.tasks import TaskPrompt
from layergraft.gen.vllm import VllmEngine
from layergraft.models.batching import left_pad

log = logging.getLogger(__name__)


def _batches(jobs: Sequence[Job], size: int) -> Iterator[list[Job]]:
    for i in range(0, len(jobs), size):
        yield list(jobs[i : i + size])


def _hf_generation_config(settings: SamplingSettings, eos: list[int], pad: int) -> Any:
    """Greedy (our RowSampler samples) with every transformers-side processor neutral, because
    unset values are filled from the model's own generation_config."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        min_new_tokens=0,
        renormalize_logits=False,
    )


def hf_generate_batch(
    model: Any,
    tokenizer: Any,
    jobs: Sequence[Job],
    settings: SamplingSettings,
    eos: list[int] | None = None,
) -> list[tuple[str, int, bool]]:
    """Generate one batch with left padding; returns (text, num_tokens, finished) per job.
    ``eos``: the ids a reply stops on (default: the model's end markers,
    :func:`~layergraft.gen.ends.stop_token_ids`); none means the reply ends only at
    ``max_new_tokens``, even where transformers would fill in a default eos."""
    import torch
    from transformers import LogitsProcessorList

    if eos is None:
        eos = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    input_ids, mask = left_pad([j.ids for j in jobs], pad)
    width = input_ids.shape[1]
    device = next(model.parameters()).device
    sampler = RowSampler(
        settings, [sample_seed(settings.seed, j.prompt.id, j.sample) for j in jobs]
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            generation_config=_hf_generation_config(settings, eos, pad),
            logits_processor=LogitsProcessorList([sampler]),
        )
    results = []
    eos_set = set(eos)
    for row in out[:, width:].tolist():
        n, finished = len(row), False
        for i, t in enumerate(row):
            if t in eos_set:
                n, finished = i + 1, True
                break
        body = row[: n - 1] if finished else row[:n]
        results.append((tokenizer.decode(body, skip_special_tokens=True), n, finished))
    return results


def run_generation(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[TaskPrompt],
    *,
    n: int,
    settings: SamplingSettings,
    out: str | os.PathLike[str] | None = None,
    model_name: str = "model",
    backend: str = "transformers",
    batch_size: int = 16,
    chat_template: bool = True,
    progress: bool = True,
    vllm_engine: VllmEngine | None = None,
    weights: str | None = None,
) -> list[dict[str, Any]]:
    """Generate ``n`` samples per prompt; append them to ``out`` (resuming it) and return all
    records of the run, existing ones included, in (prompt, sample) order. ``weights``
    (:func:`~layergraft.gen.records.weights_digest`) keeps another model's records out."""
    if n < 1:
        raise InputError(f"--n must be at least 1, not {n}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    path = Path(out) if out is not None else None
    existing: list[dict[str, Any]] = []
    if path is not None:
        if path.exists() and not path.is_file():
            raise InputError(f"{path} is not a file; give a .jsonl path for --out")
        existing = read_records(path)
        # the settings check first: a refused file is left exactly as it was
        check_compatible(existing, settings, model_name, path, weights)
        drop_partial_line(path)  # then the partial last line of a killed run
    by_key = {(r["prompt_id"], int(r["sample"])): r for r in existing}
    jobs = pending_jobs(tokenizer, prompts, n, set(by_key), chat_template=chat_template)
    if jobs:
        from tqdm.auto import tqdm

        if backend == "transformers":
            model.eval()
        eos = stop_token_ids(model, tokenizer)  # the model's end markers (gen.ends)
        with contextlib.ExitStack() as stack:
            fh = None
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                fh = stack.enter_context(open(path, "a", encoding="utf-8"))
            bar = stack.enter_context(
                tqdm(
                    total=len(jobs),
                    desc=f"generate {_short_name(model_name)}",
                    unit="gen",
                    disable=not progress,
                )
            )
            for batch in _batches(jobs, batch_size):
                if backend == "vllm":
                    assert vllm_engine is not None
                    res = vllm_engine.generate(tokenizer, batch, settings, eos)
                else:
                    res = hf_generate_batch(model, tokenizer, batch, settings, eos)
                lines = []
                for j, (text, ntok, fin) in zip(batch, res, strict=True):
                    rec = make_record(
                        j.prompt, j.sample, text, ntok, fin, settings, model_name, backend, weights
                    )
                    by_key[(j.prompt.id, j.sample)] = rec
                    lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
                if fh is not None:
                    # one write per batch: a kill leaves at most one truncated line
                    fh.write("".join(lines))
                    fh.flush()
                bar.update(len(batch))
    wanted = [(p.id, s) for p in prompts for s in range(n)]
    return [by_key[k] for k in wanted]


def _short_name(model_name: str) -> str:
    """A progress-bar label: the run label of ``label:path`` names, else the path's last part."""
    if ":" in model_name and not model_name.startswith("/"):
        return model_name.split(":", 1)[0]
    return Path(model_name).name or model_name
