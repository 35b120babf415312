"""Keep the published numbers (README and the documentation site) equal to measured runs.

Each page holds tables between markers ``<!-- SOURCE:NAME -->`` and ``<!-- /SOURCE:NAME -->``.
This script renders each table from the committed results of a measured run —
``docs/demo/results.json`` (a full ``layergraft demo``) for ``demo:``, ``docs/gemma3/results.json``
(``experiments/gemma3/pipeline.py``) for ``gemma3:``, ``docs/prune/results.json``
(``benchmarks/residual_selection.py``) for ``prune:``, several of them for ``headline:`` — and
either rewrites the pages or, with ``--check``, fails if any table differs, so no published
number can drift from a run. The pages are README.md and every page of the site under docs/
(docs/cli.md excepted: tools/gen_cli_reference.py writes it).

    python tools/render_results.py --from demo-out   # copy a fresh run's results + plots, rewrite the pages
    python tools/render_results.py --check           # used by the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO = ROOT / "docs" / "demo"
GEMMA = ROOT / "docs" / "gemma3"  # experiments/gemma3/pipeline.py writes it
PRUNE = ROOT / "docs" / "prune"  # benchmarks/residual_selection.py writes it
NATURAL = ROOT / "docs" / "gemma3-natural"  # the natural-collapse pair (issue 23)
VEND = ROOT / "docs" / "v_end"  # experiments/v_end/measure.py writes it
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    """The pages whose marked tables are rendered: the README and every page of the site
    (docs/cli.md is the CLI's --help, written by tools/gen_cli_reference.py)."""
    return [README] + [p for p in sorted(DOCS.rglob("*.md")) if p != DOCS / "cli.md"]


def _f(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}f}"


def _small(x: float) -> str:
    """A probability that may be far below 0.001 (V_end of a model that answers in sentences)."""
    return f"{x:.1e}" if 0 < x < 5e-4 else _f(x)


def _v_end(r: dict) -> str:
    return "–" if r.get("V_end") is None else _f(r["V_end"])


def table_sweep(res: dict) -> str:
    sw = res["sweep"]
    rows = [("post-trained", sw["references"]["post"]), ("base", sw["references"]["base"])]
    for name, sel in (sw.get("selections") or {}).items():
        hit = next((r for r in sw["intervals"] if r["interval"] == sel["interval"]), None)
        if hit:
            rows.append((f"SLR `{hit['interval']}` ({name} rule)", hit))
    if not sw.get("selections") and sw.get("selected"):
        rows.append((f"SLR `{sw['selected']['interval']}` (selected)", sw["selected"]))
    soup = (sw.get("soup") or {}).get("selected")
    if soup:
        rows.append((f"soup α = {soup['alpha']:g} ({sw['rule'].get('name', 'the')} rule)", soup))
    out = [
        "| model (CRC, all prompts) | validity V | H (nats) | H_norm | V_end |",
        "|---|---:|---:|---:|---:|",
    ]
    out += [
        f"| {n} | {_f(r['V'])} | {_f(r['H'])} | {_f(r['H_norm'])} | {_v_end(r)} |" for n, r in rows
    ]
    out.append("")
    for name, sel in (sw.get("selections") or {"rule": sw["selection"]}).items():
        text = (sw.get("rules") or {}).get(name, sw["rule"])["text"]
        thr = f"V ≥ {_f(sel['validity_threshold'])}"
        if sel.get("end_threshold") is not None:
            thr += f", V_end ≥ {_f(sel['end_threshold'])}"
        out.append(
            f"Rule {name}: {text} ({thr}): {sel['eligible_intervals']} of "
            f"{len(sw['intervals'])} intervals qualify.  "
        )
    return "\n".join(out).rstrip()


def table_picks(res: dict) -> str:
    """Both rules' picks over every family swept, and which rule each meets."""
    from layergraft.report.selection import picks_header, picks_rows

    sw = res["sweep"]
    head = picks_header(sw)
    out = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * 3 + "---|" * (len(head) - 5)]
    out += ["| " + " | ".join(row) + " |" for row in picks_rows(sw)]
    return "\n".join(out)


def table_validation(res: dict) -> str:
    """The validation by generation: the post model, each candidate, the gate, the choice."""
    from layergraft.report.selection import validation_header, validation_rows

    val = res["sweep"].get("validation")
    if not val:
        return "(no validation in this run)"
    head = validation_header()
    out = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 3) + "---|"]
    out += ["| " + " | ".join(row) + " |" for row in validation_rows(val)]
    out += ["", f"{val['verdict']}."]
    return "\n".join(out)


def table_parts(res: dict) -> str:
    """Which part of the layers carries the gain: the rule applied to each part's sweep."""
    sw = res["sweep"]
    by_part = sw.get("by_part") or {}
    out = [
        "| parts restored | selected interval | validity V | H_norm | intervals qualifying |",
        "|---|---|---:|---:|---:|",
    ]
    for part, b in by_part.items():
        sel, n = b.get("selected"), len(b.get("intervals") or [])
        eligible = f"{b['selection']['eligible_intervals']} of {n}"
        if sel:
            out.append(
                f"| {part} | `{sel['interval']}` | {_f(sel['V'])} | {_f(sel['H_norm'])} | {eligible} |"
            )
        else:
            out.append(f"| {part} | none | – | – | {eligible} |")
    wc = sw.get("weight_change")
    if wc and wc.get("spearman") is not None:
        out.append("")
        out.append(
            f"Spearman rank correlation between how far post-training moved a layer's weights and "
            f"the H_norm gain of restoring that layer alone: {wc['spearman']:.2f} over "
            f"{len(wc['layers'])} layers."
        )
    return "\n".join(out)


def table_compare(res: dict) -> str:
    keys = (
        "finished_rate",
        "valid_rate",
        "accuracy",
        "format_validity",
        "distinct_2",
        "self_bleu",
        "embedding_diversity",
        "vendi",
        "distinct_answers",
        "distinct_valid_answers",
    )
    out = []
    for task, cr in (res.get("compare") or {}).items():
        present = [k for k in keys if any(k in r["mean"] for r in cr["runs"].values())]
        out.append(f"**{task}** ({len(cr['prompt_ids'])} prompts × {cr['n']} samples)")
        out.append("")
        out.append("| run | " + " | ".join(present) + " |")
        out.append("|---|" + "---:|" * len(present))
        for name, r in cr["runs"].items():
            cells = [_f(r["mean"][k]) if k in r["mean"] else "–" for k in present]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def table_prune(res: dict) -> str:
    out = []
    for pr in (res.get("pruning") or {}).values():
        out.append(
            f"removed `{pr['removed']}` ({pr['calibration']['tokens']:,} calibration tokens, {pr['heldout']['tokens']:,} held-out tokens):"
        )
        out.append("")
        out.append("| recovery | PPL | parameters |")
        out.append("|---|---:|---:|")
        out += [f"| {r['method']} | {r['ppl']:.2f} | {r['params']:,} |" for r in pr["rows"]]
        out.append("")
    return "\n".join(out).rstrip()


def table_prune_summary(res: dict) -> str:
    """One row per removal: the perplexity after each recovery method, dense alongside."""
    prs = list((res.get("pruning") or {}).values())
    if not prs:
        return ""
    methods = [r["method"] for r in prs[0]["rows"] if r["method"] != "dense"]
    dense = next(r["ppl"] for r in prs[0]["rows"] if r["method"] == "dense")
    out = [f"| removal (dense PPL {dense:.2f}) | " + " | ".join(methods) + " |"]
    out.append("|---|" + "---:|" * len(methods))
    for pr in prs:
        ppl = {r["method"]: r["ppl"] for r in pr["rows"]}
        best = min(ppl[m] for m in methods)
        cells = [f"**{ppl[m]:.2f}**" if ppl[m] == best else f"{ppl[m]:.2f}" for m in methods]
        n = sum(b - a for a, b in (map(int, g.split(":")) for g in pr["removed"].split(",")))
        out.append(
            f"| {n} layers, {pr['metric']} → `{pr['removed']}` | " + " | ".join(cells) + " |"
        )
    return "\n".join(out)


def table_timing(res: dict) -> str:
    t = res["timing_s"]
    out = ["| step | seconds |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in t.items()]
    out.append(f"| **total** | {sum(t.values()):.1f} |")
    return "\n".join(out)


def table_crc(res: dict) -> str:
    """CRC of the two models of the pair, before any surgery (V_end strict and with closers
    where the run measured them)."""
    cats = sorted({c for r in res["crc"].values() for c in r.get("by_category", {})})
    ends = any("V_end" in r["mean"] for r in res["crc"].values())
    out = ["| model (`layergraft crc`) | validity V | H (nats) | H_norm |"]
    out[0] += " V_end strict | V_end closers |" if ends else ""
    out[0] += "".join(f" V {c} | H_norm {c} |" for c in cats)
    out.append("|---|---:|---:|---:|" + "---:|---:|" * (len(cats) + ends))
    for n, r in res["crc"].items():
        m, by = r["mean"], r.get("by_category", {})
        row = f"| {n} | {_f(m['V'])} | {_f(m['H'])} | {_f(m['H_norm'])} |"
        if ends:
            row += f" {_v_end(m)} | {_v_end(r.get('closers') or {})} |"
        row += "".join(f" {_f(by[c]['V'])} | {_f(by[c]['H_norm'])} |" for c in cats)
        out.append(row)
    return "\n".join(out)


def table_candidates(res: dict) -> str:
    """The models put to the generation tasks, with their CRC scores and why each is there:
    the picks of experiments/gemma3/pipeline.py."""
    out = [
        "| model | hybrid | validity V | V_end | H_norm | why |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, c in res["picks"].items():
        why = c["why"] + (f" (the same hybrid as `{c['same_as']}`)" if "same_as" in c else "")
        out.append(
            f"| {name} | `{c['label']}` | {_f(c['V'])} | {_v_end(c)} | {_f(c['H_norm'])} | {why} |"
        )
    return "\n".join(out)


def table_verdicts(res: dict) -> str:
    """Issue 19's two questions answered from the numbers: which pick keeps the format on every
    task while lifting QA distinct valid answers to 1.5x the post model's; how well V_end
    ranks the validated candidates' finished_rate."""
    v = res["verdicts"]
    out = [
        "| model | keeps the format (finished_rate ≥ 0.9 × post, every task) | QA distinct valid answers / post | both |",
        "|---|---|---:|---|",
    ]
    for name, r in v["per_pick"].items():
        lift = (
            "–"
            if r["qa_distinct_valid_vs_post"] is None
            else f"{r['qa_distinct_valid_vs_post']:.2f}×"
        )
        out.append(
            f"| {name} | {'yes' if r['keeps_format'] else 'no'} | {lift} | {'**yes**' if r['both'] else 'no'} |"
        )
    rho = v["spearman_v_end_finished_rate"]
    out += [
        "",
        f"Spearman rank correlation of V_end with finished_rate over the {v['candidates_for_rho']} "
        f"validated candidates: {'–' if rho is None else f'{rho:+.2f}'}.",
    ]
    return "\n".join(out)


def table_steps(res: dict) -> str:
    """Each command of the experiment in its own process: wall time and peak resident memory."""
    out = ["| step | wall (s) | peak RSS (MiB) |", "|---|---:|---:|"]
    out += [
        f"| `{k}` | {v['wall_s']:.0f} | {v['peak_rss_mib']:,.0f} |" for k, v in res["steps"].items()
    ]
    total = sum(v["wall_s"] for v in res["steps"].values())
    out.append(f"| **total** | {total:.0f} | |")
    return "\n".join(out)


#: how each selection is named in the tables of issue 21
SELECTION_NAMES = {
    "angular": "angular distance",
    "bi": "block influence",
    "residual": "residual (÷ ‖Δ‖²)",
    "residual-greedy": "residual (÷ ‖Δ‖²), greedy, sequential fit",
    "residual-token": "residual per token",
    "residual-token-greedy": "residual per token, greedy, sequential fit",
}


def table_selection(res: dict) -> str:
    """One row per selection and removal: the layers chosen, the perplexity after ghost repair
    and after plain removal, the ghost fit's residual; the lowest ghost PPL of a removal in bold."""
    out = [
        f"| removal (dense PPL {res['rows'][0]['ppl_dense']:.2f}) | selection | layers removed | PPL ghost | PPL none | residual |",
        "|---|---|---|---:|---:|---:|",
    ]
    for n in sorted({r["n"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["n"] == n]
        best = min(r["ppl_ghost"] for r in rows)
        for r in rows:
            ghost = f"{r['ppl_ghost']:.2f}"
            ghost = f"**{ghost}**" if r["ppl_ghost"] == best else ghost
            out.append(
                f"| {n} layers | {SELECTION_NAMES[r.get('label', r['metric'])]} | `{r['removed']}` | "
                f"{ghost} | {r['ppl_none']:.2f} | {r['residual']:.3f} |"
            )
    return "\n".join(out)


#: the scores of benchmarks/residual_oracle.py, as the README names them
ORACLE_SCORES = {
    "angular": "angular distance",
    "bi": "block influence",
    "residual": "residual (÷ ‖Δ‖²)",
    "token_rel": "residual per token",
}


def table_oracle(res: dict) -> str:
    """Every block removed and ghost-repaired in turn: how each score ranks the blocks against
    the perplexity after repair, and the block it would pick."""
    rows = res["rows"]
    ppl = {r["block"]: r["ppl_ghost"] for r in rows}
    best = min(ppl, key=ppl.get)
    out = [
        f"| score ({len(rows)} blocks of {res['n']}) | Spearman vs PPL after ghost | block it picks | its PPL after ghost |",
        "|---|---:|---|---:|",
    ]
    for k, name in ORACLE_SCORES.items():
        pick = min(rows, key=lambda r, k=k: r[k])["block"]
        out.append(
            f"| {name} | {res['spearman_vs_ghost_ppl'][k]:+.2f} | `{pick}` | {ppl[pick]:.2f} |"
        )
    out.append(f"| *(the best block, by trying all)* | | `{best}` | {ppl[best]:.2f} |")
    return "\n".join(out)


def table_oracle_blocks(res: dict) -> str:
    """The oracle block by block: PPL after ghost and none, every score, the share of the
    block's change ‖Δ‖² on position 0 of the calibration rows."""
    out = [
        f"| block (dense PPL {res['dense_ppl']:.2f}) | PPL ghost | PPL none | angular | bi | residual (÷ ‖Δ‖²) | residual per token | ‖Δ‖² on position 0 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        out.append(
            f"| `{r['block']}` | {r['ppl_ghost']:.2f} | {r['ppl_none']:.2f} | {r['angular']:.4f} | {r['bi']:.4f} "
            f"| {r['residual']:.4f} | {r['token_rel']:.4f} | {r['pos0_share_of_delta']:.3f} |"
        )
    return "\n".join(out)


#: how each selection of benchmarks/loss_selection.py is named (issue 35)
LOSS_NAMES = {
    "bi": "block influence",
    "angular": "angular distance",
    "residual": "residual (÷ ‖Δ‖²)",
    "loss": "loss after repair",
    "loss-holdout": "loss after repair, ghost fitted on the other rows (holdout)",
    "loss-greedy": "loss after repair, greedy, sequential fit",
}


def table_loss_selection(res: dict) -> str:
    """One row per selection and removal: the layers chosen, the held-out PPL after ghost repair
    (the lowest of a removal in bold), the time the selection took, and where an oracle of that
    removal exists, the pick's rank among every contiguous block (1 + blocks with lower PPL)."""
    blocks = {n: len(o["ppl_ghost"]) for n, o in res.get("oracle", {}).items()}
    out = [
        f"| removal (dense PPL {res['ppl_dense']:.2f}) | selection | layers removed | PPL after ghost | selection time | rank among the blocks |",
        "|---|---|---|---:|---:|---:|",
    ]
    for n in sorted({r["n"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["n"] == n]
        best = min(r["ppl_ghost"] for r in rows)
        for r in rows:
            ppl = f"{r['ppl_ghost']:.2f}"
            rank = f"{r['oracle_rank']} of {blocks[str(n)]}" if "oracle_rank" in r else "–"
            name = LOSS_NAMES[r["label"]]
            if (
                r.get("heldin_rows", res["settings"]["heldin_rows"])
                != res["settings"]["heldin_rows"]
            ):
                name += f", {r['heldin_rows']} held-in rows"
            out.append(
                f"| {n} layers | {name} | `{r['removed']}` | "
                f"{f'**{ppl}**' if r['ppl_ghost'] == best else ppl} | {r['seconds']:.0f} s | {rank} |"
            )
    return "\n".join(out)


def table_loss_oracle(res: dict, n: str = "4") -> str:
    """The oracle: every contiguous block removed and ghost-repaired, by held-out PPL, beside
    the score each selection gives it; a closing row with each score's Spearman correlation."""
    orc = res["oracle"][n]
    ppl = orc["ppl_ghost"]
    score = {m: orc["scores"][m] for m in ("angular", "bi")}
    for label in ("loss", "loss-holdout", "residual"):
        row = next((r for r in res["rows"] if str(r["n"]) == n and r["label"] == label), None)
        if row is not None:
            score[label] = row["scores"]
    names = {"loss": "loss after repair (held-in)", "loss-holdout": "loss after repair (holdout)",
             "angular": "angular", "bi": "bi", "residual": "residual"}  # fmt: skip
    cols = [m for m in names if m in score]
    out = [
        f"| block of {n} (dense PPL {orc['dense_ppl']:.2f}) | PPL after ghost | rank | "
        + " | ".join(names[m] for m in cols) + " |",
        "|---|---:|---:|" + "---:|" * len(cols),
    ]  # fmt: skip
    for k, b in enumerate(sorted(ppl, key=ppl.get)):
        out.append(f"| `{b}` | {ppl[b]:.2f} | {k + 1} | " + " | ".join(f"{score[m][b]:.4f}" for m in cols) + " |")  # fmt: skip
    corr = orc["spearman_vs_ghost_ppl"]
    out.append("| *Spearman vs PPL after ghost* | | | " + " | ".join(f"{corr[m]:+.2f}" for m in cols) + " |")  # fmt: skip
    return "\n".join(out)


def table_gen_check(res: dict) -> str:
    """The generation check beside perplexity: one row per model of ``prune --compare``."""
    gc = res["gen_check"]
    out = [
        "| model | PPL | finished_rate | valid_rate | empty replies | most frequent reply |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in gc["rows"]:
        name = "dense" if r["method"] == "dense" else f"`{gc['removed']}` removed, {r['method']}"
        texts = [x["text"].strip() for x in r["replies"]]
        empty = sum(not t for t in texts) / len(texts)
        top = max(set(texts), key=lambda t: (texts.count(t), t))
        shown = (top[:60] + "…" if len(top) > 60 else top).replace("|", "\\|") or "(empty)"
        out.append(
            f"| {name} | {r['ppl']:.2f} | {r['finished_rate']:.3f} | {r['valid_rate']:.3f} "
            f"| {empty:.3f} | {texts.count(top)}× “{shown}” |"
        )
    return "\n".join(out)


#: how the V_end table names the measured models
VEND_NAMES = {
    "toy": "toy post (bundled)",
    "smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
    "gemma3": "Gemma-3-270M post (planted pair)",
}


def table_v_end(res: dict) -> str:
    """V and V_end under both definitions per model, and what follows the answer character."""
    out = [
        "| model | end markers | V | V_end strict | V_end closers | V_end / V (closers) | most likely after the character |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for key, m in res["models"].items():
        follow = ", ".join(
            f"{t['token']} {t['share']:.2f}"
            for t in m["after_character"]["next_tokens"][:4]
            if t["share"] >= 0.005  # what rounds to 0.00 says nothing
        ).replace("|", "\\|")
        ends = " ".join(f"`{t}`" for t in m["end_markers"]["tokens"]).replace("|", "\\|")
        out.append(
            f"| {VEND_NAMES.get(key, key)} | {ends} | {_f(m['strict']['V'])} | "
            f"{_f(m['strict']['V_end'])} | {_f(m['closers']['V_end'])} | "
            f"{_f(m['V_end_given_V']['closers'])} | {follow} |"
        )
    return "\n".join(out)


def table_caveats(res: dict) -> str:
    """What the sweep says about trusting its own CRC selection (``caveats`` of results.json)."""
    cav = res["sweep"].get("caveats") or []
    return "\n".join(f"- {c}" for c in cav) if cav else "(the sweep raised no caveat)"


def table_stages(m: dict) -> str:
    """Base, SFT-only and SFT + DPO side by side (``experiments/gemma3/measure.py``: exact CRC,
    then creative and QA samples), and the collapse test fixed before training (TRIALS.md):
    against SFT-only, CRC H_norm down by >= 0.05 or QA distinct valid answers down by >= 20%."""
    cols = [("crc", "V"), ("crc", "V_end"), ("crc", "H_norm"), ("creative", "distinct_2"),
            ("creative", "vendi"), ("creative", "finished_rate"), ("qa", "vendi"),
            ("qa", "distinct_valid_answers"),
            ("qa", "valid_rate"), ("qa", "finished_rate")]  # fmt: skip
    out = ["| stage | " + " | ".join(f"{t} {k}" for t, k in cols) + " |"]
    out.append("|---|" + "---:|" * len(cols))
    for name, r in m.items():
        cells = [
            "–"
            if r.get(t, {}).get(k) is None
            else (f"{r[t][k]:.1e}" if k == "V_end" else _f(r[t][k]))
            for t, k in cols
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    if "sft" in m and "dpo" in m:
        dh = m["dpo"]["crc"]["H_norm"] - m["sft"]["crc"]["H_norm"]
        qa = m["dpo"]["qa"]["distinct_valid_answers"] / max(
            m["sft"]["qa"]["distinct_valid_answers"], 1e-12
        )
        hit = dh <= -0.05 or qa <= 0.8
        out += [
            "",
            f"DPO against SFT-only: CRC H_norm {dh:+.3f} (collapse at ≤ −0.050), QA distinct "
            f"valid answers ×{qa:.2f} (collapse at ≤ ×0.80): "
            + (
                "**collapse by the test fixed in advance**."
                if hit
                else "**no collapse by the test fixed in advance**."
            ),
        ]
    return "\n".join(out)


#: the pairs of the section "On real pre-trained weights", in the order the README tells them
PAIRS = {"planted": GEMMA / "results.json", "natural": NATURAL / "results.json"}
#: what each pick of pipeline.py is called in the side-by-side table
PICK_NAMES = {
    "slr_paper": "paper rule, intervals",
    "paper_best": "paper rule, every family",
    "format_best": "format rule, every family",
    "validated": "validation by generation",
}
TASKS = ("creative", "qa", "reasoning")


def _pair_row(res: dict, pair: str, pick: str, hybrid: str, crc: dict, run: str) -> str:
    """One row of :func:`table_pairs`: a model's CRC scores and its generation in ``res``."""
    m = {t: res["compare"][t]["runs"][run]["mean"] for t in TASKS}
    fin = " / ".join(_f(m[t]["finished_rate"], 2) for t in TASKS)
    return (
        f"| {pair} | {pick} | {hybrid} | {_f(crc['H_norm'])} | {_small(crc['V_end'])} | {fin} | "
        f"{_f(m['creative']['vendi'], 2)} | {_f(m['qa']['distinct_valid_answers'], 2)} |"
    )


def table_pairs(pairs: dict) -> str:
    """Both Gemma pairs side by side: which hybrid each rule and the validation pick, its CRC
    scores, and what it costs in format (finished_rate per task) and gains in diversity
    (creative Vendi, QA distinct valid answers), the post model's row first."""
    out = [
        "| pair | pick | hybrid | CRC H_norm | CRC V_end | finished creative / QA / reasoning | creative Vendi | QA distinct valid answers |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for pair, res in pairs.items():
        post = res["sweep"]["references"]["post"]
        out.append(_pair_row(res, pair, "post model", "–", post, "post"))
        for key, pick in PICK_NAMES.items():
            c = res["picks"].get(key)
            if c is None:  # validation chose nothing
                out.append(f"| {pair} | {pick} | none passed | – | – | – | – | – |")
            else:
                out.append(_pair_row(res, pair, pick, f"`{c['label']}`", c, c.get("same_as", key)))
    return "\n".join(out)


def _top_reply(rows: list[dict], method: str) -> tuple[int, int, str]:
    """How often a pruned model's most frequent generation-check reply came, of how many."""
    r = next(r for r in rows if r["method"] == method)
    texts = [x["text"].strip() for x in r["replies"]]
    top = max(set(texts), key=lambda t: (texts.count(t), t))
    return texts.count(top), len(texts), top


def _demo_headline(demo: dict, link) -> str:
    """The toy pair's row, from the job's own words (``selection``): the written hybrid against
    the post model, the paper rule's pick beside it; each effect said as measured."""
    cmp, sel = demo["compare"], demo["selection"]
    mean = {t: {k: v["mean"] for k, v in cmp[t]["runs"].items()} for t in cmp}
    w, paper = sel["written"], sel["picks"]["paper"]
    run_w, run_p = sel["compared"].get("written"), sel["compared"].get("paper")
    if w is None:
        return (f"| toy pair (bundled, 8 layers) | SLR | no hybrid kept the chat format, none "
                f"written | [toy pair]({link('demo/README.md')}) |")  # fmt: skip

    def arrow(task: str, key: str, run: str, nd: int = 3) -> str:
        return f"{_f(mean[task]['post'][key], nd)} → {_f(mean[task][run][key], nd)}"

    post_fmt = mean["reasoning"]["post"]["format_validity"]
    kept = mean["reasoning"][run_w]["format_validity"] >= 0.9 * post_fmt
    cells = [
        f"creative Vendi {arrow('creative', 'vendi', run_w, 2)}",
        f"reasoning format {'kept' if kept else 'lost'} ({arrow('reasoning', 'format_validity', run_w)})",
    ]
    if paper and run_p and paper["label"] != w["label"]:
        broke = mean["reasoning"][run_p]["format_validity"] < 0.9 * post_fmt
        cells.append(
            f"the SLR paper's rule picks `{paper['label']}`"
            + (", which breaks that format" if broke else "")
            + f" (→ {_f(mean['reasoning'][run_p]['format_validity'])})"
        )
    qa_post = mean["qa"]["post"]["distinct_valid_answers"]
    qa_w = mean["qa"][run_w]["distinct_valid_answers"]
    change = "no gain in" if qa_w == qa_post else "fewer" if qa_w < qa_post else "more"
    cells.append(
        f"{change} QA distinct valid answers ({arrow('qa', 'distinct_valid_answers', run_w, 2)})"
    )
    return (
        f"| toy pair (bundled, 8 layers) | SLR, the {w['pick']} pick `{w['label']}` | "
        + "; ".join(cells)
        + f" | [toy pair]({link('demo/README.md')}) |"
    )


def table_headline(src: dict, link) -> str:
    """The README's and the home page's summary: one row per pair, what was done, what it gave
    (the effect where there is one, and plainly where there is none), and the page with the
    full tables. ``link(page)`` is the page's address relative to the page being rendered."""
    demo, planted, natural, prune = src["demo"], src["planted"], src["natural"], src["prune"]
    out = ["| pair | what was done | result | details |", "|---|---|---|---|"]

    out.append(_demo_headline(demo, link))

    def fin(res: dict, run: str) -> str:
        return " / ".join(
            _f(res["compare"][t]["runs"][run]["mean"]["finished_rate"], 2) for t in TASKS
        )

    def qa(res: dict, run: str) -> str:
        return _f(res["compare"]["qa"]["runs"][run]["mean"]["distinct_valid_answers"], 2)

    val, sp = planted["picks"]["validated"], planted["picks"]["slr_paper"]
    out.append(
        f"| Gemma-3-270M, collapse planted by SFT | SLR, `{val['label']}` (validated by generation) "
        f"| QA distinct valid answers {qa(planted, 'post')} → {qa(planted, 'validated')}; replies "
        f"finished (creative / QA / reasoning) {fin(planted, 'validated')} against the post "
        f"model's {fin(planted, 'post')}; the SLR paper's rule picks `{sp['label']}`, which "
        f"finishes {fin(planted, 'slr_paper')} | [planted pair]({link('gemma3/README.md')}) |"
    )
    nval = natural["sweep"]["validation"]
    passed = sum(1 for c in nval["candidates"] if c.get("passes"))
    out.append(
        f"| Gemma-3-270M, broad SFT then DPO | SLR | **no effect**: {passed} of "
        f"{len(nval['candidates'])} candidates kept the chat format, so no hybrid is written; "
        f"this post model answers the CRC proxy in sentences (V = "
        f"{_f(natural['sweep']['references']['post']['V'])}), so the proxy cannot rank layers "
        f"| [natural pair]({link('gemma3-natural/README.md')}) |"
    )
    sm = next(r for r in prune["smollm2"]["rows"] if r["label"] == "angular" and r["n"] == 4)
    k, n, top = _top_reply(prune["smollm2"]["gen_check"]["rows"], "ghost")
    out.append(
        f"| SmolLM2-135M-Instruct (30 layers) | pruning 4 layers (`{sm['removed']}`), ghost "
        f"repair | perplexity {sm['ppl_dense']:.2f} → {sm['ppl_ghost']:.2f} ({sm['ppl_none']:.2f} "
        f"without repair), but the pruned model answers {k} of {n} questions with “{top}” "
        f"| [pruning]({link('prune/README.md')}) |"
    )
    g4 = planted["pruning"]["angular_remove_4"]
    ppl = {r["method"]: r["ppl"] for r in g4["rows"]}
    out.append(
        f"| Gemma-3-270M base (18 layers) | pruning the last 4 layers (`{g4['removed']}`), ghost "
        f"repair | perplexity {ppl['dense']:.2f} → {ppl['ghost']:.2f} ({ppl['none']:.2f} without "
        f"repair) | [planted pair]({link('gemma3/README.md')}) |"
    )
    return "\n".join(out)


table_headline.page_relative = True  # takes a link function


def _load(path: Path | dict[str, Path]) -> dict:
    """A source's results: one file, or one per name for a table that reads several runs."""
    if isinstance(path, dict):
        return {k: json.loads(p.read_text()) for k, p in path.items()}
    return json.loads(path.read_text())


#: marker prefix -> (committed results file, tables rendered from it)
SOURCES = {
    "demo": (
        DEMO / "results.json",
        {
            "sweep": table_sweep,
            "selection": table_picks,
            "validation": table_validation,
            "parts": table_parts,
            "compare": table_compare,
            "prune": table_prune,
            "timing": table_timing,
        },
    ),
    "gemma3": (
        GEMMA / "results.json",
        {
            "crc": table_crc,
            "sweep": table_sweep,
            "selection": table_picks,
            "validation": table_validation,
            "parts": table_parts,
            "candidates": table_candidates,
            "verdicts": table_verdicts,
            "compare": table_compare,
            "prune": table_prune,
            "prune_summary": table_prune_summary,
            "steps": table_steps,
        },
    ),
    "natural": (
        NATURAL / "results.json",
        {
            "crc": table_crc,
            "sweep": table_sweep,
            "caveats": table_caveats,
            "selection": table_picks,
            "validation": table_validation,
            "parts": table_parts,
            "candidates": table_candidates,
            "verdicts": table_verdicts,
            "compare": table_compare,
            "steps": table_steps,
        },
    ),
    "natural_stages": (NATURAL / "measure.json", {"stages": table_stages}),
    "pairs": (PAIRS, {"picks": table_pairs}),
    "v_end": (VEND / "results.json", {"models": table_v_end}),
    "headline": (
        {
            "demo": DEMO / "results.json",
            "planted": GEMMA / "results.json",
            "natural": NATURAL / "results.json",
            "prune": PRUNE / "results.json",
        },
        {"results": table_headline},
    ),
    "loss": (  # benchmarks/loss_selection.py writes it (issue 35)
        PRUNE / "loss_selection.json",
        {
            "selection_smollm2": lambda res: table_loss_selection(res["smollm2"]),
            "selection_gemma3": lambda res: table_loss_selection(res["gemma3"]),
            "oracle_smollm2": lambda res: table_loss_oracle(res["smollm2"]),
        },
    ),
    "prune": (  # benchmarks/residual_selection.py writes it (issue 21)
        PRUNE / "results.json",
        {
            "selection_smollm2": lambda res: table_selection(res["smollm2"]),
            "gen_check_smollm2": lambda res: table_gen_check(res["smollm2"]),
            "selection_gemma3": lambda res: table_selection(res["gemma3"]),
            "oracle_smollm2": lambda res: table_oracle(res["oracle_smollm2"]),
            "oracle_blocks_smollm2": lambda res: table_oracle_blocks(res["oracle_smollm2"]),
        },
    ),
}


def _linker(page: Path | None):
    """Addresses of site pages (``demo/README.md``) relative to ``page``."""
    here = (page or README).parent

    def link(target: str) -> str:
        return Path(os.path.relpath(DOCS / target, here)).as_posix()

    return link


def render(readme: str, page: Path | None = None) -> str:
    """Rewrite every marked table of a page from its results file (a missing file is an error);
    ``page`` (default the README) is where the page lives, for the links some tables hold."""
    for prefix, (path, tables) in SOURCES.items():
        if f"<!-- {prefix}:" not in readme:
            continue
        unknown = set(re.findall(rf"<!-- {prefix}:(\w+) -->", readme)) - set(tables)
        if unknown:
            raise SystemExit(
                f"no table named {prefix}:{', '.join(sorted(unknown))}; known: {', '.join(tables)}"
            )
        res = _load(path)
        for name, fn in tables.items():
            pat = re.compile(rf"(<!-- {prefix}:{name} -->)(.*?)(<!-- /{prefix}:{name} -->)", re.S)
            if not pat.search(readme):
                continue  # a page shows the tables it wants
            if getattr(fn, "page_relative", False):
                fn = (lambda f, lk: lambda r: f(r, lk))(fn, _linker(page))
            readme = pat.sub(
                lambda m, fn=fn, res=res: m.group(1) + "\n" + fn(res) + "\n" + m.group(3), readme
            )
    return readme


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument(
        "--from",
        dest="src",
        type=Path,
        help="a demo output dir to copy results.json and plots from",
    )
    args = ap.parse_args()
    if args.src:
        DEMO.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.src / "results.json", DEMO / "results.json")
        for name in ("heatmaps.png", "pareto.png"):
            shutil.copyfile(args.src / name, DEMO / name)
        # the demo job writes its sweep into sweep/out/ (earlier demos: sweep/)
        diff = next(
            p
            for p in (args.src / "sweep" / "out", args.src / "sweep")
            if (p / "diff.png").is_file()
        )
        shutil.copyfile(diff / "diff.png", DEMO / "diff.png")
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text, page)
        if new != text:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(
            f"tables in {', '.join(map(str, stale))} differ from their results files: "
            "run python tools/render_results.py",
            file=sys.stderr,
        )
        return 1
    if not args.check:
        print(f"rendered from the results files: {', '.join(map(str, stale)) or 'nothing changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
