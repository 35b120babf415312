"""The sweep's outputs: results.json, results.csv, heatmaps, Pareto plot, summary table.

Every function here takes the JSON-ready results dict a sweep returned and draws from it, so
a plot can always be re-rendered from ``results.json`` alone (never the other way round).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from layergraft.checkpoint.atomic import write_json_atomic, write_text_atomic
from layergraft.report.diff import plot_diff
from layergraft.report.sweep_plots import plot_pareto, plot_ppl_heatmap, plot_sweep_heatmaps


def write_sweep_outputs(results: dict[str, Any], out: Path) -> Path:
    """Into the sweep directory ``out``: results.json, results.csv, the heatmaps (CRC:
    validity, format and diversity; PPL: perplexity), the Pareto plot and summary.md (CRC),
    each file replaced in one rename, so a reader never sees half of one."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    if results["proxy"] == "ppl":
        lines = ["interval,start,end,ppl,nll"] + [
            f"{r['interval']},{r['start']},{r['end']},{r['ppl']:.6f},{r['nll']:.6f}"
            for r in results["intervals"]
        ]
        write_text_atomic(out / "results.csv", "\n".join(lines) + "\n")
        if results["intervals"]:
            _atomic_plot(plot_ppl_heatmap, results, out / "heatmap.png")
        return out
    _atomic_plot(write_sweep_csv, results, out / "results.csv")
    if results["intervals"]:
        _atomic_plot(plot_sweep_heatmaps, results, out / "heatmaps.png")
    for part, sub in _other_parts(results):
        if sub["intervals"]:
            view = {**results, **sub, "restored_parts": part}
            _atomic_plot(plot_sweep_heatmaps, view, out / f"heatmaps_{part}.png")
    _atomic_plot(plot_pareto, results, out / "pareto.png")
    if (out / "diff.json").is_file():  # weight change per layer and part, beside the heatmaps
        change = json.loads((out / "diff.json").read_text())
        _atomic_plot(lambda _r, p: plot_diff(change, p), results, out / "diff.png")
    write_text_atomic(out / "summary.md", sweep_table(results) + "\n")
    return out


def _other_parts(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The per-part results besides the top-level ones (whole layers, or the first part)."""
    by_part = results.get("by_part") or {}
    main = "all" if "all" in by_part else next(iter(by_part), None)
    return [(p, sub) for p, sub in by_part.items() if p != main]


def _atomic_plot(draw: Any, results: dict[str, Any], path: Path) -> None:
    """``draw(results, tmp)`` then one rename onto ``path``."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        draw(results, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _num(v: Any) -> str:
    return "" if v is None else f"{v:.6f}"


def write_sweep_csv(results: dict[str, Any], path: Path) -> Path:
    """One line per reference and per hybrid of every family, with V, H, H_norm and V_end."""
    keys = ("V", "H", "H_norm", "V_end")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "interval", "start", "end", "alpha", "parts", *keys])
        for name in ("post", "base"):
            ref = results["references"][name]
            w.writerow([name, "", "", "", "", ""] + [_num(ref.get(k)) for k in keys])
        rows = list(results["intervals"])
        for _, sub in _other_parts(results):
            rows += sub["intervals"]
        rows += (results.get("interval_soups") or {}).get("rows", [])
        seen = set()
        for r in rows:
            key = (r["interval"], r.get("alpha", 1.0), r.get("parts", "all"))
            if key in seen:
                continue
            seen.add(key)
            kind = "interval" if r.get("alpha", 1.0) == 1.0 else "interval_soup"
            if r.get("parts", "all") != "all":
                kind += f":{r['parts']}"
            w.writerow(
                [kind, r["interval"], r["start"], r["end"], f"{r.get('alpha', 1.0):g}",
                 r.get("parts", "all")] + [_num(r.get(k)) for k in keys]
            )  # fmt: skip
        for r in (results.get("soup") or {}).get("alphas", []):
            w.writerow(
                ["soup", "", "", "", f"{r['alpha']:g}", "all"] + [_num(r.get(k)) for k in keys]
            )
    return path


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def sweep_table(results: dict[str, Any], top: int = 5) -> str:
    """A short Markdown table: references, each rule's selected interval and best hybrid
    over every family, the best soup, then the most diverse eligible intervals."""
    dkey = results["rule"]["diversity_key"]
    rows: list[tuple[str, dict[str, Any]]] = [
        ("post", results["references"]["post"]),
        ("base", results["references"]["base"]),
    ]
    named: set[str] = set()
    for name, sel in (results.get("selections") or {}).items():
        hit = next((r for r in results["intervals"] if r["interval"] == sel["interval"]), None)
        if hit:
            rows.append((f"SLR {hit['interval']} ({name} rule)", hit))
            named.add(hit["interval"])
    if not results.get("selections") and results.get("selected"):
        rows.append((f"SLR {results['selected']['interval']} (selected)", results["selected"]))
        named.add(results["selected"]["interval"])
    for name, best in (results.get("best") or {}).items():
        if best and best["label"] not in named:
            rows.append((f"{best['label']} ({best['family']}, {name} rule, best of all)", best))
            named.add(best["label"])
    soup = results.get("soup")
    if soup and soup.get("selected"):
        rows.append((f"soup α={soup['selected']['alpha']:g} (selected)", soup["selected"]))
    thr = results["selection"]
    eligible = [
        r
        for r in results["intervals"]
        if r["V"] >= thr["validity_threshold"]
        and (thr.get("end_threshold") is None or (r.get("V_end") or 0) >= thr["end_threshold"])
    ]
    eligible.sort(key=lambda r: -r[dkey])
    for r in eligible[:top]:
        if r["interval"] not in named:
            rows.append((f"SLR {r['interval']}", r))
    lines = ["| model | V | H (nats) | H_norm | V_end |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {name} | {r['V']:.3f} | {r['H']:.3f} | {r['H_norm']:.3f} | {_fmt(r.get('V_end'))} |"
        for name, r in rows
    ]
    change = results.get("weight_change") or {}
    if change.get("spearman") is not None:
        lines.append("")
        lines.append(
            f"Weight change vs the gain of restoring that layer alone: Spearman ρ = "
            f"{change['spearman']:.2f} over {sum(r['gain'] is not None for r in change['layers'])} layers "
            "(see diff.png)."
        )
    val = results.get("validation")
    if val:
        lines += ["", validation_table(val)]
    return "\n".join(lines)


def validation_table(val: dict[str, Any]) -> str:
    """The validation by generation as Markdown: the post model, every candidate, the gate."""
    cols = ("finished_rate", "valid_rate", "format_validity", "distinct_valid_answers",
            "embedding_diversity")  # fmt: skip
    head = "| candidate | family | V | V_end | H_norm | " + " | ".join(cols) + " | passes |"
    lines = [head, "|" + "---|" * 2 + "---:|" * (3 + len(cols)) + "---|"]
    post = val["post"]
    lines.append(
        "| post | – | – | – | – | " + " | ".join(_fmt(post.get(c)) for c in cols) + " | – |"
    )
    for c in val["candidates"]:
        mark = "yes" if c["passes"] else "no: " + "; ".join(c["fails"])
        lines.append(
            f"| {c['label']} | {c['family']} | {_fmt(c['V'])} | {_fmt(c.get('V_end'))} | "
            f"{_fmt(c.get('H_norm'))} | "
            + " | ".join(_fmt(c.get(k)) for k in cols)
            + f" | {mark} |"
        )
    lines += ["", val["verdict"] + "."]
    return "\n".join(lines)
