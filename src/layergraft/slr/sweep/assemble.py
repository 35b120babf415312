"""A sweep's results dict from its journal rows: families, both rules' choices, the front.

Why a pure function of the rows: the rows are the same however the sweep ran (in one go,
resumed, on several workers, in any order), so ``results.json`` is too.

The hybrids fall in families, each chosen from by both rules (:mod:`.selection`):

* ``interval`` — base layers ``[s, e)`` restored whole (the paper's SLR);
* ``interval_soup`` — the layers of ``[s, e)`` blended at ``alpha < 1`` (``--alphas``);
* ``part:attn`` / ``part:mlp`` / ``part:norms`` — only that part of the layers (``--parts``);
* ``soup`` — the whole model blended (``--method soup|both``).

Top-level ``intervals``/``selection``/``selected``/``pareto`` are the ``interval`` family's
under the active rule, as before (``selections`` has both rules); ``best`` is each rule's
choice over every family swept, and ``candidates`` each family's eligible rows, most diverse
first (what validation generates from).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from layergraft.errors import InputError
from layergraft.slr.sweep.selection import Rule, caveats, label, pareto_front, ranked, select

#: rows kept per family and rule in ``candidates`` (validation takes its K from the front)
CANDIDATES_KEPT = 10


def _flat(r: dict[str, Any]) -> dict[str, Any]:
    if r["kind"] == "soup":
        return {"alpha": r["alpha"], **r["scores"]}
    return {
        "interval": f"{r['start']}:{r['end']}",
        "start": r["start"],
        "end": r["end"],
        "alpha": r.get("alpha", 1.0),
        "parts": r.get("parts", "all"),
        **r["scores"],
    }


def family_of(row: dict[str, Any]) -> str:
    """The family of a flat row (module doc)."""
    if "start" not in row:
        return "soup"
    if row.get("parts", "all") != "all":
        return f"part:{row['parts']}"
    return "interval" if row.get("alpha", 1.0) == 1.0 else "interval_soup"


def _references_and_soups(rows: list[dict[str, Any]]) -> tuple[dict, list]:
    found = {r["name"]: r["scores"] for r in rows if r["kind"] == "reference"}
    if set(found) != {"post", "base"}:
        raise InputError("the sweep journal lacks its reference rows; run it again with --resume")
    # a fixed order: on Ray the journal's order is the order the workers finished in
    refs = {name: found[name] for name in ("post", "base")}
    soups = sorted((_flat(r) for r in rows if r["kind"] == "soup"), key=lambda r: r["alpha"])
    return refs, soups


def _interval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat = [_flat(r) for r in rows if r["kind"] == "interval"]
    return sorted(flat, key=lambda r: (r["parts"], -r["alpha"], r["start"], r["end"]))


def _legacy(sel: dict[str, Any]) -> dict[str, Any]:
    """A selection as the first results.json had it (``interval``, ``validity_threshold``)."""
    best = sel["selected"]
    return {
        "interval": best.get("interval") if best else None,
        "validity_threshold": sel["thresholds"]["V"],
        "end_threshold": sel["thresholds"].get("V_end"),
        "rule": sel["text"],
        "eligible_intervals": sel["eligible"],
    }


def _crc_family(
    rows: list[dict[str, Any]], post: dict[str, Any], rules: dict[str, Rule], active: str
) -> dict[str, Any]:
    """One family's rows with the active rule's choice, both rules' choices and the front."""
    sels = {n: select(rows, post, r) for n, r in rules.items()}
    key = rules[active].diversity_key
    return {
        "intervals": rows,
        "selection": _legacy(sels[active]),
        "selected": sels[active]["selected"],
        "selections": {n: _legacy(s) for n, s in sels.items()},
        "pareto": pareto_front({label(r): (r["V"], r[key]) for r in rows}),
    }


def usable_rules(post: dict[str, Any], requested: str | None) -> tuple[dict[str, Rule], str]:
    """Both rules where the post model has a V_end, else the paper rule only; and which one
    is active (``requested``, else format where it can apply, else paper)."""
    names = ["paper"] + (["format"] if post.get("V_end") is not None else [])
    if requested is not None and requested not in names:
        raise InputError(
            "--rule format needs V_end, which this sweep did not compute (no end marker, or "
            "--v-end off); use --rule paper"
        )
    return {n: Rule(n) for n in names}, requested or names[-1]


def assemble_crc(
    rows: list[dict[str, Any]],
    *,
    header: dict[str, Any],
    method: str,
    rule: str | None = None,
    validity_ratio: float = 0.9,
    end_ratio: float = 0.9,
    diversity_key: str = "H_norm",
    parts: Sequence[str] = ("all",),
) -> dict[str, Any]:
    """The CRC sweep's results (module doc)."""
    refs, soups = _references_and_soups(rows)
    post = refs["post"]
    names, active = usable_rules(post, rule)
    rules = {n: Rule(n, validity_ratio, end_ratio, diversity_key) for n in names}
    every = _interval_rows(rows)
    families: dict[str, list[dict[str, Any]]] = {}
    for r in every:
        families.setdefault(family_of(r), []).append(r)
    if soups:
        families["soup"] = soups
    results: dict[str, Any] = {
        **header,
        "method": method,
        "references": refs,
        "rule": rules[active].as_json(),
        "rules": {n: r.as_json() for n, r in rules.items()},
        "range_convention": "0-based, half-open [start, end)",
        "caveats": caveats(post, refs["base"], list(rules.values())),
        "intervals": [],
    }
    main = "all" if "all" in parts else parts[0]
    whole = [r for r in every if r["alpha"] == 1.0 and r["parts"] == main]
    if method in ("slr", "both"):
        results.update(_crc_family(whole, post, rules, active))
    if list(parts) != ["all"]:
        results["parts"] = list(parts)
        results["by_part"] = {
            p: _crc_family(
                [r for r in every if r["parts"] == p and r["alpha"] == 1.0], post, rules, active
            )
            for p in parts
        }
        picks = [(p, b["selected"]) for p, b in results["by_part"].items() if b["selected"]]
        best = max(picks, key=lambda pc: pc[1][diversity_key], default=None)
        results["best_overall"] = {"parts": best[0], **best[1]} if best else None
    blended = [r for r in every if r["alpha"] != 1.0 or r["parts"] != "all"]
    alphas = sorted({r["alpha"] for r in every})
    if any(a != 1.0 for a in alphas):
        soups_of = [r for r in every if r["parts"] == "all"]
        results["interval_soups"] = {
            "alphas": alphas,
            "formula": "post + alpha * (base - post) on the layers of [start, end)",
            "rows": [r for r in blended if r["parts"] == "all"],
            "selections": {n: select(soups_of, post, r) for n, r in rules.items()},
        }
    if soups:
        ssel = {n: select(soups, post, r) for n, r in rules.items()}
        results["soup"] = {
            "alphas": soups,
            "formula": "(1 - alpha) * post + alpha * base",
            "selected": ssel[active]["selected"],
            "selections": {n: s["selected"] for n, s in ssel.items()},
        }
        if method == "soup":
            results["selection"] = {**_legacy(ssel[active]), "interval": None}
            results["pareto"] = []
    results["best"] = {}
    results["candidates"] = {}
    for n, r in rules.items():
        picks = {f: select(fr, post, r)["selected"] for f, fr in families.items()}
        pool = [{"family": f, "label": label(p), **p} for f, p in picks.items() if p]
        results["best"][n] = max(pool, key=lambda p: p[diversity_key], default=None)
        results["candidates"][n] = {
            f: [{"label": label(x), **x} for x in ranked(fr, post, r)[:CANDIDATES_KEPT]]
            for f, fr in families.items()
        }
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
    every = _interval_rows(rows)
    results: dict[str, Any] = {
        **header,
        "method": method,
        "definition": definition,
        "references": refs,
        "rule": {"text": "min ppl"},
        "range_convention": "0-based, half-open [start, end)",
        **_ppl_choice([]),
    }
    main = "all" if "all" in parts else parts[0]
    if method in ("slr", "both"):
        results.update(_ppl_choice([r for r in every if r["parts"] == main and r["alpha"] == 1.0]))
    if list(parts) != ["all"]:
        results["parts"] = list(parts)
        results["by_part"] = {
            p: _ppl_choice([r for r in every if r["parts"] == p and r["alpha"] == 1.0])
            for p in parts
        }
        picks = [(p, b["selected"]) for p, b in results["by_part"].items() if b["selected"]]
        best = min(picks, key=lambda pc: pc[1]["ppl"], default=None)
        results["best_overall"] = {"parts": best[0], **best[1]} if best else None
    if soups:
        results["soup"] = {
            "alphas": soups,
            "formula": "(1 - alpha) * post + alpha * base",
            "selected": min(soups, key=lambda r: (r["ppl"], r["alpha"])),
        }
    return results
