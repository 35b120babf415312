"""The report's first screen: which hybrid was written and where, why it and not the paper
rule's pick, what it does to diversity and to the chat format on each task, and the caveats.

Rendered from the job's ``results.json`` alone: ``res["selection"]`` (each rule's pick, the
written hybrid, the caveats, the compare run of each role; built by
:mod:`layergraft.study.selection`) and ``res["compare"]`` (per task, each run's means). The
words are the same everywhere: **paper rule's pick**, **format rule's pick**, **validated
pick**, **written hybrid**.
"""

from __future__ import annotations

import math
from typing import Any

from layergraft.report.blocks import Block

#: how the report names each pick (the keys of ``selection["picks"]``)
PICK_NAMES = {
    "paper": "paper rule's pick",
    "format": "format rule's pick",
    "validated": "validated pick",
}
#: the diversity number of a task's row: the first of these its runs have (qa: distinct valid
#: answers; open-ended tasks: Vendi score of the embeddings)
DIVERSITY_PREFERENCE = ("distinct_valid_answers", "vendi", "embedding_diversity", "distinct_2")
FORMAT_METRIC = "finished_rate"


def num(x: float | None) -> str:
    """A mean as the summary writes it: 3 decimals, 1 from 10 up, a dash when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def ratio(x: float | None, ref: float | None) -> str:
    """``x`` against the post model's value, ``1.50×``; a dash when either is missing or the
    post model's value is 0."""
    if x is None or ref is None or ref == 0:
        return "–"
    return f"{x / ref:.2f}×"


def _run_of(sel: dict[str, Any], role: str) -> str | None:
    """The compare run label that holds ``role``'s hybrid: ``compared[role]`` (a label, or a
    dict with ``run`` / ``same_as``), else the role whose hybrid is the same."""
    compared = sel.get("compared") or {}
    got = compared.get(role)
    if isinstance(got, dict):
        got = got.get("run") or compared.get(got.get("same_as", ""))
    if isinstance(got, str):
        return got
    pick = (sel.get("picks") or {}).get(role) or {}
    same = pick.get("same_as")
    if same and same != role:
        return _run_of(sel, same)
    written = sel.get("written")
    if role != "written" and written and pick.get("label") == written.get("label"):
        return _run_of(sel, "written")
    return None


def diversity_metric(cr: dict[str, Any]) -> str | None:
    """The task's diversity number (:data:`DIVERSITY_PREFERENCE`), by what its runs have."""
    present = {m for r in cr.get("runs", {}).values() for m in r.get("mean", {})}
    return next((m for m in DIVERSITY_PREFERENCE if m in present), None)


def _mean(cr: dict[str, Any], run: str | None, metric: str) -> float | None:
    if run is None:
        return None
    value = ((cr.get("runs") or {}).get(run) or {}).get("mean", {}).get(metric)
    return None if value is None else float(value)


def _columns(sel: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The hybrids the task table sets beside the post model: the written hybrid (or, when
    none was written, the format rule's pick) and the paper rule's pick."""
    if sel.get("written"):
        first = ("written hybrid", _run_of(sel, "written"))
    else:
        first = ("format rule's pick", _run_of(sel, "format"))
    return [first, ("paper rule's pick", _run_of(sel, "paper"))]


def task_rows(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One small table: per task, its diversity metric and finished_rate for the post model,
    the written hybrid and the paper rule's pick, each hybrid with its ratio to the post model."""
    sel = res["selection"]
    cols = _columns(sel)
    post = _run_of(sel, "post") or "post"
    head = ["task", "metric", "post"]
    for name, _ in cols:
        head += [name, "× post"]
    rows = []
    for task, cr in (res.get("compare") or {}).items():
        for metric in (diversity_metric(cr), FORMAT_METRIC):
            if metric is None:
                continue
            ref = _mean(cr, post, metric)
            row = [task, metric, num(ref)]
            for _, run in cols:
                value = _mean(cr, run, metric)
                row += [num(value), ratio(value, ref)]
            rows.append(row)
    return head, rows


def _pick_row(name: str, pick: dict[str, Any] | None, written: dict[str, Any] | None) -> list[str]:
    """One pick: its label, what it is, its CRC scores; the written one says so."""
    if pick is None:
        return [PICK_NAMES[name], "none", "nothing qualified", "–", "–", "–"]
    role = PICK_NAMES[name]
    if written and written.get("label") == pick.get("label"):
        role += " = written hybrid" if written.get("pick") == name else " (same hybrid)"
    what = pick.get("what", "")
    if pick.get("same_as"):
        what = f"same hybrid as the {PICK_NAMES.get(pick['same_as'], pick['same_as'])}"
    return [role, f"`{pick['label']}`", what, num(pick.get("V")), num(pick.get("V_end")),
            num(pick.get("H_norm"))]  # fmt: skip


def _rule_item(name: str, pick: dict[str, Any] | None) -> str:
    if pick is None:
        return f"**{PICK_NAMES[name]}**: none (nothing qualified)"
    text = f"**{PICK_NAMES[name]}** `{pick['label']}`: {pick.get('rule', '')}".rstrip(": ")
    if "finished_rate" in pick or "valid_rate" in pick:
        text += (
            f"; in validation it finished {num(pick.get('finished_rate'))} of its replies, "
            f"valid_rate {num(pick.get('valid_rate'))}"
        )
    return text


def _headline(sel: dict[str, Any]) -> str:
    w = sel.get("written")
    if w:
        kind = PICK_NAMES.get(w.get("pick", ""), w.get("pick", ""))
        text = f"**Written hybrid: `{w['label']}`**, {w.get('what', '')}, "
        if w.get("dir"):
            text += f"written to `{w['dir'].rstrip('/')}/` in the job directory "
        text += f"(the {kind})."
        if w.get("why"):
            text += f" Why this one: {w['why'].rstrip('.')}."
        return text
    if any((sel.get("picks") or {}).values()):
        return (
            "**No hybrid was written.** The rules' picks below were compared with the post model, "
            "but none was kept (see the caveats)."
        )
    return "**No hybrid was written**: no rule's pick qualified (see the caveats)."


def summary_blocks(res: dict[str, Any]) -> list[Block]:
    """The first screen of the report (module doc), from ``res["selection"]`` and
    ``res["compare"]``; nothing when the results have no ``selection``."""
    sel = res.get("selection")
    if not sel:
        return []
    picks = sel.get("picks") or {}
    written = sel.get("written")
    blocks: list[Block] = [("h2", "Summary"), ("p", _headline(sel))]
    names = [n for n in PICK_NAMES if n in picks]
    blocks.append((
        "table", ["", "pick", "what", "V", "V_end", "H_norm"],
        [_pick_row(n, picks[n], written) for n in names],
    ))  # fmt: skip
    blocks.append(("ul", [_rule_item(n, picks[n]) for n in names]))
    head, rows = task_rows(res)
    if rows:
        cols = [name for name, _ in _columns(sel)]
        missing = [c for c, (_, run) in zip(cols, _columns(sel), strict=True) if run is None]
        text = (
            f"On each task, the {' and the '.join(cols)} beside the post model: the task's "
            f"diversity metric (higher = more diverse) and {FORMAT_METRIC} (the share of replies "
            "that end in the chat format), means over prompts; × post is the ratio to the post "
            "model."
        )
        if missing:
            text += f" Not compared: the {' and the '.join(missing)}."
        blocks += [("p", text), ("table", head, rows)]
    caveats = sel.get("caveats") or []
    blocks.append(("h3", "Caveats"))
    blocks.append(("ul", list(caveats)) if caveats else ("p", "None."))
    return blocks
