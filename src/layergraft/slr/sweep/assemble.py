"""A sweep's results dict from its journal rows: canonical order, the selection, the front.

Why a pure function of the rows: the rows are the same however the sweep ran (in one go,
resumed, on several workers, in any order), so ``results.json`` is too.

With several parts (``sweep --parts attn,mlp,all``) each part gets its own intervals,
selection and front under ``by_part``; the top-level ``intervals``/``selection``/``selected``
are those of whole layers (``all``) when it was swept, else of the first part, and
``best_overall`` is the most diverse of the parts' selections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from layergraft.errors import InputError
from layergraft.ranges import format_range
from layergraft.slr.sweep.selection import pareto_front, select_interval


def _intervals(rows: list[dict[str, Any]], part: str) -> list[dict[str, Any]]:
    chosen = (r for r in rows if r["kind"] == "interval" and r.get("parts", "all") == part)
    return sorted(
        ({"interval": f"{r['start']}:{r['end']}", "start": r["start"], "end": r["end"], **r["scores"]}
         for r in chosen),
        key=lambda r: (r["start"], r["end"]),
    )  # fmt: skip


def _references_and_soups(rows: list[dict[str, Any]]) -> tuple[dict, list]:
    refs = {r["name"]: r["scores"] for r in rows if r["kind"] == "reference"}
    if set(refs) != {"post", "base"}:
        raise InputError("the sweep journal lacks its reference rows; run it again with --resume")
    soups = sorted(
        ({"alpha": r["alpha"], **r["scores"]} for r in rows if r["kind"] == "soup"),
        key=lambda r: r["alpha"],
    )
    return refs, soups


def _crc_choice(intervals: list[dict], v_post: float, rule: dict[str, Any]) -> dict[str, Any]:
    flat = {(r["start"], r["end"]): r for r in intervals}
    sel = select_interval(flat, v_post, **rule)
    chosen = format_range(sel.interval) if sel.interval else None
    key = rule["diversity_key"]
    return {
        "intervals": intervals,
        "selection": sel.as_json(),
        "selected": next((r for r in intervals if r["interval"] == chosen), None),
        "pareto": pareto_front({format_range(k): (v["V"], v[key]) for k, v in flat.items()}),
    }


def _per_part(
    rows: list[dict[str, Any]], parts: Sequence[str], choose: Any, key: Any
) -> dict[str, Any]:
    """Top-level fields (whole layers, or the first part), ``by_part`` and ``best_overall``."""
    chosen = {p: choose(_intervals(rows, p)) for p in parts}
    main = "all" if "all" in chosen else parts[0]
    out = dict(chosen[main])
    if list(parts) != ["all"]:
        out["parts"] = list(parts)
        out["by_part"] = chosen
        picks = [(p, c["selected"]) for p, c in chosen.items() if c.get("selected")]
        best = max(picks, key=lambda pc: key(pc[1]), default=None)
        out["best_overall"] = {"parts": best[0], **best[1]} if best else None
    return out


def assemble_crc(
    rows: list[dict[str, Any]],
    *,
    header: dict[str, Any],
    method: str,
    validity_ratio: float,
    diversity_key: str,
    parts: Sequence[str] = ("all",),
) -> dict[str, Any]:
    """The CRC sweep's results: references, every interval (per part), the rule's choice, the
    Pareto front, and the soup curve with its own choice under the same rule."""
    refs, soups = _references_and_soups(rows)
    v_post = refs["post"]["V"]
    rule = {"validity_ratio": validity_ratio, "diversity_key": diversity_key}
    results: dict[str, Any] = {
        **header,
        "method": method,
        "references": refs,
        "rule": {**rule, "text": f"max {diversity_key} s.t. V >= {validity_ratio:g}·V_post"},
        "range_convention": "0-based, half-open [start, end)",
        "intervals": [],
    }
    if method in ("slr", "both"):
        results.update(
            _per_part(
                rows, parts, lambda iv: _crc_choice(iv, v_post, rule), lambda r: r[diversity_key]
            )
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


def _ppl_choice(intervals: list[dict[str, Any]]) -> dict[str, Any]:
    best = min(intervals, key=lambda r: (r["ppl"], r["end"] - r["start"], r["start"]), default=None)
    return {
        "intervals": intervals,
        "selection": {"interval": best["interval"] if best else None, "rule": "min ppl"},
        "selected": best,
    }


def assemble_ppl(
    rows: list[dict[str, Any]],
    *,
    header: dict[str, Any],
    method: str,
    definition: str,
    parts: Sequence[str] = ("all",),
) -> dict[str, Any]:
    """The perplexity sweep's results: the lowest-perplexity interval (ties: shorter, then
    earlier) per part and, with soups, the lowest-perplexity alpha."""
    refs, soups = _references_and_soups(rows)
    results: dict[str, Any] = {
        **header,
        "method": method,
        "definition": definition,
        "references": refs,
        "rule": {"text": "min ppl"},
        "range_convention": "0-based, half-open [start, end)",
        **_ppl_choice([]),
    }
    if method in ("slr", "both"):
        results.update(_per_part(rows, parts, _ppl_choice, lambda r: -r["ppl"]))
    if soups:
        results["soup"] = {
            "alphas": soups,
            "formula": "(1 - alpha) * post + alpha * base",
            "selected": min(soups, key=lambda r: (r["ppl"], r["alpha"])),
        }
    return results
