"""Token-level perplexity, the layer-pruning papers' definition.

Why spell the definition out: "perplexity" means two different numbers in this field. The
pruning papers (GPTQ/SparseGPT/ShortGPT/LLM-Streamline wikitext protocol) tokenise the whole
concatenated text once, cut it into non-overlapping chunks of ``seqlen`` tokens (the remainder
is dropped) and report ``exp(mean NLL)`` over every predicted token — the first token of each
chunk is context only. lm-eval's ``word_perplexity`` is per document and per *word*. Every
number this module returns carries :func:`definition`.

``stride < seqlen`` gives the Hugging Face sliding-window variant: windows of ``seqlen`` tokens
start every ``stride`` tokens and only the tokens not scored before are scored (more context
per token, lower PPL, ``seqlen/stride`` times the compute).
"""

from __future__ import annotations

import math
import os
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.errors import InputError
from layergraft.models.batching import fit_context
from layergraft.models.load import model_and_tokenizer
from layergraft.text import DEFAULT_HELDOUT, read_text, tokenize

PathLike = str | os.PathLike[str]


def definition(seqlen: int, stride: int | None = None) -> str:
    if stride is None or stride >= seqlen:
        return (
            f"token-level perplexity exp(mean NLL) over non-overlapping chunks of {seqlen} tokens of the "
            "concatenated, once-tokenised text (remainder dropped; first token of each chunk is context "
            "only) — the layer-pruning papers' definition, not lm-eval's document-level word perplexity"
        )
    return (
        f"token-level perplexity exp(mean NLL) with sliding windows of {seqlen} tokens every {stride} "
        "tokens, each token scored once with up to seqlen-1 tokens of context (Hugging Face sliding-"
        "window definition), not lm-eval's document-level word perplexity"
    )


def windows(n: int, seqlen: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` windows over ``n`` tokens.

    Non-overlapping (default): full chunks only (the papers drop the remainder; a text
    shorter than one chunk is one short chunk). Sliding: every ``stride`` tokens; positions
    ``>= first_scored`` are scored (as targets), so no token is scored twice.
    """
    if n < 2:
        return []
    if stride is None or stride >= seqlen:
        full = n // seqlen
        if full == 0:
            return [(0, n, 1)]
        return [(k * seqlen, (k + 1) * seqlen, k * seqlen + 1) for k in range(full)]
    out = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + seqlen, n)
        first = max(prev_end, begin + 1)
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return out


#: positions whose log-softmax is taken at once: with a 262k vocabulary a whole window in
#: float64 would be gigabytes; a slice of 64 positions is 134 MB
NLL_CHUNK = 64


def token_nll(logits: Any, targets: Any) -> float:
    """Sum of the NLLs of ``targets`` (``[..., n]``) under ``logits`` (``[..., n, vocab]``), in
    float64, a slice of positions at a time."""
    import torch

    total = 0.0
    for i in range(0, targets.shape[-1], NLL_CHUNK):
        lg = logits[..., i : i + NLL_CHUNK, :].double()
        tg = targets[..., i : i + NLL_CHUNK]
        total += float(
            torch.nn.functional.cross_entropy(
                lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), reduction="sum"
            )
        )
    return total


def nll_sum(model: Any, ids: Any, first_scored: int) -> tuple[float, int]:
    """Sum of token NLLs (float64) of positions ``>= first_scored`` of one window ``ids``
    (1-D tensor), and how many tokens that is."""
    import torch

    dev = next(model.parameters()).device
    x = ids[None].to(dev)
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits[0, :-1]
    targets = x[0, 1:]
    keep = slice(first_scored - 1, None)
    return token_nll(logits[keep], targets[keep]), int(targets[keep].numel())


def perplexity(
    model: Any, ids: list[int], *, seqlen: int = 2048, stride: int | None = None
) -> dict[str, Any]:
    """Perplexity of ``model`` on token ids ``ids`` (see the module doc for the definition)."""
    import torch

    if seqlen < 2:
        raise InputError(f"--seqlen must be at least 2 (got {seqlen})")
    if stride is not None and stride < 1:
        raise InputError(f"--stride must be positive (got {stride})")
    seqlen = fit_context(seqlen, adapter_for_model(model).context_length, "--ppl-seqlen")
    t = torch.tensor(ids, dtype=torch.long)
    total, count = 0.0, 0
    wins = windows(len(ids), seqlen, stride)
    if not wins:
        raise InputError(f"the evaluation text has {len(ids)} tokens; need at least 2")
    for begin, end, first in wins:
        s, c = nll_sum(model, t[begin:end], first - begin)
        total += s
        count += c
    mean = total / count
    return {
        "ppl": math.exp(mean),
        "mean_nll": mean,
        "tokens_scored": count,
        "tokens_total": len(ids),
        "windows": len(wins),
        "seqlen": seqlen,
        "stride": stride if stride is not None else seqlen,
        "definition": definition(seqlen, stride),
    }


def ppl(
    model: PathLike | tuple[Any, Any],
    data: PathLike = DEFAULT_HELDOUT,
    *,
    seqlen: int = 2048,
    stride: int | None = None,
    max_tokens: int | None = None,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> dict[str, Any]:
    """Token-level perplexity of ``model`` on a text file (definition in the result's
    ``definition``)."""
    text = read_text(data, "evaluation")
    m, tok, origin = model_and_tokenizer(model, device=device, dtype=dtype, device_map=device_map)
    ids = tokenize(tok, text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    out = perplexity(m, ids, seqlen=seqlen, stride=stride)
    out.update({"model": origin, "data": str(data)})
    return out
