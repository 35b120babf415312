"""Choosing an interval: the paper's rule, and the validity/diversity Pareto front.

The rule: the most diverse interval among those whose validity is at least
``validity_ratio`` times the post model's (ties: the shorter interval, then the earlier one —
fewer layers changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layergraft.ranges import Range, format_range


@dataclass(frozen=True)
class Selection:
    """The chosen interval and why."""

    interval: Range | None
    threshold: float
    rule: str
    candidates: int

    def as_json(self) -> dict[str, Any]:
        return {
            "interval": format_range(self.interval) if self.interval else None,
            "validity_threshold": self.threshold,
            "rule": self.rule,
            "eligible_intervals": self.candidates,
        }


def select_interval(
    scores: dict[Range, dict[str, Any]],
    post_validity: float,
    *,
    validity_ratio: float = 0.9,
    validity_key: str = "V",
    diversity_key: str = "H",
) -> Selection:
    """The paper's rule: highest diversity among intervals with V >= ratio * V_post.

    Ties go to the shorter interval, then the earlier one (fewer layers changed).
    """
    thr = validity_ratio * post_validity
    ok = [(r, s) for r, s in scores.items() if s[validity_key] >= thr]
    rule = (
        f"max {diversity_key} subject to {validity_key} >= {validity_ratio:g} x {validity_key}_post"
    )
    if not ok:
        return Selection(None, thr, rule, 0)
    best = max(ok, key=lambda rs: (rs[1][diversity_key], -(rs[0][1] - rs[0][0]), -rs[0][0]))
    return Selection(best[0], thr, rule, len(ok))


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
