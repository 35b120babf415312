"""A sweep's results dict from its journal rows: canonical order, the selection, the front.

Why a pure function of the rows: the rows are the same however the sweep ran (in one go,
resumed, on several workers, in any order), so ``results.json`` is too.
"""

from __future__ import annotations

from typing import Any

from layergraft.errors import InputError
from layergraft.ranges import format_range
from layergraft.slr.selection import pareto_front, select_interval


def _by_kind(rows: list[dict[str, Any]]) -> tuple[dict, list, list]:
    refs = {r["name"]: r["scores"] for r in rows if r["kind"] == "reference"}
    intervals = sorted(
        ({"interval": f"{r['start']}:{r['end']}", "start": r["start"], "end": r["end"], **r["scores"]}
         for r in rows if r["kind"] == "interval"),
        key=lambda r: (r["start"], r["end"]),
    )  # fmt: skip
    soups = sorted(
        ({"alpha": r["alpha"], **r["scores"]} for r in rows if r["kind"] == "soup"),
        key=lambda r: r["alpha"],
    )
    return refs, intervals, soups


def assemble_crc(
    rows: list[dict[str, Any]],
    *,
    header: dict[str, Any],
    method: str,
    validity_ratio: float,
    diversity_key: str,
) -> dict[str, Any]:
    """The CRC sweep's results: references, every interval, the rule's choice, the Pareto
    front, and the soup curve with its own choice under the same rule."""
    refs, intervals, soups = _by_kind(rows)
    if set(refs) != {"post", "base"}:
        raise InputError("the sweep journal lacks its reference rows; run it again with --resume")
    v_post = refs["post"]["V"]
    rule = {"validity_ratio": validity_ratio, "diversity_key": diversity_key}
    results: dict[str, Any] = {
        **header,
        "method": method,
        "references": refs,
        "rule": {**rule, "text": f"max {diversity_key} s.t. V >= {validity_ratio:g}·V_post"},
        "range_convention": "0-based, half-open [start, end)",
        "intervals": intervals,
    }
    if method in ("slr", "both"):
        flat = {(r["start"], r["end"]): r for r in intervals}
        sel = select_interval(flat, v_post, **rule)
        chosen = format_range(sel.interval) if sel.interval else None
        results["selection"] = sel.as_json()
        results["selected"] = next((r for r in intervals if r["interval"] == chosen), None)
        results["pareto"] = pareto_front(
            {format_range(k): (v["V"], v[diversity_key]) for k, v in flat.items()}
        )
    if method in ("soup", "both"):
        ssel = select_interval({(i, i): r for i, r in enumerate(soups)}, v_post, **rule)
        results["soup"] = {
            "alphas": soups,
            "formula": "(1 - alpha) * post + alpha * base",
            "selected": soups[ssel.interval[0]] if ssel.interval else None,
        }
        if method == "soup":
            results["selection"] = {**ssel.as_json(), "interval": None}
            results["pareto"] = []
    return results


def assemble_ppl(
    rows: list[dict[str, Any]], *, header: dict[str, Any], method: str, definition: str
) -> dict[str, Any]:
    """The perplexity sweep's results: the lowest-perplexity interval (ties: shorter, then
    earlier) and, with soups, the lowest-perplexity alpha."""
    refs, intervals, soups = _by_kind(rows)
    results: dict[str, Any] = {
        **header,
        "method": method,
        "definition": definition,
        "references": refs,
        "rule": {"text": "min ppl"},
        "range_convention": "0-based, half-open [start, end)",
        "intervals": intervals,
        "selection": {"interval": None, "rule": "min ppl"},
        "selected": None,
    }
    if intervals:
        best = min(intervals, key=lambda r: (r["ppl"], r["end"] - r["start"], r["start"]))
        results["selection"]["interval"] = best["interval"]
        results["selected"] = best
    if soups:
        results["soup"] = {
            "alphas": soups,
            "formula": "(1 - alpha) * post + alpha * base",
            "selected": min(soups, key=lambda r: (r["ppl"], r["alpha"])),
        }
    return results
