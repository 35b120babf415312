"""One answer to "what was selected": each rule's pick, the validated pick, the written hybrid.

Why: a sweep reports several choices (the paper's rule over restored intervals, the format
rule over every family, the candidate that passed validation by generation), and the console,
``results.json`` and the report used to name them differently ("selected interval 5:7" for a
job that wrote ``2:7:mlp``). Every place reads this dict, so the words are the same:

- **paper rule's pick**: the most diverse restored interval with V >= 0.9 x V_post (the SLR
  paper's choice);
- **format rule's pick**: the most diverse hybrid of every family swept that also keeps
  V_end >= 0.9 x V_end_post (absent when the models have no end markers);
- **validated pick**: the most diverse candidate whose generations kept the chat format;
- **written hybrid**: the one written to ``DIR/hybrid``: the validated pick, or with
  validation off the active rule's pick (then with a caveat saying it was not validated).
"""

from __future__ import annotations

from typing import Any

from layergraft.slr.hybrid.candidate import describe
from layergraft.slr.sweep.selection import label as label_of

#: the compare run label of each role (the report and the tests read them from the results)
ROLE_LABELS = {
    "post": "post", "base": "base", "paper": "paper_pick", "format": "format_pick",
    "written": "hybrid", "soup": "soup", "paper_best": "paper_best",
}  # fmt: skip
#: the hybrids compared by default (``format`` is added when nothing was written)
ROLES = ("written", "paper", "soup")

_KEEP = ("start", "end", "alpha", "parts", "family", "V", "H", "H_norm", "V_end")


def _pick(
    row: dict[str, Any] | None, rule: str, family: str | None = None
) -> dict[str, Any] | None:
    if not row:
        return None
    out = {k: row[k] for k in _KEEP if k in row}
    out.setdefault("family", family or "soup")
    out["label"] = row.get("label") or label_of(row)
    out["what"] = describe(row)
    out["rule"] = rule
    return out


def picks(sweep: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Each rule's pick and the validated pick, from a CRC sweep's results."""
    rules = sweep.get("rules") or {}
    paper_iv = ((sweep.get("selections") or {}).get("paper") or {}).get("interval")
    paper_row = next((r for r in sweep.get("intervals", []) if r["interval"] == paper_iv), None)
    out: dict[str, dict[str, Any] | None] = {
        "paper": _pick(
            paper_row,
            f"{(rules.get('paper') or {}).get('text', 'V >= 0.9 x V_post')}, most diverse "
            "restored interval (the SLR paper's rule)",
            "interval",
        ),
        "format": None,
        "validated": None,
    }
    if "format" in rules:
        out["format"] = _pick(
            (sweep.get("best") or {}).get("format"),
            f"{rules['format']['text']}, most diverse over every family swept",
        )
    val = sweep.get("validation")
    if val and val.get("chosen"):
        chosen = _pick(
            val["chosen"],
            f"the most diverse candidate whose generations keep finished_rate and valid_rate "
            f">= {val['gate']['ratio']:g} x the post model's",
        )
        row = next((c for c in val["candidates"] if c["label"] == chosen["label"]), {})
        chosen.update({k: row[k] for k in ("finished_rate", "valid_rate") if k in row})
        out["validated"] = chosen
    return out


def _validation_of(sweep: dict[str, Any], label: str) -> dict[str, Any] | None:
    val = sweep.get("validation") or {}
    return next((c for c in val.get("candidates", []) if c["label"] == label), None)


def written(sweep: dict[str, Any], p: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The hybrid the job writes, which pick it is and why (None: nothing is written)."""
    val = sweep.get("validation")
    active = (sweep.get("rule") or {}).get("name", "paper")
    if val is not None:
        if p["validated"] is None:
            return None
        row, pick = p["validated"], "validated"
        why = (
            f"it is the validated pick: {row['what']} kept the chat format when generating "
            f"(finished_rate {row.get('finished_rate', float('nan')):.2f}, valid_rate "
            f"{row.get('valid_rate', float('nan')):.2f}) and is the most diverse candidate that did"
        )
        paper = p["paper"]
        if paper and paper["label"] != row["label"]:
            tried = _validation_of(sweep, paper["label"])
            if tried and not tried.get("passes"):
                why += (
                    f"; the paper rule's pick {paper['label']} was validated too and failed "
                    f"({'; '.join(tried.get('fails') or [])})"
                )
            else:
                why += (
                    f"; the paper rule's pick {paper['label']} is not what was written because "
                    "that rule ranks by the first token alone and was not checked by generation"
                )
        return {"label": row["label"], "pick": pick, "what": row["what"], "why": why,
                **{k: row[k] for k in _KEEP if k in row}}  # fmt: skip
    row = p.get(active) or (sweep.get("best") or {}).get(active)
    if row is None:
        return None
    row = row if "what" in row else _pick(row, active)
    return {
        "label": row["label"], "pick": active, "what": row["what"],
        "why": f"it is the {active} rule's pick; validation by generation was off",
        **{k: row[k] for k in _KEEP if k in row},
    }  # fmt: skip


def caveats(sweep: dict[str, Any], wrote: dict[str, Any] | None) -> list[str]:
    """The sweep's own caveats, plus what the job adds: an unvalidated hybrid, none written."""
    out = list(sweep.get("caveats") or [])
    val = sweep.get("validation")
    if val is None and wrote is not None:
        out.append(
            f"the written hybrid {wrote['label']} was not validated by generation: run with "
            "--validate K (the default) before trusting it"
        )
    if val is not None and wrote is None:
        out.append(
            f"no hybrid was written: {val.get('verdict', 'no candidate passed validation')}; "
            "the rules' picks are compared below, none kept the chat format"
        )
    return out


def selection(sweep: dict[str, Any]) -> dict[str, Any]:
    """The ``selection`` section of the job's results (module doc): picks, written, caveats."""
    p = picks(sweep)
    wrote = written(sweep, p)
    if wrote is not None:
        wrote["dir"] = "hybrid"
    return {"picks": p, "written": wrote, "caveats": caveats(sweep, wrote)}


def compared_roles(
    sel: dict[str, Any], sweep: dict[str, Any], roles: tuple[str, ...] = ROLES
) -> dict[str, dict[str, Any]]:
    """The hybrids put to the tasks, by role, each once: by default the written hybrid (or,
    when none was written, the format rule's pick), the paper rule's pick and the best
    whole-model soup; ``roles`` may add ``format`` and ``paper_best`` (the paper rule over
    every family). A role whose hybrid another role already holds gets ``same_as``."""
    want = list(roles) + (["format"] if sel["written"] is None and "format" not in roles else [])
    soup = (sweep.get("soup") or {}).get("selected")
    rows: dict[str, dict[str, Any] | None] = {
        "written": sel["written"],
        "paper": sel["picks"]["paper"],
        "format": sel["picks"]["format"],
        "paper_best": _pick(
            (sweep.get("best") or {}).get("paper"), "the paper rule over every family"
        ),
        "soup": _pick(soup, "the active rule over whole-model soups") if soup else None,
    }
    bad = [r for r in want if r not in rows]
    if bad:
        raise ValueError(f"unknown role {bad[0]!r}; roles are {', '.join(rows)}")
    out: dict[str, dict[str, Any]] = {}
    for role in [r for r in rows if r in want]:
        row = rows[role]
        if row is None:
            continue
        same = next((r for r, v in out.items() if v["label"] == row["label"]), None)
        out[role] = {"label": row["label"], "what": row["what"], "row": row,
                     **({"same_as": same} if same else {"run": ROLE_LABELS[role]})}  # fmt: skip
    return out


def console_lines(sel: dict[str, Any], where: str) -> list[str]:
    """What the CLI prints at the end of a job: the same words as results.json and the
    report, then where the report is."""

    def one(p: dict[str, Any] | None) -> str:
        if p is None:
            return "none"
        return f"{p['label']} ({p['what']}; V {p['V']:.3f}, H_norm {p['H_norm']:.3f})"

    lines = [
        f"paper rule's pick:  {one(sel['picks']['paper'])}",
        f"format rule's pick: {one(sel['picks']['format'])}",
        f"validated pick:     {one(sel['picks']['validated'])}",
    ]
    w = sel["written"]
    lines.append(
        f"written hybrid:     {w['label']} -> {where}/hybrid ({w['pick']} pick)" if w
        else "written hybrid:     none"
    )  # fmt: skip
    lines += [f"caveat: {c}" for c in sel["caveats"]]
    lines.append(f"report: {where}/report.html (and report.md, results.json)")
    return lines


def crc_line(crc_res: dict[str, Any]) -> str:
    """What the job says after the CRC step: is the post model collapsed and in format?"""
    p, b = crc_res["post"], crc_res["base"]

    def one(m: dict[str, Any]) -> str:
        end = "" if m.get("V_end") is None else f", V_end {m['V_end']:.3f}"
        return f"V {m['V']:.3f}, H_norm {m['H_norm']:.3f}{end}"

    return f"    CRC post: {one(p)}; base: {one(b)}"
