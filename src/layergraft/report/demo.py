"""Render the demo's ``results.json`` as ``report.md`` and a self-contained ``report.html``.

Why blocks: the two reports must say the same thing. Both are rendered from one list of
blocks (heading, paragraph, table, image) built from the results dict, so no number is typed
twice and the HTML (images embedded as base64) can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
from pathlib import Path
from typing import Any

from layergraft.report.compare import fmt_ci, table_metrics
from layergraft.report.selection import selection_blocks

Block = tuple[Any, ...]


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
            rows.append([f"SLR {row['interval']} ({name} rule)", _f(row["V"]), _f(row["H"]),
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
        f"V ≥ {thr:.3f}) picks the most diverse interval: "
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


#: the widest table the page takes (~900 px of text): wider ones are split or transposed
MAX_COLUMNS = 8


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
    blocks: list[Block] = [
        ("h1", "layergraft demo report"),
        (
            "p",
            "Everything below was measured in this run, on the toy base/post-trained pair that ships with "
            f"layergraft, on CPU{' (quick mode: fewer prompts and samples)' if res['quick'] else ''}. All numbers "
            "are in results.json.",
        ),
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
        blocks.append((
            "p",
            "Each pick was written with the command a user would run (`layergraft restore` for "
            "base layers, `layergraft soup` for blends). The "
            f"{r['checked']} pick was reloaded with plain `AutoModelForCausalLM.from_pretrained`; its "
            "logits differ from the in-memory hybrid the sweep scored by at most "
            f"{r['reload_max_abs_logit_diff']:.2e}. The comparison below generates from each.",
        ))  # fmt: skip
        blocks.append(("table", ["label", "hybrid", "what", "written to"], rows))
    else:
        blocks.append(("p", r.get("note", "nothing selected")))
    blocks += _compare_blocks(res)
    blocks += _prune_blocks(res)
    t = res.get("timing_s", {})
    blocks.append(("h2", "Timing"))
    blocks.append(("table", ["step", "seconds"], [[k, f"{v:.1f}"] for k, v in t.items()]))
    return blocks


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in b[1]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(map(_md_cell, b[1])) + " |")
            out.append("|" + "---|" * len(b[1]))
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b[2]]
            out.append("")
        elif kind == "img":
            out += [f"![{b[2]}]({b[1]})", ""]
    return "\n".join(out)


def _inline_md(text: str) -> str:
    """Escape, then the two inline forms the report uses: **bold** and `code`."""
    s = html.escape(str(text))
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


_NUMBER = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?(%|×)?$")
_WITH_CI = re.compile(r"^([-\d.,]+) (\[[-\d.,]+, [-\d.,]+\])$")
NUM = " class='num'"
_DASH = frozenset({"–", "-", ""})


def _is_number(x: Any) -> bool:
    t = str(x)
    return bool(_NUMBER.match(t) or _WITH_CI.match(t))


def _numeric(cells: list[Any]) -> bool:
    """Mostly numbers (blanks not counted): the column's header and blanks align right."""
    texts = [c for c in cells if str(c) not in _DASH]
    return bool(texts) and 2 * sum(map(_is_number, texts)) > len(texts)


def _words(s: str, *, keep_hyphens: bool = True) -> str:
    """HTML text that may break after an underscore (finished_<wbr>rate) and, with
    ``keep_hyphens``, never at a hyphen inside a word (min-p)."""
    if keep_hyphens:
        s = re.sub(r"(?<=\w)-(?=\w)", "\u2011", s)
    return re.sub(r"_(?=\w)", "_<wbr>", s)


def _html_cell(x: Any, num_column: bool) -> str:
    """A table cell: numbers right-aligned in tabular figures, a mean's 95% interval on a
    second, smaller line, inline Markdown (`code`, **bold**) rendered, long words breakable."""
    text = str(x)
    ci = _WITH_CI.match(text)
    if ci:
        return f"<td{NUM}>{ci[1]}<br><span class='ci'>{ci[2]}</span></td>"
    if _NUMBER.match(text) or (num_column and text in _DASH):
        return f"<td{NUM}>{html.escape(text)}</td>"
    return f"<td>{_words(_inline_md(text))}</td>"


def _html_table(head: list[Any], rows: list[list[Any]]) -> str:
    cols = [i > 0 and _numeric([r[i] for r in rows]) for i in range(len(head))]
    heads = [
        f"<th{NUM if n else ''}>{_words(html.escape(str(h)), keep_hyphens=False)}</th>"
        for h, n in zip(head, cols, strict=True)
    ]
    lines = ["<div class='table'><table>", "<tr>" + "".join(heads) + "</tr>"]
    lines += [
        "<tr>" + "".join(_html_cell(c, n) for c, n in zip(row, cols, strict=True)) + "</tr>"
        for row in rows
    ]
    lines.append("</table></div>")
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:16px;color:#222;
  max-width:960px;margin:2em auto;padding:0 1.2em;line-height:1.5}
h1{font-size:1.8em}h2{font-size:1.4em;margin-top:1.8em;border-bottom:1px solid #ddd}h3{font-size:1.15em}
.table{max-width:100%;overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;table-layout:auto;max-width:100%;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 7px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f6f6f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.num{overflow-wrap:normal;white-space:nowrap}
.ci{color:#666;font-size:12px}
figure{margin:1.2em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:90%}
code{background:#f2f2f2;padding:0 3px;border-radius:3px;font-size:90%;overflow-wrap:normal;white-space:nowrap}
li{margin:.25em 0}
"""


def to_html(blocks: list[Block], root: Path) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "layergraft report")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{_inline_md(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(b[1], b[2]))
        elif kind == "img":
            data = base64.b64encode((root / b[1]).read_bytes()).decode()
            parts.append(
                f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'><figcaption>{html.escape(b[2])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(root: Path, res: dict[str, Any]) -> None:
    blocks = build_blocks(res)
    blocks = [b for b in blocks if b[0] != "img" or (root / b[1]).is_file()]
    (root / "report.md").write_text(to_markdown(blocks))
    (root / "report.html").write_text(to_html(blocks, root))
    for name in ("heatmaps.png", "pareto.png"):
        if (root / "sweep" / name).is_file():
            shutil.copyfile(root / "sweep" / name, root / name)
