"""Sampling k generations per prompt, batched, resumable, deterministic under a seed.

Why our own sampler inside ``model.generate``: transformers samples a whole batch from the
global RNG, so a sample depends on which other prompts share its batch (and on the batch
size). Here ``generate`` runs in *greedy* mode and a logits processor (:class:`RowSampler`)
does the sampling: temperature -> min-p -> top-p, then one uniform draw per row from that
row's own ``torch.Generator``, seeded from ``(seed, prompt id, sample index)``. The chosen
token is the only finite logit, so greedy picks it. transformers keeps what it is good at
(KV caches of every architecture, left padding, stopping on EOS).

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

Output: one JSON line per generation (see :func:`make_record`); an interrupted file is
resumed, never restarted (:func:`read_records` tolerates a truncated last line).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.jsonl import json_lines
from layergraft.tasks.loaders import TaskPrompt

log = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "vllm")
RECORD_VERSION = 1


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings. Defaults are the SLR paper's: temperature 1.0, min-p 0.1.

    ``temperature=0`` means greedy decoding (the seed is then irrelevant).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.1
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0 (0 = greedy), not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top-p must be in (0, 1], not {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise InputError(f"min-p must be in [0, 1), not {self.min_p}")
        if self.max_new_tokens < 1:
            raise InputError(f"max new tokens must be at least 1, not {self.max_new_tokens}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample_seed(seed: int, prompt_id: str, sample: int) -> int:
    """A 63-bit seed for one (prompt, sample): stable across runs, machines and batch layouts."""
    h = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{sample}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- sampling


def filter_probs(probs: Any, top_p: float, min_p: float) -> Any:
    """Zero out tokens removed by min-p (p < min_p * max p) then top-p (smallest prefix of the
    sorted distribution whose mass reaches ``top_p``); renormalise. Rows of ``probs`` sum to 1.

    Order as in vLLM and the min-p paper: min-p on the temperature-scaled distribution first.
    """
    import torch

    if min_p > 0:
        keep = probs >= min_p * probs.max(dim=-1, keepdim=True).values
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(dim=-1, keepdim=True)
    if top_p < 1:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


class RowSampler:
    """A transformers logits processor that samples each row with its own generator.

    Returns logits that are 0 at the drawn token and -inf elsewhere, so greedy decoding in
    ``generate`` emits exactly the draw. Works in float64 so the inverse-CDF draw does not
    depend on the float32 summation order of the batch.
    """

    def __init__(self, settings: SamplingSettings, seeds: Sequence[int]) -> None:
        import torch

        self.settings = settings
        self.generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(s)
            self.generators.append(g)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        s = self.settings
        if s.temperature == 0:
            choice = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores.double() / s.temperature, dim=-1)
            probs = filter_probs(probs, s.top_p, s.min_p)
            u = torch.stack(
                [torch.rand((), generator=g, dtype=torch.float64) for g in self.generators]
            )
            cdf = probs.cumsum(dim=-1)
            # u in [0, total mass): the first index whose cdf exceeds u has probability > 0
            u = u.to(cdf.device) * cdf[:, -1]
            choice = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
            choice = choice.clamp_max(probs.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, choice.unsqueeze(-1), 0.0)
        return out


# --------------------------------------------------------------------------- prompts


def chat_prompt_ids(tokenizer: Any, text: str, *, chat_template: bool = True) -> list[int]:
    """Token ids of ``text`` as a user turn, with the assistant turn opened.

    Why render to a string first: the template already writes BOS and other special tokens, so
    the string is encoded with ``add_special_tokens=False`` (no double BOS).
    """
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(
                "the tokenizer has no chat template; give a tokenizer that has one "
                "(--tokenizer, e.g. the post model's) or pass --no-chat-template"
            )
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the model's generation config (chat models often stop on an end-of-turn
    token there) plus the tokenizer's EOS."""
    ids: list[int] = []
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    for src in (eos, getattr(tokenizer, "eos_token_id", None)):
        if src is None:
            continue
        for i in [src] if isinstance(src, int) else list(src):
            if i not in ids:
                ids.append(int(i))
    return ids


# --------------------------------------------------------------------------- records / resume


def make_record(
    prompt: TaskPrompt,
    sample: int,
    text: str,
    num_tokens: int,
    finished: bool,
    settings: SamplingSettings,
    model_name: str,
    backend: str,
) -> dict[str, Any]:
    """One generation. ``num_tokens`` counts generated tokens including the stop token;
    ``finished`` is False when ``max_new_tokens`` cut the reply off."""
    return {
        "prompt_id": prompt.id,
        "sample": sample,
        "task": prompt.task,
        "prompt": prompt.prompt,
        "text": text,
        "num_tokens": num_tokens,
        "finished": finished,
        "reference": prompt.reference(),
        "settings": settings.to_json(),
        "model": model_name,
        "backend": backend,
        "version": RECORD_VERSION,
    }


def read_records(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a generations file. A last line without its newline is an interrupted write:
    it is ignored (and cut off the file when ``repair``). Any other bad line is an error."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    cut = len(data)
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: ignoring a truncated last line (an interrupted run)", p)
        if repair:
            with open(p, "r+b") as f:
                f.truncate(cut)
    records = []
    hint = "it is not a generations file, or it is corrupt — remove the line or the file"
    for n, rec in json_lines(data[:cut].decode("utf-8"), str(p), hint):
        if not isinstance(rec, dict) or "prompt_id" not in rec or "text" not in rec:
            raise InputError(
                f"{p}: line {n} is not a generation record (no prompt_id/text); give a file written by layergraft generate"
            )
        records.append(rec)
    return records


def check_resumable(
    out: str | os.PathLike[str] | None, settings: SamplingSettings, model_name: str
) -> None:
    """Fail fast (before loading a model) if ``out`` cannot be resumed with these settings."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a file; give a .jsonl path for --out")
    _check_compatible(read_records(path), settings, model_name, path)


def _check_compatible(
    records: list[dict[str, Any]], settings: SamplingSettings, model_name: str, path: Path
) -> None:
    want = settings.to_json()
    for rec in records:
        if rec.get("settings") != want or rec.get("model") != model_name:
            raise InputError(
                f"{path} holds generations of another model or other settings "
                f"({rec.get('model')}, {rec.get('settings')}); choose another --out or delete it"
            )


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Job:
    prompt: TaskPrompt
    sample: int
    ids: tuple[int, ...]


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
    model: Any, tokenizer: Any, jobs: Sequence[Job], settings: SamplingSettings
) -> list[tuple[str, int, bool]]:
    """Generate one batch with left padding; returns (text, num_tokens, finished) per job."""
    import torch
    from transformers import LogitsProcessorList

    eos = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    width = max(len(j.ids) for j in jobs)
    device = next(model.parameters()).device
    input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(jobs), width), dtype=torch.long)
    for r, j in enumerate(jobs):
        input_ids[r, width - len(j.ids) :] = torch.tensor(j.ids)
        mask[r, width - len(j.ids) :] = 1
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


def vllm_available() -> bool:
    import importlib.util

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


# --------------------------------------------------------------------------- the engine


def pending_jobs(
    tokenizer: Any,
    prompts: Sequence[TaskPrompt],
    n: int,
    done: set[tuple[str, int]],
    *,
    chat_template: bool = True,
) -> list[Job]:
    """Jobs not yet in ``done``, in (prompt, sample) order; prompts are tokenized once."""
    jobs = []
    for p in prompts:
        missing = [s for s in range(n) if (p.id, s) not in done]
        if not missing:
            continue
        ids = tuple(chat_prompt_ids(tokenizer, p.prompt, chat_template=chat_template))
        jobs.extend(Job(p, s, ids) for s in missing)
    return jobs


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
) -> list[dict[str, Any]]:
    """Generate ``n`` samples per prompt; append them to ``out`` (resuming it) and return all
    records of the run, existing ones included, in (prompt, sample) order."""
    if n < 1:
        raise InputError(f"--n must be at least 1, not {n}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    path = Path(out) if out is not None else None
    existing: list[dict[str, Any]] = []
    if path is not None:
        if path.exists() and not path.is_file():
            raise InputError(f"{path} is not a file; give a .jsonl path for --out")
        existing = read_records(path, repair=True)
        _check_compatible(existing, settings, model_name, path)
    by_key = {(r["prompt_id"], int(r["sample"])): r for r in existing}
    jobs = pending_jobs(tokenizer, prompts, n, set(by_key), chat_template=chat_template)
    if jobs:
        from tqdm.auto import tqdm

        if backend == "transformers":
            model.eval()
        eos = stop_token_ids(model, tokenizer) if backend == "vllm" else []
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
                    res = hf_generate_batch(model, tokenizer, batch, settings)
                lines = []
                for j, (text, ntok, fin) in zip(batch, res, strict=True):
                    rec = make_record(
                        j.prompt, j.sample, text, ntok, fin, settings, model_name, backend
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


def group_by_prompt(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by prompt id (first-seen order), samples sorted by index."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r["prompt_id"]), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: int(r.get("sample", 0)))
    return groups


def _short_name(model_name: str) -> str:
    """A progress-bar label: the run label of ``label:path`` names, else the path's last part."""
    if ":" in model_name and not model_name.startswith("/"):
        return model_name.split(":", 1)[0]
    return Path(model_name).name or model_name
