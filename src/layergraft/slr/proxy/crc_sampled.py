"""The sampled CRC estimator: for models whose answer is not the first token (a preamble, a
thinking block), V and H come from sampled replies instead of the first-token distribution."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from layergraft.slr.proxy.crc_prompts import CrcPrompt
from layergraft.slr.proxy.crc_scoring import CrcResult, item_scores, prepare_batch, result_of


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
        items.append(item_scores(p, counts))
    return result_of(items)
