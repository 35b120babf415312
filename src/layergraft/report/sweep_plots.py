"""The sweep's plots: heatmaps over (start, end), the validity/diversity scatter of every
family swept, and the perplexity heatmap, each drawn from the results dict alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from layergraft.report.plotting import pyplot as _plt

#: how each rule's pick is marked (edge colour) in every plot
RULE_COLOURS = {"paper": "cyan", "format": "lime"}


def interval_matrix(results: dict[str, Any], key: str) -> list[list[float]]:
    n = results["num_layers"]
    m = [[math.nan] * n for _ in range(n)]  # rows: start 0..n-1, cols: end 1..n
    for row in results["intervals"]:
        if row.get(key) is not None:
            m[row["start"]][row["end"] - 1] = row[key]
    return m


def plot_sweep_heatmaps(results: dict[str, Any], path: Path) -> Path:
    """Validity, format (V_end, when measured) and diversity over (start, end) side by side;
    each rule's selected interval boxed in its colour."""
    plt = _plt()
    import numpy as np

    n = results["num_layers"]
    dkey = results["rule"]["diversity_key"]
    has_end = results["references"]["post"].get("V_end") is not None
    panels = [("V", "validity V (mass on valid characters)", "viridis")]
    if has_end:
        panels.append(("V_end", "format V_end (a valid character, then the end)", "cividis"))
    panels.append((dkey, f"diversity {dkey} (entropy over valid characters)", "magma"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.6 * len(panels), 4.8), constrained_layout=True
    )
    picks = {
        name: sel["interval"]
        for name, sel in (results.get("selections") or {"paper": results["selection"]}).items()
    }
    for ax, (key, title, cmap) in zip(axes, panels, strict=True):
        m = np.array(interval_matrix(results, key), dtype=float)
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
        for k, (name, sel) in enumerate(sorted(picks.items())):
            if sel:
                s, e = (int(x) for x in sel.split(":"))
                pad = 0.08 * k
                ax.add_patch(plt.Rectangle(
                    (e - 1 - 0.5 + pad, s - 0.5 + pad), 1 - 2 * pad, 1 - 2 * pad, fill=False,
                    ec=RULE_COLOURS.get(name, "white"), lw=2.5, label=f"{name} rule: {sel}",
                ))  # fmt: skip
        fig.colorbar(im, ax=ax, shrink=0.85)
        ref = results["references"]["post"][key]
        ax.text(0.0, -0.16, f"post model: {ref:.3f}", transform=ax.transAxes, fontsize=8)
    if any(picks.values()):
        axes[0].legend(fontsize=7, loc="lower left")
    what = results.get("restored_parts", "all")
    restored = (
        "restored intervals" if what == "all" else f"intervals with only their {what} restored"
    )
    chosen = ", ".join(f"{k}: {v or 'none'}" for k, v in sorted(picks.items()))
    fig.suptitle(f"CRC sweep of {restored} [start, end) — selected {chosen}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(results: dict[str, Any], path: Path) -> Path:
    """V–diversity scatter of every family swept (intervals coloured by length, interval
    soups, part restores, the soup curve), the intervals' Pareto front, the references, the
    rules' thresholds and picks, and the validated choice."""
    plt = _plt()
    dkey = results["rule"]["diversity_key"]
    fig, ax = plt.subplots(figsize=(7.2, 5.4), constrained_layout=True)
    rows = results["intervals"]
    if rows:
        sc = ax.scatter(
            [r["V"] for r in rows], [r[dkey] for r in rows],
            c=[r["end"] - r["start"] for r in rows], cmap="viridis", s=28, label="intervals (SLR)",
        )  # fmt: skip
        fig.colorbar(sc, ax=ax, label="interval length (layers restored)")
        front = sorted(
            (r for r in rows if r["interval"] in set(results["pareto"])), key=lambda r: r["V"]
        )
        ax.plot([r["V"] for r in front], [r[dkey] for r in front], "-", color="tab:red", lw=1.2,
                label="Pareto front (intervals)")  # fmt: skip
    soups_of = (results.get("interval_soups") or {}).get("rows", [])
    for a, marker in zip(sorted({r["alpha"] for r in soups_of}), "sxD^v<>p", strict=False):
        pts = [r for r in soups_of if r["alpha"] == a]
        ax.scatter([r["V"] for r in pts], [r[dkey] for r in pts], marker=marker, s=22,
                   facecolor="none", edgecolor="tab:purple", lw=0.8, label=f"interval soups α={a:g}")  # fmt: skip
    for part, sub in (results.get("by_part") or {}).items():
        if part == "all":
            continue
        ax.scatter([r["V"] for r in sub["intervals"]], [r[dkey] for r in sub["intervals"]],
                   marker=".", s=14, alpha=0.6, label=f"{part} only")  # fmt: skip
    if results.get("soup"):
        alphas = results["soup"]["alphas"]
        ax.plot([r["V"] for r in alphas], [r[dkey] for r in alphas], "--", marker=".",
                color="gray", lw=1, label="whole-model soup α=0…1")  # fmt: skip
    for name, marker, color in (("post", "*", "tab:blue"), ("base", "P", "tab:orange")):
        ref = results["references"][name]
        ax.scatter([ref["V"]], [ref[dkey]], marker=marker, s=160, color=color, edgecolor="k",
                   label=f"{name} model", zorder=5)  # fmt: skip
    thr = results["selection"]["validity_threshold"]
    ax.axvline(thr, color="k", ls=":", lw=1, label=f"V threshold {thr:.3f}")
    for name, best in (results.get("best") or {}).items():
        if best:
            ax.scatter([best["V"]], [best[dkey]], s=240, facecolor="none",
                       edgecolor=RULE_COLOURS.get(name, "k"), lw=2.5, zorder=6,
                       label=f"{name} rule's pick: {best['label']}")  # fmt: skip
    chosen = (results.get("validation") or {}).get("chosen")
    if chosen:
        ax.scatter([chosen["V"]], [chosen[dkey]], s=90, marker="X", color="black", zorder=7,
                   label=f"validated: {chosen['label']}")  # fmt: skip
    ax.set_xlabel("validity V")
    ax.set_ylabel(f"diversity {dkey}")
    ax.set_title("CRC proxy: validity vs diversity, every family swept", fontsize=10)
    ax.legend(fontsize=6.5, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ppl_heatmap(results: dict[str, Any], path: Path) -> Path:
    """Perplexity of every restored interval (log colour scale), the lowest boxed."""
    plt = _plt()
    import numpy as np
    from matplotlib.colors import LogNorm

    n = results["num_layers"]
    m = np.array(interval_matrix(results, "ppl"), dtype=float)
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
