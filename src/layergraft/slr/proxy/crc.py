"""The CRC proxy task, estimated exactly from the first answer token; the ``crc`` command.

Why exact: CRC's answer is one token, so instead of sampling answers we read the model's
next-token distribution after the chat prompt once per prompt (V and H as defined in
:mod:`layergraft.slr.proxy.crc_scoring`). :func:`crc_exact` is a pure function of ``(model,
tokenizer, prompts)``: one batched forward pass per batch, no sampling, no files.
:class:`CrcProxy` is the same scoring as the sweep sees it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.models.batching import forward_logits
from layergraft.models.load import load_with_tokenizer
from layergraft.slr.proxy.crc_prompts import CrcPrompt, load_crc_prompts
from layergraft.slr.proxy.crc_sampled import crc_sampled
from layergraft.slr.proxy.crc_scoring import (
    CrcBatch,
    CrcItem,
    CrcResult,
    prepare_batches,
    result_of,
    score_items,
)


def forward_last_logits(model: Any, batch: CrcBatch) -> Any:
    """Next-token logits at every row's answer slot, ``[n_prompts, vocab]``."""
    return forward_logits(model, batch.input_ids, batch.attention_mask)


def crc_exact(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[CrcPrompt | dict[str, Any]],
    batch_size: int = 64,
) -> CrcResult:
    """Score ``prompts`` by the model's exact next-token distribution after the chat prompt,
    ``batch_size`` prompts per forward pass (the numbers do not depend on it)."""
    device = next(iter(model.parameters())).device if hasattr(model, "parameters") else None
    items: list[CrcItem] = []
    for b in prepare_batches(tokenizer, prompts, batch_size=batch_size, device=device):
        items += score_items(b, forward_last_logits(model, b))
    return result_of(items)


# ---------------------------------------------------------------------------- the sweep's proxy


@dataclass
class CrcProxy:
    """CRC as a sweep proxy: batches of prompts, per-batch scores, one row per hybrid.

    Picklable (prompts are data), so a worker process can rebuild the batches with its own
    tokenizer and device."""

    prompts: list[CrcPrompt]
    source: str = "all"
    batch_size: int = 64
    kind: str = "crc"
    last_only: bool = True

    def batches(self, tokenizer: Any, device: Any) -> list[CrcBatch]:
        return prepare_batches(tokenizer, self.prompts, batch_size=self.batch_size, device=device)

    def score(self, batch: CrcBatch, logits: Any) -> list[CrcItem]:
        return score_items(batch, logits)

    def combine(self, parts: list[list[CrcItem]]) -> dict[str, Any]:
        res = result_of([i for p in parts for i in p])
        return {**{k: res.mean[k] for k in ("V", "H", "H_norm")}, "by_category": res.by_category}

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n": len(self.prompts),
            "categories": sorted({p.category for p in self.prompts}),
        }

    def fingerprint(self) -> str:
        """sha256 of everything that decides the numbers: the prompts and the batching."""
        body = json.dumps([asdict(p) for p in self.prompts] + [self.batch_size], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()


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
            model, tokenizer, items, samples=samples, temperature=temperature, min_p=min_p,
            seed=seed, batch_size=batch_size,
        )  # fmt: skip
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
