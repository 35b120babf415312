"""The CRC proxy task ("give a random character from this set"), scored exactly.

Why this task: it has a known ideal answer distribution (uniform over the set), a one-token
answer, and a post-trained model's collapse shows in it plainly. So instead of sampling
answers we read the model's next-token distribution after the chat prompt, once per prompt:

* validity ``V`` = probability mass on tokens that decode to a valid character. A token counts
  for character ``c`` when its decoded text, with leading whitespace removed, is exactly ``c``
  (so ``" k"`` counts as ``k``); the masses of all tokens of one character are summed.
* diversity ``H`` = entropy (nats) of the per-character masses renormalised to sum to 1, and
  ``H_norm = H / log|S|`` (1 = uniform over the set, 0 = one character always).

Prompts are data (JSONL, one object per line: ``id``, ``category``, ``prompt``, ``valid``);
the bundled sets live in ``layergraft/data/crc/``. :func:`crc_exact` is a pure function of
``(model, tokenizer, prompts)``: one batched forward pass per batch, no sampling, no files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.models.batching import left_pad
from layergraft.models.load import load_with_tokenizer
from layergraft.slr.crc_prompts import CrcPrompt, load_crc_prompts, parse_prompt


@dataclass
class CrcItem:
    """Scores of one prompt: ``validity`` in [0, 1], ``entropy`` in nats, ``entropy_norm`` in [0, 1].

    ``probs`` maps each valid character to its (un-renormalised) next-token probability.
    """

    id: str
    category: str
    validity: float
    entropy: float
    entropy_norm: float
    probs: dict[str, float]


@dataclass
class CrcResult:
    """Per-prompt scores plus means overall and per category (``{"V":..,"H":..,"H_norm":..}``)."""

    items: list[CrcItem]
    mean: dict[str, float]
    by_category: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (results are data: reports are rendered from this)."""
        return asdict(self)


# ---------------------------------------------------------------------------- estimator


def _char_token_ids(tokenizer: Any, chars: set[str]) -> dict[str, list[int]]:
    """Token ids whose decoded text, minus leading whitespace, is exactly one of ``chars``."""
    out: dict[str, list[int]] = {c: [] for c in chars}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab_size = len(tokenizer)
    texts = tokenizer.batch_decode(
        [[i] for i in range(vocab_size)], clean_up_tokenization_spaces=False
    )
    for i, text in enumerate(texts):
        if i in special:
            continue
        key = text.lstrip()
        if key in out:
            out[key].append(i)
    return out


def _as_prompts(prompts: Sequence[CrcPrompt | dict[str, Any]]) -> list[CrcPrompt]:
    out = []
    for n, p in enumerate(prompts, 1):
        out.append(p if isinstance(p, CrcPrompt) else parse_prompt(p, "prompts", n))
    return out


def _summary(items: Sequence[CrcItem]) -> dict[str, float]:
    n = max(len(items), 1)
    return {
        "V": sum(i.validity for i in items) / n,
        "H": sum(i.entropy for i in items) / n,
        "H_norm": sum(i.entropy_norm for i in items) / n,
        "n": len(items),
    }


def crc_exact(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[CrcPrompt | dict[str, Any]],
    batch_size: int = 32,
) -> CrcResult:
    """Score ``prompts`` by the model's exact next-token distribution after the chat prompt.

    Each prompt becomes ``apply_chat_template([{"role": "user", ...}], add_generation_prompt=True)``;
    batches are left-padded with an attention mask so the last position is the answer's first
    token for every row. ``model`` is anything that maps ``input_ids``/``attention_mask`` to an
    object with ``.logits`` (a HF causal LM, or a stub in tests).
    """
    device = next(iter(model.parameters())).device if hasattr(model, "parameters") else None
    batch = prepare_batch(tokenizer, prompts, device=device)
    return score_logits(batch, forward_last_logits(model, batch, batch_size=batch_size))


# ---------------------------------------------------------------------------- split form
# The sweep scores dozens of hybrids on one fixed batch, so encoding the prompts and finding
# each character's token ids happen once (prepare_batch), and scoring takes logits from any
# source (a model forward, or the sweep's layer-by-layer runner).


@dataclass
class CrcBatch:
    """Encoded CRC prompts (left-padded) plus the token ids of every valid character."""

    prompts: list[CrcPrompt]
    input_ids: Any
    attention_mask: Any
    char_ids: dict[str, list[int]]

    def __getitem__(self, key: str) -> Any:  # so a batch can be passed as model(**batch)-like dict
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}[key]

    def get(self, key: str, default: Any = None) -> Any:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}.get(
            key, default
        )


def _encode_chat(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def prepare_batch(
    tokenizer: Any, prompts: Sequence[CrcPrompt | dict[str, Any]], device: Any = None
) -> CrcBatch:
    """Chat-encode and left-pad all prompts (so the last position is every row's answer slot)."""

    items = _as_prompts(prompts)
    if not items:
        raise InputError("no CRC prompts to score; load a set with load_crc_prompts()")
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError(
            "the tokenizer has no chat template; CRC scores a chat model's reply - use a tokenizer "
            "with a chat_template (e.g. the post-trained model's)"
        )
    seqs = [_encode_chat(tokenizer, p.prompt) for p in items]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    input_ids, mask = left_pad(seqs, pad_id)
    if device is not None:
        input_ids, mask = input_ids.to(device), mask.to(device)
    char_ids = _char_token_ids(tokenizer, {c for p in items for c in p.valid})
    return CrcBatch(items, input_ids, mask, char_ids)


def forward_last_logits(model: Any, batch: CrcBatch, batch_size: int = 64) -> Any:
    """Next-token logits at the last position, ``[n_prompts, vocab]`` (mini-batched)."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, batch.input_ids.shape[0], batch_size):
            ids = batch.input_ids[i : i + batch_size]
            mask = batch.attention_mask[i : i + batch_size]
            outs.append(model(input_ids=ids, attention_mask=mask).logits[:, -1, :])
    return torch.cat(outs)


def score_logits(batch: CrcBatch, logits: Any) -> CrcResult:
    """V and H of every prompt from its answer-slot logits (see the module doc)."""
    import torch

    probs = torch.softmax(logits.double(), dim=-1).cpu()
    results: list[CrcItem] = []
    for r, p in enumerate(batch.prompts):
        mass = {
            c: float(probs[r, batch.char_ids[c]].sum()) if batch.char_ids[c] else 0.0
            for c in p.valid
        }
        results.append(_item(p, mass))
    return _result(results)


def _item(p: CrcPrompt, mass: dict[str, float]) -> CrcItem:
    v = sum(mass.values())
    h = 0.0
    if v > 0:
        for m in mass.values():
            if m > 0:
                q = m / v
                h -= q * math.log(q)
    h_norm = h / math.log(len(p.valid)) if len(p.valid) > 1 else 0.0
    return CrcItem(p.id, p.category, v, h, h_norm, mass)


def _result(items: list[CrcItem]) -> CrcResult:
    cats = sorted({i.category for i in items})
    return CrcResult(
        items=items,
        mean=_summary(items),
        by_category={c: _summary([i for i in items if i.category == c]) for c in cats},
    )


def parse_answer(text: str, valid: Sequence[str]) -> str | None:
    """The character a sampled reply chose: its first non-space character if that is in the
    set, else a lone valid character anywhere in the reply (e.g. "Sure: k."), else None."""
    s = text.strip()
    if not s:
        return None
    if s[0] in valid and (len(s) == 1 or not s[1].isalnum()):
        return s[0]
    found = {c for c in valid if re.search(rf"(?<![\w]){re.escape(c)}(?![\w])", s)}
    return found.pop() if len(found) == 1 else None


def crc_sampled(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[CrcPrompt | dict[str, Any]],
    *,
    samples: int = 32,
    temperature: float = 1.0,
    min_p: float = 0.1,
    max_new_tokens: int = 8,
    seed: int = 0,
    batch_size: int = 64,
) -> CrcResult:
    """Sampled estimator: ``samples`` replies per prompt; V = fraction of replies that name a
    valid character, H = entropy of the empirical distribution of the valid answers.

    For models whose answer is not the first token (a preamble, a thinking block). Deterministic
    under ``seed`` (one generator for the whole run).
    """
    import torch

    batch = prepare_batch(tokenizer, prompts, device=next(model.parameters()).device)
    torch.manual_seed(seed)
    rows = batch.input_ids.repeat_interleave(samples, dim=0)
    mask = batch.attention_mask.repeat_interleave(samples, dim=0)
    texts: list[str] = []
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch_size):
            out = model.generate(
                input_ids=rows[i : i + batch_size],
                attention_mask=mask[i : i + batch_size],
                do_sample=True,
                temperature=temperature,
                min_p=min_p if min_p > 0 else None,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
            texts += tokenizer.batch_decode(out[:, rows.shape[1] :], skip_special_tokens=True)
    items = []
    for k, p in enumerate(batch.prompts):
        answers = [parse_answer(t, p.valid) for t in texts[k * samples : (k + 1) * samples]]
        counts = {c: sum(a == c for a in answers) / samples for c in p.valid}
        items.append(_item(p, counts))
    return _result(items)


def crc(
    model: Any,
    tokenizer: Any = None,
    *,
    prompts: str | Path | Iterable[str] = "all",
    estimator: str = "exact",
    samples: int = 32,
    temperature: float = 1.0,
    min_p: float = 0.1,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> dict[str, Any]:
    """CRC validity/diversity of one model: a path / hub id (``tokenizer``: another model's
    tokenizer, path or object, e.g. the post model's chat template for a base model), or a
    loaded model with its tokenizer."""
    if estimator not in ("exact", "sample"):
        raise InputError(
            f"--estimator {estimator!r} is not 'exact' or 'sample'; choose one of them"
        )
    items = load_crc_prompts(prompts)  # a bad prompt file fails before the model loads
    if not hasattr(model, "forward"):
        model, tokenizer, _ = load_with_tokenizer(
            model, tokenizer=tokenizer, device=device, dtype=dtype, device_map=device_map
        )
    if estimator == "exact":
        res = crc_exact(model, tokenizer, items, batch_size=batch_size)
    else:  # "sample" (checked above)
        res = crc_sampled(
            model,
            tokenizer,
            items,
            samples=samples,
            temperature=temperature,
            min_p=min_p,
            seed=seed,
            batch_size=batch_size,
        )
    out = res.to_dict()
    out["estimator"] = estimator
    if estimator == "sample":
        out["settings"] = {
            "samples": samples,
            "temperature": temperature,
            "min_p": min_p,
            "seed": seed,
        }
    return out
