"""The sweep's outputs: results.json, results.csv, heatmaps, Pareto plot, summary table.

Every function here takes the JSON-ready results dict a sweep returned and draws from it, so
a plot can always be re-rendered from ``results.json`` alone (never the other way round).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from layergraft.checkpoint.atomic import write_json_atomic, write_text_atomic
from layergraft.report.diff import plot_diff
from layergraft.report.plotting import pyplot as _plt


def write_sweep_outputs(results: dict[str, Any], out: Path) -> Path:
    """Into the sweep directory ``out``: results.json, results.csv, the heatmaps (CRC: validity
    and diversity; PPL: perplexity), the Pareto plot and summary.md (CRC), each file replaced
    in one rename, so a reader never sees half of one."""
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


def _interval_matrix(results: dict[str, Any], key: str) -> list[list[float]]:
    n = results["num_layers"]
    m = [[math.nan] * n for _ in range(n)]  # rows: start 0..n-1, cols: end 1..n
    for row in results["intervals"]:
        m[row["start"]][row["end"] - 1] = row[key]
    return m


def plot_sweep_heatmaps(results: dict[str, Any], path: Path) -> Path:
    """Validity and diversity over (start, end) side by side; the selected interval boxed."""
    plt = _plt()
    import numpy as np

    n = results["num_layers"]
    dkey = results["rule"]["diversity_key"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    sel = results["selection"]["interval"]
    for ax, key, title, cmap in (
        (axes[0], "V", "validity V (mass on valid characters)", "viridis"),
        (axes[1], dkey, f"diversity {dkey} (entropy over valid characters)", "magma"),
    ):
        m = np.array(_interval_matrix(results, key), dtype=float)
        im = ax.imshow(np.ma.masked_invalid(m), origin="upper", cmap=cmap, aspect="auto")
        ax.set_xticks(range(n), [str(e) for e in range(1, n + 1)])
        ax.set_yticks(range(n), [str(s) for s in range(n)])
        ax.set_xlabel("end (exclusive)")
        ax.set_ylabel("start")
        ax.set_title(title, fontsize=10)
        for s in range(n):
            for e in range(n):
                if not math.isnan(m[s, e]) and n <= 16:
                    ax.text(
                        e, s, f"{m[s, e]:.2f}", ha="center", va="center", fontsize=7, color="white"
                    )
        if sel:
            s, e = (int(x) for x in sel.split(":"))
            ax.add_patch(plt.Rectangle((e - 1 - 0.5, s - 0.5), 1, 1, fill=False, ec="cyan", lw=2.5))
        fig.colorbar(im, ax=ax, shrink=0.85)
        ref = results["references"]["post"][key]
        ax.text(0.0, -0.16, f"post model: {ref:.3f}", transform=ax.transAxes, fontsize=8)
    what = results.get("restored_parts", "all")
    restored = (
        "restored intervals" if what == "all" else f"intervals with only their {what} restored"
    )
    fig.suptitle(
        f"CRC sweep of {restored} [start, end) — selected {sel or 'none'} "
        f"({results['rule']['text']})",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(results: dict[str, Any], path: Path) -> Path:
    """V–H scatter of every interval (and soup, if scored) with the Pareto front and references."""
    plt = _plt()
    dkey = results["rule"]["diversity_key"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
    xs = [r["V"] for r in results["intervals"]]
    ys = [r[dkey] for r in results["intervals"]]
    lens = [r["end"] - r["start"] for r in results["intervals"]]
    sc = ax.scatter(xs, ys, c=lens, cmap="viridis", s=28, label="SLR intervals")
    fig.colorbar(sc, ax=ax, label="interval length (layers restored)")
    front = [r for r in results["intervals"] if r["interval"] in set(results["pareto"])]
    front.sort(key=lambda r: r["V"])
    ax.plot(
        [r["V"] for r in front],
        [r[dkey] for r in front],
        "-",
        color="tab:red",
        lw=1.2,
        label="Pareto front",
    )
    for r in front:
        ax.annotate(
            r["interval"], (r["V"], r[dkey]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    if results.get("soup"):
        ax.plot(
            [r["V"] for r in results["soup"]["alphas"]],
            [r[dkey] for r in results["soup"]["alphas"]],
            "--",
            marker=".",
            color="gray",
            lw=1,
            label="soup α=0…1",
        )
    for name, marker, color in (("post", "*", "tab:blue"), ("base", "P", "tab:orange")):
        ref = results["references"][name]
        ax.scatter(
            [ref["V"]],
            [ref[dkey]],
            marker=marker,
            s=160,
            color=color,
            edgecolor="k",
            label=f"{name} model",
            zorder=5,
        )
    thr = results["selection"]["validity_threshold"]
    ax.axvline(thr, color="k", ls=":", lw=1, label=f"V threshold {thr:.3f}")
    sel = results.get("selected")
    if sel:
        ax.scatter(
            [sel["V"]],
            [sel[dkey]],
            s=220,
            facecolor="none",
            edgecolor="cyan",
            lw=2.5,
            label=f"selected {sel['interval']}",
            zorder=6,
        )
    ax.set_xlabel("validity V")
    ax.set_ylabel(f"diversity {dkey}")
    ax.set_title("CRC proxy: validity vs diversity", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sweep_csv(results: dict[str, Any], path: Path) -> Path:
    keys = ["interval", "start", "end", "V", "H", "H_norm"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind"] + keys)
        for name in ("post", "base"):
            ref = results["references"][name]
            w.writerow(
                [name, "", "", "", f"{ref['V']:.6f}", f"{ref['H']:.6f}", f"{ref['H_norm']:.6f}"]
            )
        for r in results["intervals"]:
            w.writerow(
                ["interval"]
                + [r["interval"], r["start"], r["end"]]
                + [f"{r[k]:.6f}" for k in ("V", "H", "H_norm")]
            )
        for part, sub in _other_parts(results):
            for r in sub["intervals"]:
                w.writerow(
                    [f"interval:{part}"]
                    + [r["interval"], r["start"], r["end"]]
                    + [f"{r[k]:.6f}" for k in ("V", "H", "H_norm")]
                )
        for r in (results.get("soup") or {}).get("alphas", []):
            w.writerow(
                ["soup", f"alpha={r['alpha']:g}", "", ""]
                + [f"{r[k]:.6f}" for k in ("V", "H", "H_norm")]
            )
    return path


def sweep_table(results: dict[str, Any], top: int = 5) -> str:
    """A short Markdown table: references, the selected interval, best soup, top intervals."""
    dkey = results["rule"]["diversity_key"]
    rows = [("post", results["references"]["post"]), ("base", results["references"]["base"])]
    if results.get("selected"):
        rows.append((f"SLR {results['selected']['interval']} (selected)", results["selected"]))
    soup = results.get("soup")
    if soup and soup.get("selected"):
        rows.append((f"soup α={soup['selected']['alpha']:g} (selected)", soup["selected"]))
    eligible = [
        r for r in results["intervals"] if r["V"] >= results["selection"]["validity_threshold"]
    ]
    eligible.sort(key=lambda r: -r[dkey])
    for r in eligible[:top]:
        if not results.get("selected") or r["interval"] != results["selected"]["interval"]:
            rows.append((f"SLR {r['interval']}", r))
    lines = ["| model | V | H (nats) | H_norm |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['V']:.3f} | {r['H']:.3f} | {r['H_norm']:.3f} |" for name, r in rows]
    change = results.get("weight_change") or {}
    if change.get("spearman") is not None:
        lines.append("")
        lines.append(
            f"Weight change vs the gain of restoring that layer alone: Spearman ρ = "
            f"{change['spearman']:.2f} over {sum(r['gain'] is not None for r in change['layers'])} layers "
            "(see diff.png)."
        )
    return "\n".join(lines)


def plot_ppl_heatmap(results: dict[str, Any], path: Path) -> Path:
    """Perplexity of every restored interval (log colour scale), the lowest boxed."""
    plt = _plt()
    import numpy as np
    from matplotlib.colors import LogNorm

    n = results["num_layers"]
    m = np.array(_interval_matrix(results, "ppl"), dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis_r", norm=LogNorm(), aspect="auto")
    ax.set_xticks(range(n), [str(e) for e in range(1, n + 1)])
    ax.set_yticks(range(n), [str(s) for s in range(n)])
    ax.set_xlabel("end (exclusive)")
    ax.set_ylabel("start")
    s, e = (int(x) for x in results["selection"]["interval"].split(":"))
    ax.add_patch(plt.Rectangle((e - 1 - 0.5, s - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    fig.colorbar(im, ax=ax, label="perplexity")
    post = results["references"]["post"]["ppl"]
    ax.set_title(
        f"PPL of restored intervals (post model {post:.2f}); lowest {results['selection']['interval']}",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
