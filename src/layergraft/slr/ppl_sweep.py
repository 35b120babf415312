"""``sweep --proxy ppl``: every restored interval scored by perplexity on a text instead of CRC.

Same engine as the CRC sweep (prefix reuse, here with every position's logits), same output
files (results.json, results.csv, a heatmap); the rule is "lowest perplexity".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.checkpoint.atomic import check_output_target
from layergraft.errors import InputError
from layergraft.models.load import load_model, load_with_tokenizer
from layergraft.ranges import format_range
from layergraft.report.sweep import write_ppl_sweep_outputs
from layergraft.slr.engines import enumerate_intervals, sweep_intervals_fast
from layergraft.text import read_text, tokenize

PathLike = str | os.PathLike[str]


class _Ppl:
    """Perplexity of one model/hybrid in the ``.mean`` shape the sweep engines pass around."""

    def __init__(self, nll_sum: float, n: int) -> None:
        self.mean = {"ppl": math.exp(nll_sum / n), "nll": nll_sum / n, "tokens": n}
        self.by_category: dict[str, Any] = {}


def ppl_batch(
    tokenizer: Any, data: PathLike, *, seqlen: int = 256, max_tokens: int = 4096, device: Any = None
) -> dict[str, Any]:
    """Fixed-length rows of the text's tokens (no padding) for the PPL proxy."""
    import torch

    ids = tokenize(tokenizer, read_text(data, "perplexity"))[:max_tokens]
    n_rows = len(ids) // seqlen
    if n_rows < 1:
        raise InputError(
            f"{data}: {len(ids)} tokens, fewer than one row of --seqlen {seqlen}; give more text or a smaller --seqlen"
        )
    rows = torch.tensor(ids[: n_rows * seqlen], dtype=torch.long).reshape(n_rows, seqlen)
    if device is not None:
        rows = rows.to(device)
    return {"input_ids": rows, "attention_mask": torch.ones_like(rows)}


def ppl_from_logits(batch: dict[str, Any], logits: Any) -> _Ppl:
    """Token-level NLL of every next token in the rows (first token of a row is context)."""
    import torch

    targets = batch["input_ids"][:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].double().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )
    return _Ppl(float(nll), targets.numel())


def sweep_ppl(
    base: Any,
    post: Any,
    data: PathLike,
    out: PathLike | None = None,
    *,
    seqlen: int = 256,
    max_tokens: int = 4096,
    min_len: int = 1,
    max_len: int | None = None,
    starts: Sequence[int] | None = None,
    dtype: str | None = "auto",
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every interval by perplexity on ``data`` instead of CRC; select the lowest.

    Same engine as the CRC sweep (prefix reuse, all positions' logits), same outputs
    (results.json, results.csv, a heatmap)."""
    from tqdm.auto import tqdm

    if out is not None:
        check_output_target(out, force=force)
    read_text(data, "perplexity")  # a bad text file fails before models load
    post_model, tok, post_ck = load_with_tokenizer(post, dtype=dtype, device=device)
    base_model = load_model(base, dtype=dtype, device=device)
    adapter = adapter_for_model(post_model)
    L = adapter.num_layers
    intervals = enumerate_intervals(L, min_len=min_len, max_len=max_len, starts=starts)
    batch = ppl_batch(
        tok, data, seqlen=seqlen, max_tokens=max_tokens, device=next(post_model.parameters()).device
    )

    def full(m: Any) -> _Ppl:
        import torch

        with torch.no_grad():
            return ppl_from_logits(batch, m(**batch, use_cache=False).logits)

    bar = tqdm(total=len(intervals) + 2, desc="PPL sweep", unit="model", disable=not progress)
    refs = {"post": full(post_model).mean}
    refs["base"] = full(base_model).mean
    bar.update(2)
    scores = sweep_intervals_fast(
        post_model,
        base_model,
        adapter,
        batch,
        lambda lg: ppl_from_logits(batch, lg),
        intervals,
        progress=bar.update,
        last_only=False,
    )
    bar.close()
    rows = [
        {"interval": format_range(r), "start": r[0], "end": r[1], **scores[r].mean}
        for r in intervals
    ]
    best = min(rows, key=lambda r: (r["ppl"], r["end"] - r["start"], r["start"]))
    results = {
        "proxy": "ppl",
        "definition": f"token-level perplexity over {batch['input_ids'].shape[0]} rows of {seqlen} tokens of {data}",
        "num_layers": L,
        "inputs": {
            "base": str(base),
            "post": post_ck.origin if post_ck else str(post),
        },
        "references": refs,
        "rule": {"text": "min ppl"},
        "range_convention": "0-based, half-open [start, end)",
        "intervals": rows,
        "selection": {"interval": best["interval"], "rule": "min ppl"},
        "selected": best,
    }
    if out is not None:
        write_ppl_sweep_outputs(results, Path(out), force=force)
    return results
