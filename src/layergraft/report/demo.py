"""Render a job's ``results.json`` (the demo, ``layergraft slr``) as ``report.md`` and a
self-contained ``report.html``.

Why blocks: the two reports must say the same thing. Both are rendered from one list of
blocks (heading, paragraph, list, table, image; :mod:`layergraft.report.blocks`) built from
the results dict, so no number is typed twice and the HTML (images embedded as base64) can be
mailed or opened anywhere. When the results say what the job selected and wrote
(``selection``), the report opens with that summary (:mod:`layergraft.report.summary`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from layergraft.report.blocks import MAX_COLUMNS, Block, to_html, to_markdown
from layergraft.report.compare import fmt_ci, table_metrics
from layergraft.report.selection import selection_blocks
from layergraft.report.summary import summary_blocks

__all__ = ["MAX_COLUMNS", "build_blocks", "runs_tables", "to_html", "to_markdown", "write_reports"]


def _f(x: Any, nd: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def _sweep_blocks(res: dict[str, Any]) -> list[Block]:
    sw = res["sweep"]
    post, base = sw["references"]["post"], sw["references"]["base"]
    sel = sw.get("selected")
    soup = (sw.get("soup") or {}).get("selected")
    rows = [
        ["post", _f(post["V"]), _f(post["H"]), _f(post["H_norm"]), _f(post.get("V_end"))],
        ["base", _f(base["V"]), _f(base["H"]), _f(base["H_norm"]), _f(base.get("V_end"))],
    ]
    for name, s in (sw.get("selections") or {}).items():
        row = next((r for r in sw["intervals"] if r["interval"] == s["interval"]), None)
        if row:
            says = "paper rule's pick" if name == "paper" else f"{name} rule, intervals only"
            rows.append([f"SLR {row['interval']} ({says})", _f(row["V"]), _f(row["H"]),
                         _f(row["H_norm"]), _f(row.get("V_end"))])  # fmt: skip
    if soup:
        rows.append([f"soup α={soup['alpha']:g} (selected)", _f(soup["V"]), _f(soup["H"]),
                     _f(soup["H_norm"]), _f(soup.get("V_end"))])  # fmt: skip
    thr = sw["selection"]["validity_threshold"]
    n_int = len(sw["intervals"])
    text = (
        f"Every contiguous interval [start, end) of the {sw['num_layers']} decoder layers ({n_int} intervals) was "
        f"restored from the base into the post model in memory and scored on the CRC proxy ({sw['prompts']['n']} "
        f"prompts, exact first-token estimator): validity V is the probability mass on valid characters, H the "
        f"entropy over them (H_norm = H / log|S|). The post model puts V = {post['V']:.3f} on valid characters "
        f"with H_norm = {post['H_norm']:.3f} (collapsed); the base model, which never saw the chat format, has "
        f"V = {base['V']:.3f} and H_norm = {base['H_norm']:.3f}. The active rule ({sw['rule']['text']}; "
        f"V ≥ {thr:.3f}) picks, among the restored intervals alone, the most diverse: "
    )
    if sel:
        text += f"**{sel['interval']}** with V = {sel['V']:.3f}, H_norm = {sel['H_norm']:.3f} "
        text += f"({sel['H_norm'] / max(post['H_norm'], 1e-12):.2f}× the post model's diversity)."
    else:
        text += "no interval qualified."
    paper = (sw.get("selections") or {}).get("paper", {}).get("interval")
    if sel and paper and paper != sel["interval"]:
        text += f" The paper's rule, which cannot see the format, would pick {paper}."
    if soup:
        text += f" The best weight soup under the same rule is α = {soup['alpha']:g} with H_norm = {soup['H_norm']:.3f}."
    return [
        ("h2", "2. CRC sweep and selection"),
        ("p", text),
        ("table", ["model", "V", "H (nats)", "H_norm", "V_end"], rows),
        (
            "img",
            "sweep/heatmaps.png",
            "Validity, format (V_end) and diversity of every restored interval; each rule's pick boxed.",
        ),
        (
            "img",
            "sweep/pareto.png",
            "Validity vs diversity of every family: intervals, interval soups, parts, soups.",
        ),
        *selection_blocks(sw),
        *_parts_blocks(sw),
    ]


def _parts_blocks(sw: dict[str, Any]) -> list[Block]:
    """Which part of the selected interval carries the diversity gain (issue 14): the same
    interval with only its attention, MLP or norms restored, and how far post-training moved
    each part (``diff``)."""
    sel, by_part = sw.get("selected"), sw.get("by_part") or {}
    if not sel or not by_part:
        return []
    post = sw["references"]["post"]
    rows = []
    for part in ("attn", "mlp", "norms", "all"):
        row = next((r for r in by_part.get(part, {}).get("intervals", []) if r["interval"] == sel["interval"]), None)  # fmt: skip
        if row is None:
            continue
        gain = row["H_norm"] - post["H_norm"]
        total = sel["H_norm"] - post["H_norm"]
        share = f"{gain / total:.0%}" if total > 1e-12 else "–"
        best = by_part[part].get("selected")
        rows.append([
            "whole layers" if part == "all" else part, _f(row["V"]), _f(row["H_norm"]), _f(gain),
            share, best["interval"] if best else "none",
        ])  # fmt: skip
    change = sw.get("weight_change") or {}
    rho = change.get("spearman")
    text = (
        f"The selected interval {sel['interval']} restored part by part (everything else stays "
        "the post model's): how much of the diversity gain each part carries, and which "
        "interval the same rule selects when only that part is restored."
    )
    if rho is not None:
        text += (
            f" Does the weight change of a layer predict the gain of restoring it? Across the "
            f"layers, Spearman ρ = {rho:.2f} between the relative weight change and the H_norm "
            "gain of restoring that layer alone (diff.png)."
        )
    blocks: list[Block] = [
        ("h3", "Which part carries the gain"),
        ("p", text),
        (
            "table",
            [
                "restored",
                "V",
                "H_norm",
                "H_norm gain",
                "share of the whole-layer gain",
                "selected when only this part is restored",
            ],
            rows,
        ),  # fmt: skip
        (
            "img",
            "sweep/diff.png",
            "How far post-training moved each layer and part (relative Frobenius change).",
        ),  # fmt: skip
    ]
    return blocks


def runs_tables(cr: dict[str, Any], max_runs: int = MAX_COLUMNS - 1) -> list[Block]:
    """A task's comparison as tables with the runs as columns and the metrics as rows (quality
    first, then diversity: :func:`table_metrics`), at most ``max_runs`` runs a table, so that
    no table is wider than the page (13 metric columns did not fit)."""
    metrics = table_metrics(cr)
    names = list(cr["runs"])
    per = -(-len(names) // -(-len(names) // max_runs)) if names else 1  # balanced tables
    out: list[Block] = []
    for i in range(0, len(names), per):
        chunk = names[i : i + per]
        rows = [["decoding"] + [_decoding(cr["runs"][n]) for n in chunk]]
        for m in metrics:
            cells = []
            for n in chunk:
                r = cr["runs"][n]
                cells.append(fmt_ci(r["mean"][m], r["ci95"].get(m)) if m in r["mean"] else "–")
            rows.append([m, *cells])
        out.append(("table", ["metric", *chunk], rows))
    return out


def _decoding(run: dict[str, Any]) -> str:
    st = run.get("settings") or {}
    return f"T={st.get('temperature')}, min-p={st.get('min_p')}"


def _compare_blocks(res: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [("h2", "4. Generation: diversity and quality on tasks")]
    for task, cr in (res.get("compare") or {}).items():
        blocks.append(("h3", f"task: {task}"))
        blocks.append(
            (
                "p",
                f"{len(cr['prompt_ids'])} prompts × {cr['n']} samples per model, chat template of the post model; "
                "means over prompts with 95% bootstrap intervals, one column per model. Higher distinct-n / "
                "embedding diversity / Vendi and lower self-BLEU mean more diverse; the quality rows (first) say "
                "whether the answers are still valid.",
            )
        )
        blocks += runs_tables(cr)
        notes = [f"{name}: {c}" for name, r in cr["runs"].items() for c in r.get("caveats", [])]
        if notes:
            blocks.append(("p", "Read with care — " + "; ".join(notes) + "."))
        for p in cr.get("plots") or []:
            blocks.append(
                ("img", f"compare/{task}/{p}", f"{task}: {Path(p).stem.replace('_', ' ')}")
            )
    return blocks


def _prune_blocks(res: dict[str, Any]) -> list[Block]:
    if not res.get("pruning"):
        return []
    blocks: list[Block] = [("h2", "5. Pruning the toy base model with each recovery method")]
    for pr in (res.get("pruning") or {}).values():
        dense = next(r for r in pr["rows"] if r["method"] == "dense")
        rows = [[r["method"], _f(float(r["ppl"]), 2), f"{r['params']:,}"] for r in pr["rows"]]
        blocks.append(
            (
                "p",
                f"Removed layers **{pr['removed']}** (the most redundant block by angular distance) and repaired "
                f"the gap with each operator, all fitted on the same {pr['calibration']['tokens']:,} calibration "
                f"tokens. Perplexity: {pr['ppl_definition']}, on {pr['heldout']['tokens']:,} tokens of held-out "
                f"text the calibration never saw. Dense model: PPL {_f(float(dense['ppl']), 2)}.",
            )
        )
        blocks.append(("table", ["recovery", "PPL", "parameters"], rows))
    return blocks


def build_blocks(res: dict[str, Any]) -> list[Block]:
    ins = res["inspect"]
    b, p = ins["base"], ins["post"]
    job = res.get("job", "demo")
    quick = " (quick mode: fewer prompts and samples)" if res.get("quick") else ""
    if job == "demo":
        intro = (
            "Everything below was measured in this run, on the toy base/post-trained pair that ships "
            f"with layergraft, on CPU{quick}. All numbers are in results.json."
        )
    else:
        models = res.get("models") or {}
        intro = (
            f"Everything below was measured in this run{quick}: base `{models.get('base')}`, post "
            f"`{models.get('post')}`. All numbers are in results.json."
        )
    blocks: list[Block] = [
        ("h1", f"layergraft {job} report"),
        ("p", intro),
        *summary_blocks(res),  # the first screen, when the job says what it selected and wrote
        ("h2", "1. The models"),
        (
            "table",
            ["", "family", "layers", "hidden", "vocab", "parameters", "chat template"],
            [
                [
                    n,
                    i["family"],
                    i["num_layers"],
                    i["hidden_size"],
                    i["vocab_size"],
                    f"{i['params_total']:,}",
                    "yes" if i["chat_template"] else "no",
                ]
                for n, i in (("base", b), ("post", p))
            ],
        ),
    ]
    blocks += _sweep_blocks(res)
    r = res["restore"]
    blocks.append(("h2", "3. Write the picks to disk and reload"))
    if r.get("picks"):
        rows = [
            [label, f"`{w['hybrid']}`", w["what"], f"same model as {w['same_as']}" if "same_as" in w else w["dir"]]
            for label, w in r["picks"].items()
        ]  # fmt: skip
        text = (
            "Each pick was written with the command a user would run (`layergraft restore` for "
            "base layers, `layergraft soup` for blends)."
        )
        if r.get("checked") and r.get("reload_max_abs_logit_diff") is not None:
            which = "written hybrid" if r["checked"] == "written" else f"{r['checked']} pick"
            text += (
                f" The {which} was reloaded with plain "
                "`AutoModelForCausalLM.from_pretrained`; its logits differ from the in-memory "
                f"hybrid the sweep scored by at most {r['reload_max_abs_logit_diff']:.2e}."
            )
        blocks.append(("p", text + " The comparison below generates from each."))
        blocks.append(("table", ["label", "hybrid", "what", "written to"], rows))
    else:
        blocks.append(("p", r.get("note", "nothing selected")))
    blocks += _compare_blocks(res)
    blocks += _prune_blocks(res)
    t = res.get("timing_s", {})
    blocks.append(("h2", "Timing"))
    blocks.append(("table", ["step", "seconds"], [[k, f"{v:.1f}"] for k, v in t.items()]))
    return blocks


def _locate(root: Path, rel: str) -> str | None:
    """Where a plot named in the blocks lies under ``root``: as named, or in the step's
    ``out/`` folder (a ``layergraft slr`` job writes the sweep into ``sweep/out/``, the
    demo's older runs into ``sweep/``); None when it is in neither."""
    head, _, tail = rel.partition("/")
    for cand in (rel, f"{head}/out/{tail}"):
        if tail and (root / cand).is_file():
            return cand
    return None


def write_reports(root: Path, res: dict[str, Any]) -> None:
    blocks = []
    for b in build_blocks(res):
        if b[0] == "img":
            found = _locate(root, b[1])
            if found is None:
                continue
            b = ("img", found, *b[2:])
        blocks.append(b)
    (root / "report.md").write_text(to_markdown(blocks))
    (root / "report.html").write_text(to_html(blocks, root))
    for name in ("heatmaps.png", "pareto.png"):
        found = _locate(root, f"sweep/{name}")
        if found:
            shutil.copyfile(root / found, root / name)
