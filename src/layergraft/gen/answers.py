"""Answer canonicalisation (open QA) and final-answer extraction (reasoning).

Why canonicalise: "The Blue.", "blue" and "BLUE!" are one answer. Diversity counts *distinct*
answers and quality counts *valid* ones, so both must see the same normal form, or a model
gains "diversity" by varying punctuation. The rules follow the SQuAD answer normaliser
(lower case, drop articles and punctuation, collapse spaces) plus accent folding and
per-question aliases ("usa" -> "united states").

Why an extractor convention: GSM8K-style solutions end with ``#### N``; models that ignore the
format still usually end with the answer, so the fallback is the last number in the text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation

ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")
_FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def canonicalize(text: str, aliases: Mapping[str, str] | None = None) -> str:
    """Normal form of a short answer: lower case, accents folded, punctuation and articles
    dropped, spaces collapsed, then mapped through ``aliases`` (keys in canonical form too)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _PUNCT.sub(" ", text.replace("'", ""))
    words = [w for w in _SPACE.split(text) if w and w not in ARTICLES]
    out = " ".join(words)
    if aliases:
        out = aliases.get(out, out)
    return out


def canonical_aliases(aliases: Mapping[str, str] | None) -> dict[str, str]:
    """Aliases with both sides canonicalised, so lookups match what :func:`canonicalize` makes."""
    return {canonicalize(k): canonicalize(v) for k, v in (aliases or {}).items()}


def first_answer_span(text: str) -> str:
    """The first non-empty line of a reply: where a short answer lives."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def match_answer(
    text: str, valid: Iterable[str], aliases: Mapping[str, str] | None = None
) -> str | None:
    """The canonical valid answer a reply gives, or None.

    First the whole first line must canonicalise to a valid answer ("Blue." -> "blue"); failing
    that, a short reply (<= 12 words) that contains exactly one valid answer as whole words
    ("I would say California") counts as giving it. Two different valid answers in one reply
    is not an answer.
    """
    al = canonical_aliases(aliases)
    valid_c = {al.get(c, c) for c in (canonicalize(v) for v in valid)}
    head = canonicalize(first_answer_span(text), al)
    if head in valid_c:
        return head
    words = head.split()
    if not words or len(words) > 12:
        return None
    padded = f" {head} "
    found = {v for v in valid_c if v and f" {v} " in padded}
    # also map alias spans found in the reply
    found |= {al[k] for k in al if al[k] in valid_c and f" {k} " in padded}
    return found.pop() if len(found) == 1 else None


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '3.50' -> '3.5', '-0' -> '0'; None if not a number."""
    t = text.strip().replace(",", "").replace("$", "")
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_final_answer(text: str) -> str | None:
    """Normalised final answer: the number after the last ``####``, else the last number."""
    marked = _FINAL.findall(text)
    if marked:
        return normalize_number(marked[-1])
    nums = _NUMBER.findall(text)
    return normalize_number(nums[-1]) if nums else None


def has_final_marker(text: str) -> bool:
    """True when the reply follows the ``#### N`` format (format validity for reasoning)."""
    return bool(_FINAL.search(text))


def reasoning_path(text: str) -> str:
    """The solution text before the final answer, normalised: two samples with the same steps
    worded the same way are one *path*. Whitespace, case and punctuation other than arithmetic
    operators do not make a path distinct."""
    body = text.split("####", 1)[0].lower()
    body = re.sub(r"[^\w\s+\-*/=.]", " ", body)
    body = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", body)
    return _SPACE.sub(" ", body).strip()
