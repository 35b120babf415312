"""Keep the numbers of the README (and of docs/gemma3/README.md) equal to measured runs.

Each page holds tables between markers ``<!-- SOURCE:NAME -->`` and ``<!-- /SOURCE:NAME -->``.
This script renders each table from the committed results of a measured run —
``docs/demo/results.json`` (a full ``layergraft demo``) for ``demo:``, ``docs/gemma3/results.json``
(``experiments/gemma3/pipeline.py``) for ``gemma3:`` — and either rewrites the pages or, with
``--check``, fails if any table differs, so no published number can drift from a run.

    python tools/readme_numbers.py --from demo-out   # copy a fresh run's results + plots, rewrite README
    python tools/readme_numbers.py --check           # used by the test suite
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO = ROOT / "docs" / "demo"
GEMMA = ROOT / "docs" / "gemma3"  # experiments/gemma3/pipeline.py writes it
#: the pages whose marked tables are rendered (the experiment's report holds its timing tables)
PAGES = (README, GEMMA / "README.md")


def _f(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}f}"


def table_sweep(res: dict) -> str:
    sw = res["sweep"]
    rows = [("post-trained", sw["references"]["post"]), ("base", sw["references"]["base"])]
    if sw.get("selected"):
        rows.append((f"SLR `{sw['selected']['interval']}` (selected)", sw["selected"]))
    soup = (sw.get("soup") or {}).get("selected")
    if soup:
        rows.append((f"soup α = {soup['alpha']:g} (selected)", soup))
    out = ["| model (CRC, all prompts) | validity V | H (nats) | H_norm |", "|---|---:|---:|---:|"]
    out += [f"| {n} | {_f(r['V'])} | {_f(r['H'])} | {_f(r['H_norm'])} |" for n, r in rows]
    out.append("")
    out.append(
        f"Rule: max H_norm among intervals with V ≥ {sw['rule']['validity_ratio']:g} × V_post = "
        f"{_f(sw['selection']['validity_threshold'])}; {sw['selection']['eligible_intervals']} of "
        f"{len(sw['intervals'])} intervals qualify."
    )
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
    """CRC of the two models of the pair, before any surgery."""
    cats = sorted({c for r in res["crc"].values() for c in r.get("by_category", {})})
    out = ["| model (`layergraft crc`) | validity V | H (nats) | H_norm |"]
    out[0] += "".join(f" V {c} | H_norm {c} |" for c in cats)
    out.append("|---|---:|---:|---:|" + "---:|---:|" * len(cats))
    for n, r in res["crc"].items():
        m, by = r["mean"], r.get("by_category", {})
        row = f"| {n} | {_f(m['V'])} | {_f(m['H'])} | {_f(m['H_norm'])} |"
        row += "".join(f" {_f(by[c]['V'])} | {_f(by[c]['H_norm'])} |" for c in cats)
        out.append(row)
    return "\n".join(out)


def table_candidates(res: dict) -> str:
    """The models put to the generation tasks, with their CRC scores and why each is there."""
    out = ["| model | restores | validity V | H_norm | why |", "|---|---|---:|---:|---|"]
    for name, c in (res.get("candidates") or {}).items():
        what = f"layers `{c['interval']}`" if "interval" in c else f"α = {c['alpha']:g} of base"
        out.append(f"| {name} | {what} | {_f(c['V'])} | {_f(c['H_norm'])} | {c['why']} |")
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


#: marker prefix -> (committed results file, tables rendered from it)
SOURCES = {
    "demo": (
        DEMO / "results.json",
        {
            "sweep": table_sweep,
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
            "parts": table_parts,
            "candidates": table_candidates,
            "compare": table_compare,
            "prune": table_prune,
            "prune_summary": table_prune_summary,
            "steps": table_steps,
        },
    ),
}


def render(readme: str) -> str:
    """Rewrite every marked table of a page from its results file (a missing file is an error)."""
    for prefix, (path, tables) in SOURCES.items():
        if f"<!-- {prefix}:" not in readme:
            continue
        unknown = set(re.findall(rf"<!-- {prefix}:(\w+) -->", readme)) - set(tables)
        if unknown:
            raise SystemExit(
                f"no table named {prefix}:{', '.join(sorted(unknown))}; known: {', '.join(tables)}"
            )
        res = json.loads(path.read_text())
        for name, fn in tables.items():
            pat = re.compile(rf"(<!-- {prefix}:{name} -->)(.*?)(<!-- /{prefix}:{name} -->)", re.S)
            if not pat.search(readme):
                continue  # a page shows the tables it wants
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
        shutil.copyfile(args.src / "sweep" / "diff.png", DEMO / "diff.png")
    stale = []
    for page in (p for p in PAGES if p.is_file()):
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(
            f"tables in {', '.join(map(str, stale))} differ from docs/*/results.json: "
            "run python tools/readme_numbers.py",
            file=sys.stderr,
        )
        return 1
    if not args.check:
        print(
            f"rendered from docs/*/results.json: {', '.join(map(str, stale)) or 'nothing changed'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
