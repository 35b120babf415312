"""Quality of the k samples of one prompt: validity, accuracy, pass@k, format.

Diversity alone rewards noise; a restored model is only better if it stays correct and in
format. All functions are pure, take the samples of ONE prompt, and are our own code (no
library): answers are judged with :mod:`layergraft.gen.answers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import comb

from layergraft.gen.answers import extract_final_answer, has_final_marker, match_answer


def qa_validity(
    texts: Sequence[str], valid: Sequence[str], aliases: Mapping[str, str] | None = None
) -> float:
    """Fraction of samples that give a valid answer (open QA)."""
    if not texts:
        return 0.0
    return sum(match_answer(t, valid, aliases) is not None for t in texts) / len(texts)


def correct_flags(texts: Sequence[str], answer: str) -> list[bool]:
    """Per sample: does the extracted final answer equal the reference number?"""
    return [extract_final_answer(t) == answer for t in texts]


def accuracy(texts: Sequence[str], answer: str) -> float:
    """Fraction of samples whose final answer is correct (reasoning): the mean of pass@1."""
    flags = correct_flags(texts, answer)
    return sum(flags) / len(flags) if flags else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): ``1 - C(n-c, k) / C(n, k)`` from ``n`` samples of
    which ``c`` are correct: the chance that k samples drawn without replacement hold a correct
    one. Exact integer binomials (no float overflow)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n (k={k}, n={n})")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n] (c={c}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples: 1, 5, 10, ... up to n, and n itself."""
    ks = [k for k in (1, 5, 10, 20, 50, 100) if k <= n]
    if n not in ks:
        ks.append(n)
    return ks


#: tasks with a reply format of their own (creative writing has none beyond "a reply")
FORMAT_TASKS = ("qa", "reasoning")


def format_valid(text: str, task: str, finished: bool = True) -> bool:
    """Is a reply a complete reply in its task's format? It stopped on its own (not cut off
    by ``max_new_tokens``) and: reasoning has the ``#### N`` final-answer line; QA is a short
    reply (one line of at most 20 words). Creative writing has no format rule: its
    truncation is :func:`finished_rate`, under its own name."""
    body = text.strip()
    if not body or not finished:
        return False
    if task == "reasoning":
        return has_final_marker(body)
    if task == "qa":
        return "\n" not in body and len(body.split()) <= 20
    return True


def format_validity(
    texts: Sequence[str], task: str, finished: Sequence[bool] | None = None
) -> float:
    """Fraction of samples that are complete replies in format (:func:`format_valid`)."""
    if not texts:
        return 0.0
    fin = finished if finished is not None else [True] * len(texts)
    return sum(format_valid(t, task, f) for t, f in zip(texts, fin, strict=True)) / len(texts)


def finished_rate(finished: Sequence[bool]) -> float:
    """Fraction of replies that ended on their own within the token budget (the rest were cut
    off by ``max_new_tokens``): a measure of truncation, not of quality — a budget too small
    for a task's replies shows here."""
    return sum(bool(f) for f in finished) / len(finished) if finished else 0.0
