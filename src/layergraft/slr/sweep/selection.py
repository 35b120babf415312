"""Choosing a hybrid: the paper's rule, the format rule, and the validity/diversity front.

* ``paper`` (the SLR paper's rule): the most diverse hybrid whose validity is at least
  ``validity_ratio`` times the post model's: ``V >= 0.9 V_post``.
* ``format``: the same, and the reply must still end where the post model's ends:
  ``V_end >= 0.9 V_end_post``. CRC's first answer token cannot see that a hybrid has lost
  its end of turn (on Gemma-3-270M the paper rule's pick never stops talking); V_end can.

Ties go to the smaller change: the shorter interval, then the smaller blend weight, then the
earlier start. Rows are the flat dicts of :mod:`layergraft.slr.sweep.assemble` (``V``,
``H``, ``H_norm``, ``V_end`` and where the hybrid is: ``start``/``end``/``alpha``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layergraft.ranges import format_range


@dataclass(frozen=True)
class Rule:
    """A selection rule with its ratios (module doc)."""

    name: str = "paper"
    validity_ratio: float = 0.9
    end_ratio: float = 0.9
    diversity_key: str = "H_norm"

    @property
    def text(self) -> str:
        out = f"max {self.diversity_key} s.t. V >= {self.validity_ratio:g}·V_post"
        if self.name == "format":
            out += f" and V_end >= {self.end_ratio:g}·V_end_post"
        return out

    def thresholds(self, post: dict[str, Any]) -> dict[str, float]:
        thr = {"V": self.validity_ratio * post["V"]}
        if self.name == "format":
            thr["V_end"] = self.end_ratio * post["V_end"]
        return thr

    def eligible(self, row: dict[str, Any], thresholds: dict[str, float]) -> bool:
        return all(row.get(k) is not None and row[k] >= v for k, v in thresholds.items())

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "text": self.text,
            "validity_ratio": self.validity_ratio,
            "end_ratio": self.end_ratio if self.name == "format" else None,
            "diversity_key": self.diversity_key,
        }


def _change(row: dict[str, Any]) -> tuple[float, float, int]:
    """How much of the post model a hybrid changes, smallest first (the tie-break)."""
    length = row["end"] - row["start"] if "start" in row else 10**9
    return (length, row.get("alpha", 1.0), row.get("start", 0))


def select(rows: Sequence[dict[str, Any]], post: dict[str, Any], rule: Rule) -> dict[str, Any]:
    """The rule's choice among ``rows``: ``{"selected": row or None, "thresholds", "rule",
    "eligible"}`` (JSON-ready; ``selected`` is the row itself)."""
    thr = rule.thresholds(post)
    ok = [r for r in rows if rule.eligible(r, thr)]
    best = None
    if ok:
        top = max(r[rule.diversity_key] for r in ok)
        best = min((r for r in ok if r[rule.diversity_key] == top), key=_change)
    return {
        "rule": rule.name,
        "text": rule.text,
        "thresholds": thr,
        "eligible": len(ok),
        "of": len(rows),
        "selected": best,
    }


def ranked(
    rows: Sequence[dict[str, Any]], post: dict[str, Any], rule: Rule
) -> list[dict[str, Any]]:
    """The rule's eligible rows, most diverse first (ties: the smaller change first)."""
    thr = rule.thresholds(post)
    ok = [r for r in rows if rule.eligible(r, thr)]
    return sorted(ok, key=lambda r: (-r[rule.diversity_key], _change(r)))


def pareto_front(points: dict[Any, tuple[float, float]]) -> list[Any]:
    """Keys not dominated in (validity, diversity), both to maximise; sorted by validity."""
    keys = list(points)
    front = []
    for k in keys:
        v, h = points[k]
        dominated = any(
            (v2 >= v and h2 >= h) and (v2 > v or h2 > h)
            for k2, (v2, h2) in points.items()
            if k2 != k
        )
        if not dominated:
            front.append(k)
    return sorted(front, key=lambda k: points[k][0])


def label(row: dict[str, Any]) -> str:
    """A hybrid's short name: ``4:7``, ``4:7@0.5``, ``4:7:mlp``, ``soup@0.7``."""
    if "start" not in row:
        return f"soup@{row['alpha']:g}"
    out = format_range((row["start"], row["end"]))
    if row.get("parts", "all") != "all":
        out += f":{row['parts']}"
    if row.get("alpha", 1.0) != 1.0:
        out += f"@{row['alpha']:g}"
    return out


#: below this share of first-token mass on valid characters the post model does not play the
#: CRC game (the planted Gemma post: 0.997; the natural one, which opens with a sentence: 0.016)
MIN_POST_VALIDITY = 0.5
#: below this V_end the post model's CRC answers do not end where a chat reply ends
MIN_POST_V_END = 0.1


def caveats(post: dict[str, Any], base: dict[str, Any], rules: Sequence[Rule]) -> list[str]:
    """Why a CRC selection may not be worth trusting, one sentence each (empty: no reason seen).

    Why: the rules are relative to the post model. When it puts little of its first token on
    a listed character, 0.9 x V_post admits nearly every hybrid (the base itself, on the
    natural-collapse Gemma pair) and H is measured on a sliver of the distribution; when its
    V_end is ~0, the format rule's end threshold binds on nothing. The sweep still selects;
    these say so, so that a user reads the validation by generation before the proxy."""
    out = []
    if post["V"] < MIN_POST_VALIDITY:
        out.append(
            f"the post model puts {post['V']:.3f} of its first token on a valid character "
            f"(V_post < {MIN_POST_VALIDITY}): CRC scores a small part of its replies; trust "
            "the validation by generation (--validate), not the proxy"
        )
    for rule in rules:
        if rule.eligible(base, rule.thresholds(post)):
            out.append(
                f"the base model itself meets the {rule.name} rule's thresholds: the rule does "
                "not constrain which layers are restored"
            )
    if any(r.name == "format" for r in rules) and (post.get("V_end") or 0.0) < MIN_POST_V_END:
        out.append(
            f"the post model's V_end is {post.get('V_end') or 0.0:.2g} (< {MIN_POST_V_END}): its "
            "CRC answers do not end like chat replies, so the format rule's end threshold "
            "cannot tell which hybrids keep the format"
        )
    return out
