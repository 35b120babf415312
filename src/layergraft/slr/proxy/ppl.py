"""Perplexity as a sweep proxy (``sweep --proxy ppl --data FILE``): every hybrid scored by
token-level perplexity on a text instead of CRC, the lowest selected.

The text's tokens are cut into fixed-length rows (no padding; the remainder dropped) and
batched; each hybrid's NLL is summed over every predicted token (the first token of a row is
context only) in float64, a few positions at a time, so a 262k-token vocabulary never needs
more than a slice of float64 logits.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any

from layergraft.errors import InputError
from layergraft.evaluate.perplexity import token_nll
from layergraft.text import read_text, tokenize

PathLike = str | os.PathLike[str]


def ppl_batches(
    tokenizer: Any,
    data: PathLike,
    *,
    seqlen: int = 2048,
    max_tokens: int | None = None,
    batch_size: int = 4,
    device: Any = None,
) -> list[dict[str, Any]]:
    """Fixed-length rows of the text's first ``max_tokens`` tokens (all with None),
    ``batch_size`` rows per batch."""
    import torch

    if seqlen < 2 or batch_size < 1:
        raise InputError(f"need --seqlen >= 2 and --batch-size >= 1 (got {seqlen}, {batch_size})")
    ids = tokenize(tokenizer, read_text(data, "perplexity"))[:max_tokens]
    n_rows = len(ids) // seqlen
    if n_rows < 1:
        raise InputError(
            f"{data}: {len(ids)} tokens, fewer than one row of --seqlen {seqlen}; give more text or a smaller --seqlen"
        )
    rows = torch.tensor(ids[: n_rows * seqlen], dtype=torch.long).reshape(n_rows, seqlen)
    if device is not None:
        rows = rows.to(device)
    return [
        {"input_ids": r, "attention_mask": torch.ones_like(r)}
        for r in torch.split(rows, batch_size)
    ]


def nll_of(batch: dict[str, Any], logits: Any) -> tuple[float, int]:
    """``(sum of token NLLs, tokens)`` of every next token in the rows, in float64."""
    targets = batch["input_ids"][:, 1:]
    return token_nll(logits[:, :-1], targets), int(targets.numel())


@dataclass
class PplProxy:
    """Perplexity on ``data`` as a sweep proxy (picklable: the text is read by each worker)."""

    data: str
    seqlen: int = 2048
    max_tokens: int | None = None
    batch_size: int = 4
    kind: str = "ppl"

    def __post_init__(self) -> None:
        read_text(self.data, "perplexity")  # a bad file fails before any model loads

    def batches(self, tokenizer: Any, device: Any, model: Any = None) -> list[dict[str, Any]]:
        return ppl_batches(
            tokenizer, self.data, seqlen=self.seqlen, max_tokens=self.max_tokens,
            batch_size=self.batch_size, device=device,
        )  # fmt: skip

    def score(self, batch: dict[str, Any], run: Any, final: Any) -> tuple[float, int]:
        return nll_of(batch, run.logits(final, last_only=False))

    def combine(self, parts: list[tuple[float, int]]) -> dict[str, Any]:
        nll, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return {"ppl": math.exp(nll / n), "nll": nll / n, "tokens": n}

    def describe(self) -> dict[str, Any]:
        return {"data": str(self.data), "seqlen": self.seqlen, "max_tokens": self.max_tokens}

    def definition(self, rows: int | None = None) -> str:
        what = f"{rows} rows" if rows is not None else "rows"
        return f"token-level perplexity over {what} of {self.seqlen} tokens of {self.data}"

    def fingerprint(self) -> str:
        h = hashlib.sha256(read_text(self.data, "perplexity").encode())
        h.update(f"|{self.seqlen}|{self.max_tokens}|{self.batch_size}".encode())
        return h.hexdigest()
