"""The sampled CRC estimator: for models whose answer is not the first token (a preamble, a
thinking block), V and H come from sampled replies instead of the first-token distribution;
V_end is the share of replies that are one valid character (with ``v_end="closers"``, plus
one closing mark) and then end. A reply ends at the model's end markers
(:mod:`layergraft.gen.ends`), the ids every generation stops on, whatever ``v_end`` is."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from layergraft.gen.ends import find_end_markers
from layergraft.slr.proxy.crc_prompts import CrcPrompt
from layergraft.slr.proxy.crc_scoring import (
    CLOSERS,
    CrcResult,
    _as_prompts,
    item_scores,
    left_padded,
    result_of,
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
    ends: Sequence[int] | None = None,
    v_end: str = "strict",
) -> CrcResult:
    """Sampled estimator: ``samples`` replies per prompt; V = fraction of replies that name a
    valid character, H = entropy of the empirical distribution of the valid answers.

    For models whose answer is not the first token (a preamble, a thinking block). Deterministic
    under ``seed`` (one generator for the whole run). ``ends``: the ids a reply ends on
    (default: the model's end markers, :func:`~layergraft.gen.ends.find_end_markers`); none:
    every reply runs to ``max_new_tokens`` and V_end is unavailable.
    """
    import torch

    items_in = _as_prompts(prompts)
    input_ids, attention_mask = left_padded(tokenizer, items_in, next(model.parameters()).device)
    torch.manual_seed(seed)
    rows = input_ids.repeat_interleave(samples, dim=0)
    mask = attention_mask.repeat_interleave(samples, dim=0)
    texts: list[str] = []
    stopped: list[bool] = []
    if ends is None:
        ends = find_end_markers(tokenizer, model).ids
    stop = sorted(set(ends))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
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
                eos_token_id=stop,  # none: the reply runs to max_new_tokens
            )
            for seq in out[:, rows.shape[1] :].tolist():
                cut = next((j for j, t in enumerate(seq) if t in stop), None)
                stopped.append(cut is not None)
                texts.append(tokenizer.decode(seq[:cut], skip_special_tokens=True))
    items = []
    for k, p in enumerate(items_in):
        part = range(k * samples, (k + 1) * samples)
        answers = [parse_answer(texts[j], p.valid) for j in part]
        counts = {c: sum(a == c for a in answers) / samples for c in p.valid}
        end_counts = None
        if stop and v_end != "off":
            bare = [_bare_answer(texts[j], p.valid, v_end) if stopped[j] else None for j in part]
            end_counts = {c: sum(a == c for a in bare) / samples for c in p.valid}
        items.append(item_scores(p, counts, end_counts))
    return result_of(items)


def _bare_answer(text: str, valid: Sequence[str], v_end: str) -> str | None:
    """The character of a reply that is nothing but it (V_end's event), else None."""
    s = text.lstrip()
    if v_end == "closers":
        for c in CLOSERS:
            if s.endswith(c) and len(s) > len(c):
                s = s[: -len(c)]
                break
    return s if s in valid else None
