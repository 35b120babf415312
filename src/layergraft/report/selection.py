"""Report blocks for "which hybrid to trust": both rules' picks and the validation table.

Why a module of its own: the demo report and the README render the same facts from a
sweep's results dict — the paper rule's pick, the format rule's pick, the best of every
family, and the validation by generation — so the tables are built once, here.
"""

from __future__ import annotations

from typing import Any

Block = tuple[Any, ...]


def _f(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}"


def picks_rows(sw: dict[str, Any], who: dict[str, str] | None = None) -> list[list[str]]:
    """One row per reference and per rule's pick (best over every family), with V, V_end,
    H_norm and whether it meets each rule. ``who`` names a rule's row otherwise than
    "<rule> rule's pick" (the report: the paper rule's pick is a restored interval, its best
    over every family is something else)."""
    post = sw["references"]["post"]
    rules = sw.get("rules") or {}
    thresholds = {
        n: (r["validity_ratio"] * post["V"],
            (r["end_ratio"] or 0) * (post.get("V_end") or 0) if n == "format" else None)
        for n, r in rules.items()
    }  # fmt: skip

    def meets(row: dict[str, Any], n: str) -> str:
        v, e = thresholds[n]
        ok = row["V"] >= v and (e is None or (row.get("V_end") or 0) >= e)
        return "yes" if ok else "no"

    rows = []
    for name in ("post", "base"):
        r = sw["references"][name]
        rows.append(
            [name, "–", _f(r["V"]), _f(r.get("V_end")), _f(r["H_norm"])] + ["–"] * len(rules)
        )
    seen: dict[str, list[str]] = {}
    for n, best in (sw.get("best") or {}).items():
        if best:
            seen.setdefault(best["label"], []).append(n)
    chosen = (sw.get("validation") or {}).get("chosen")
    for lab, names in seen.items():
        row = next(b for n, b in sw["best"].items() if b and b["label"] == lab)
        if who and any(n in who for n in names):
            says = " and ".join(who.get(n, f"{n} rule's pick") for n in names)
        else:
            says = " and ".join(f"{n} rule" for n in names) + "'s pick"
        if chosen and chosen["label"] == lab:
            says += ", validated"
        rows.append([f"`{lab}` ({says})", row["family"], _f(row["V"]), _f(row.get("V_end")),
                     _f(row["H_norm"])] + [meets(row, n) for n in rules])  # fmt: skip
    if chosen and chosen["label"] not in seen:
        rows.append([f"`{chosen['label']}` (validated)", chosen.get("family", "–"), _f(chosen["V"]),
                     _f(chosen.get("V_end")), _f(chosen["H_norm"])] + [meets(chosen, n) for n in rules])  # fmt: skip
    return rows


def picks_header(sw: dict[str, Any]) -> list[str]:
    return ["model", "family", "V", "V_end", "H_norm"] + [
        f"meets {n} rule" for n in (sw.get("rules") or {})
    ]


VALIDATION_COLUMNS = ("finished_rate", "valid_rate", "format_validity", "distinct_valid_answers",
                      "embedding_diversity")  # fmt: skip


def validation_rows(val: dict[str, Any]) -> list[list[str]]:
    """The post model and every validated candidate, the gate's verdict per candidate."""
    post = val["post"]
    rows = [["post", "–", "–", "–", "–"] + [_f(post.get(c)) for c in VALIDATION_COLUMNS] + ["–"]]
    for c in val["candidates"]:
        verdict = "yes" if c["passes"] else "no (" + "; ".join(c["fails"]) + ")"
        if val.get("chosen") and c["label"] == val["chosen"]["label"]:
            verdict = "**chosen**"
        rows.append([f"`{c['label']}`", c["family"], _f(c["V"]), _f(c.get("V_end")),
                     _f(c.get("H_norm"))] + [_f(c.get(k)) for k in VALIDATION_COLUMNS] + [verdict])  # fmt: skip
    return rows


def validation_header() -> list[str]:
    return ["candidate", "family", "V", "V_end", "H_norm", *VALIDATION_COLUMNS, "passes the gate"]


#: the validation table in two, each narrow enough for the page (11 columns were not): the gate
#: first (what decides: the generation rates, the proxy's diversity, the verdict), then the rest
VALIDATION_SPLIT = (
    ("candidate", "family", "finished_rate", "valid_rate", "H_norm", "passes the gate"),
    ("candidate", "V", "V_end", "format_validity", "distinct_valid_answers", "embedding_diversity"),
)


def validation_tables(val: dict[str, Any]) -> list[Block]:
    """The validation table (:func:`validation_header`, :func:`validation_rows`, as the
    README renders it whole) as two tables of the columns in :data:`VALIDATION_SPLIT`."""
    head, rows = validation_header(), validation_rows(val)
    out: list[Block] = []
    for cols in VALIDATION_SPLIT:
        idx = [head.index(c) for c in cols]
        out.append(("table", list(cols), [[r[i] for i in idx] for r in rows]))
    return out


def selection_blocks(sw: dict[str, Any]) -> list[Block]:
    """Report blocks: the rules' picks, then the validation by generation (when run)."""
    rules = sw.get("rules") or {}
    text = (
        "Two rules choose among every hybrid swept (restored intervals, interval soups, part "
        "restores, whole-model soups): "
        + "; ".join(f"**{n}**: {r['text']}" for n, r in rules.items())
        + ". V_end is the probability that the reply is a valid character and then ends: the "
        "first answer token alone cannot see a hybrid that no longer stops."
    )
    # the paper rule's pick is the interval the SLR paper's rule selects; the same thresholds
    # over every family may pick another hybrid, which must not take that name
    paper = ((sw.get("selections") or {}).get("paper") or {}).get("interval")
    best = (sw.get("best") or {}).get("paper") or {}
    who = {"paper": "paper rule over every family"} if best.get("label", paper) != paper else None
    blocks: list[Block] = [("h3", "Which hybrid to trust"), ("p", text),
                           ("table", picks_header(sw), picks_rows(sw, who))]  # fmt: skip
    val = sw.get("validation")
    if val:
        blocks.append((
            "p",
            f"Validation by generation: the {val['k']} most diverse eligible candidate(s) of each "
            f"family and the post model each wrote {val['samples']} replies to the {val['prompts']} "
            f"prompts of a held-out chat set (open QA and open-ended requests, at most "
            f"{val['max_new_tokens']} new tokens). A candidate passes when its finished_rate and "
            f"valid_rate stay at least {val['gate']['ratio']:g} x the post model's; the most diverse "
            f"(by the proxy) that passes is chosen. {val['verdict']}.",
        ))  # fmt: skip
        blocks += validation_tables(val)
        for note in val.get("notes") or []:
            blocks.append(("p", note))
    return blocks
