"""CRC scoring ("give a random character from this set"): prompts to batches, logits to V and H.

Why this task: it has a known ideal answer distribution (uniform over the set), a one-token
answer, and a post-trained model's collapse shows in it plainly. So instead of sampling
answers we read the model's next-token distribution after the chat prompt, once per prompt:

* validity ``V`` = probability mass on tokens that decode to a valid character. A token counts
  for character ``c`` when its decoded text, with leading whitespace removed, is exactly ``c``
  (so ``" k"`` counts as ``k``); the masses of all tokens of one character are summed. A
  character no single token decodes to cannot be scored this way: it is reported with a
  :class:`CrcWarning` naming it (its mass counts as 0), never silently.
* diversity ``H`` = entropy (nats) of the per-character masses renormalised to sum to 1, and
  ``H_norm = H / log|S|`` (1 = uniform over the set, 0 = one character always).

Prompts are data (:mod:`layergraft.slr.proxy.crc_prompts`). Batches are left-padded with
padding-aware positions, so a prompt scores the same alone and in any batch. The estimators
use these pieces: :mod:`layergraft.slr.proxy.crc` (exact; also the sweep's :class:`CrcProxy`) and
:mod:`layergraft.slr.proxy.crc_sampled`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from layergraft.errors import InputError
from layergraft.models.batching import left_pad
from layergraft.slr.proxy.crc_prompts import CrcPrompt, parse_prompt


class CrcWarning(UserWarning):
    """A CRC prompt cannot be scored as asked (a valid character with no single-token form)."""


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


# ---------------------------------------------------------------------------- encoding


#: characters tokenizers use to stand for leading whitespace in a token's raw form
#: (SentencePiece "▁", byte-level BPE "Ġ"/"Ċ"/"ĉ" for space, newline, tab)
_WS_MARKS = " \t\n\r▁ĠĊĉ"
#: the longest raw form of one character besides leading whitespace: 4 (byte-level BPE
#: writes each UTF-8 byte as a character, and a character has at most 4 bytes)
_MAX_CORE = 4


def _candidates(tokenizer: Any) -> list[int]:
    """Token ids that *can* decode to (whitespace +) one character: after their leading
    whitespace marks, at most 4 characters, or a byte-fallback token (``<0x61>``). Decoding
    only these gives the same answer as decoding every token (a test checks it on the toy and
    real tokenizers) in a fraction of the time on a large vocabulary."""
    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = []
    for i, t in enumerate(raw):
        core = str(t).lstrip(_WS_MARKS) if t is not None else ""
        if t is None or len(core) <= _MAX_CORE or (len(core) == 6 and core.startswith("<0x")):
            keep.append(i)
    return keep


def _char_token_ids(
    tokenizer: Any, chars: set[str], exhaustive: bool = False
) -> dict[str, list[int]]:
    """Token ids whose decoded text, minus leading whitespace, is exactly one of ``chars``;
    a :class:`CrcWarning` names every character that has none. Only the candidate tokens
    (:func:`_candidates`) are decoded unless ``exhaustive``."""
    out: dict[str, list[int]] = {c: [] for c in chars}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = list(range(len(tokenizer))) if exhaustive else _candidates(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    for i, text in zip(ids, texts, strict=True):
        if i in special:
            continue
        key = text.lstrip()
        if key in out:
            out[key].append(i)
    missing = sorted(c for c, found in out.items() if not found)
    if missing:
        warnings.warn(
            f"CRC: no single token of this tokenizer decodes to {', '.join(map(repr, missing))}; "
            "their probability counts as 0, which lowers V — use valid sets of characters the "
            "tokenizer has as single tokens",
            CrcWarning,
            stacklevel=3,
        )
    return out


def _as_prompts(prompts: Sequence[CrcPrompt | dict[str, Any]]) -> list[CrcPrompt]:
    out = []
    for n, p in enumerate(prompts, 1):
        out.append(p if isinstance(p, CrcPrompt) else parse_prompt(p, "prompts", n))
    return out


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


def prepare_batches(
    tokenizer: Any,
    prompts: Sequence[CrcPrompt | dict[str, Any]],
    *,
    batch_size: int = 64,
    device: Any = None,
) -> list[CrcBatch]:
    """Chat-encode the prompts and cut them into left-padded batches of ``batch_size`` (the
    last position is every row's answer slot); character ids are found once for all."""
    items = _as_prompts(prompts)
    if not items:
        raise InputError("no CRC prompts to score; load a set with load_crc_prompts()")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError(
            "the tokenizer has no chat template; CRC scores a chat model's reply - use a tokenizer "
            "with a chat_template (e.g. the post-trained model's, with --tokenizer)"
        )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    char_ids = _char_token_ids(tokenizer, {c for p in items for c in p.valid})
    batches = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        input_ids, mask = left_pad([_encode_chat(tokenizer, p.prompt) for p in chunk], pad_id)
        if device is not None:
            input_ids, mask = input_ids.to(device), mask.to(device)
        batches.append(CrcBatch(chunk, input_ids, mask, char_ids))
    return batches


def prepare_batch(
    tokenizer: Any, prompts: Sequence[CrcPrompt | dict[str, Any]], device: Any = None
) -> CrcBatch:
    """All prompts as one batch (see :func:`prepare_batches`)."""
    return prepare_batches(tokenizer, prompts, batch_size=max(len(prompts), 1), device=device)[0]


def score_items(batch: CrcBatch, logits: Any) -> list[CrcItem]:
    """V and H of every prompt of ``batch`` from its answer-slot logits (see the module doc).

    Probabilities in float64, one row at a time: only the valid characters' tokens are read,
    so a 262k-token vocabulary costs one row of float64, not a batch of them."""
    import torch

    items: list[CrcItem] = []
    for r, p in enumerate(batch.prompts):
        row = logits[r].double()
        lse = torch.logsumexp(row, dim=-1)
        mass = {
            c: float(torch.exp(row[batch.char_ids[c]] - lse).sum()) if batch.char_ids[c] else 0.0
            for c in p.valid
        }
        items.append(item_scores(p, mass))
    return items


def score_logits(batch: CrcBatch, logits: Any) -> CrcResult:
    """:func:`score_items` of one batch, summarised."""
    return result_of(score_items(batch, logits))


def item_scores(p: CrcPrompt, mass: dict[str, float]) -> CrcItem:
    """V, H and H_norm of one prompt from the probability mass on each valid character."""
    v = sum(mass.values())
    h = 0.0
    if v > 0:
        for m in mass.values():
            if m > 0:
                q = m / v
                h -= q * math.log(q)
    h_norm = h / math.log(len(p.valid)) if len(p.valid) > 1 else 0.0
    return CrcItem(p.id, p.category, v, h, h_norm, mass)


def _summary(items: Sequence[CrcItem]) -> dict[str, float]:
    n = max(len(items), 1)
    return {
        "V": sum(i.validity for i in items) / n,
        "H": sum(i.entropy for i in items) / n,
        "H_norm": sum(i.entropy_norm for i in items) / n,
        "n": len(items),
    }


def result_of(items: list[CrcItem]) -> CrcResult:
    """Means overall and per category of per-prompt scores (in prompt order)."""
    cats = sorted({i.category for i in items})
    return CrcResult(
        items=items,
        mean=_summary(items),
        by_category={c: _summary([i for i in items if i.category == c]) for c in cats},
    )
