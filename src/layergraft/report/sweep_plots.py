"""The sweep's plots: heatmaps over (start, end), the validity/diversity scatter of every
family swept, and the perplexity heatmap, each drawn from the results dict alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from layergraft.report.plotting import pyplot as _plt

#: how each rule's pick is marked (edge colour) in every plot
RULE_COLOURS = {"paper": "cyan", "format": "lime"}
#: figure width, inches: the report page is ~900 px wide and figures are saved at 110 dpi, so a
#: figure this wide is shown at ~90% of its size and its 8-9 pt text stays readable
PAGE_WIDTH_IN = 9.0
#: cells carry their value up to this many layers (beyond, a cell is too small for the text)
ANNOTATE_MAX_LAYERS = 12


def interval_matrix(results: dict[str, Any], key: str) -> list[list[float]]:
    n = results["num_layers"]
    m = [[math.nan] * n for _ in range(n)]  # rows: start 0..n-1, cols: end 1..n
    for row in results["intervals"]:
        if row.get(key) is not None:
            m[row["start"]][row["end"] - 1] = row[key]
    return m


def plot_sweep_heatmaps(results: dict[str, Any], path: Path) -> Path:
    """Validity, format (V_end, when measured) and diversity over (start, end), two panels a
    row so that a page ~900 px wide shows them near their natural size; each rule's selected
    interval boxed in its colour. Cells carry their value when they are big enough to read
    (up to :data:`ANNOTATE_MAX_LAYERS` layers)."""
    plt = _plt()
    import numpy as np

    n = results["num_layers"]
    dkey = results["rule"]["diversity_key"]
    has_end = results["references"]["post"].get("V_end") is not None
    panels = [("V", "validity V (mass on valid characters)", "viridis")]
    if has_end:
        panels.append(("V_end", "format V_end (a valid character, then the end)", "cividis"))
    panels.append((dkey, f"diversity {dkey} (entropy over valid characters)", "magma"))
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(PAGE_WIDTH_IN, 4.1 * nrows + 0.4), constrained_layout=True,
        squeeze=False,
    )  # fmt: skip
    flat = list(axes.flat)
    picks = {
        name: sel["interval"]
        for name, sel in (results.get("selections") or {"paper": results["selection"]}).items()
    }
    ticks = 1 if n <= 16 else max(1, n // 12)
    size = 9 if n <= 8 else 7
    handles = []
    for ax, (key, title, cmap) in zip(flat, panels, strict=False):
        m = np.array(interval_matrix(results, key), dtype=float)
        im = ax.imshow(np.ma.masked_invalid(m), origin="upper", cmap=cmap, aspect="auto")
        ax.set_xticks(range(0, n, ticks), [str(e) for e in range(1, n + 1, ticks)], fontsize=8)
        ax.set_yticks(range(0, n, ticks), [str(s) for s in range(0, n, ticks)], fontsize=8)
        ax.set_xlabel("end (exclusive)", fontsize=9)
        ax.set_ylabel("start", fontsize=9)
        ref = results["references"]["post"][key]
        ax.set_title(f"{title}\npost model: {ref:.3f}", fontsize=9.5)
        if n <= ANNOTATE_MAX_LAYERS:
            lo, hi = np.nanmin(m), np.nanmax(m)
            for s, e in zip(*np.nonzero(~np.isnan(m)), strict=True):
                v = m[s, e]
                light = hi > lo and (v - lo) / (hi - lo) > 0.6  # all three maps: light = high
                text = f"{v:.2f}" if n <= 8 else f"{v:.2f}".replace("0.", ".", 1)
                ax.text(e, s, text, ha="center", va="center", fontsize=size,
                        color="black" if light else "white")  # fmt: skip
        handles = []
        for k, (name, sel) in enumerate(sorted(picks.items())):
            if sel:
                s, e = (int(x) for x in sel.split(":"))
                pad = 0.08 * k
                handles.append(ax.add_patch(plt.Rectangle(
                    (e - 1 - 0.5 + pad, s - 0.5 + pad), 1 - 2 * pad, 1 - 2 * pad, fill=False,
                    ec=RULE_COLOURS.get(name, "white"), lw=2.5, label=f"{name} rule: {sel}",
                )))  # fmt: skip
        fig.colorbar(im, ax=ax, shrink=0.9)
    spare = flat[len(panels) :]
    for ax in spare:
        ax.axis("off")
    if handles:
        where = spare[0] if spare else flat[0]
        where.legend(handles=handles, fontsize=9, loc="center" if spare else "lower left",
                     title="boxed: each rule's pick\namong these intervals", title_fontsize=9)  # fmt: skip
    what = results.get("restored_parts", "all")
    restored = (
        "restored intervals" if what == "all" else f"intervals with only their {what} restored"
    )
    chosen = ", ".join(f"{k}: {v or 'none'}" for k, v in sorted(picks.items()))
    fig.suptitle(f"CRC sweep of {restored} [start, end) — selected {chosen}", fontsize=10.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(results: dict[str, Any], path: Path) -> Path:
    """V–diversity scatter of every family swept (intervals coloured by length, interval
    soups, part restores, the soup curve), the intervals' Pareto front, the references, the
    rules' thresholds and picks, and the validated choice. The legend sits under the plot,
    one column per group (families swept, references, picks), so it hides no point."""
    plt = _plt()
    from matplotlib.lines import Line2D

    dkey = results["rule"]["diversity_key"]
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 7.4), constrained_layout=True)
    families: list[Any] = []
    refs: list[Any] = []
    picks: list[Any] = []
    rows = results["intervals"]
    if rows:
        sc = ax.scatter(
            [r["V"] for r in rows], [r[dkey] for r in rows],
            c=[r["end"] - r["start"] for r in rows], cmap="viridis", s=28,
            label="intervals (SLR), colour = length",
        )  # fmt: skip
        families.append(sc)
        fig.colorbar(sc, ax=ax, label="interval length (layers restored)")
        front = sorted(
            (r for r in rows if r["interval"] in set(results["pareto"])), key=lambda r: r["V"]
        )
        families += ax.plot([r["V"] for r in front], [r[dkey] for r in front], "-",
                            color="tab:red", lw=1.2, label="Pareto front of the intervals")  # fmt: skip
    soups_of = (results.get("interval_soups") or {}).get("rows", [])
    for a, marker in zip(sorted({r["alpha"] for r in soups_of}), "sxD^v<>p", strict=False):
        pts = [r for r in soups_of if r["alpha"] == a]
        families.append(ax.scatter(
            [r["V"] for r in pts], [r[dkey] for r in pts], marker=marker, s=22, facecolor="none",
            edgecolor="tab:purple", lw=0.8, label=f"interval soups α={a:g}",
        ))  # fmt: skip
    for part, sub in (results.get("by_part") or {}).items():
        if part == "all":
            continue
        families.append(ax.scatter(
            [r["V"] for r in sub["intervals"]], [r[dkey] for r in sub["intervals"]], marker=".",
            s=14, alpha=0.6, label=f"intervals, {part} only",
        ))  # fmt: skip
    if results.get("soup"):
        alphas = results["soup"]["alphas"]
        families += ax.plot([r["V"] for r in alphas], [r[dkey] for r in alphas], "--",
                            marker=".", color="gray", lw=1, label="whole-model soup α=0…1")  # fmt: skip
    for name, marker, color in (("post", "*", "tab:blue"), ("base", "P", "tab:orange")):
        ref = results["references"][name]
        refs.append(ax.scatter([ref["V"]], [ref[dkey]], marker=marker, s=160, color=color,
                               edgecolor="k", label=f"{name} model", zorder=5))  # fmt: skip
    thr = results["selection"]["validity_threshold"]
    refs.append(ax.axvline(thr, color="k", ls=":", lw=1, label=f"V threshold {thr:.3f}"))
    paper_iv = ((results.get("selections") or {}).get("paper") or {}).get("interval")
    paper_row = next((r for r in rows if r["interval"] == paper_iv), None)
    best_of = dict(results.get("best") or {})
    if paper_row and (best_of.get("paper") or {}).get("label", paper_iv) != paper_iv:
        # the paper rule's pick is a restored interval (the SLR paper's rule); the same
        # thresholds over every family pick something else, drawn dashed under its own name
        picks.append(ax.scatter(
            [paper_row["V"]], [paper_row[dkey]], s=240, facecolor="none",
            edgecolor=RULE_COLOURS["paper"], lw=2.5, zorder=6,
            label=f"paper rule's pick: {paper_iv}",
        ))  # fmt: skip
        other = best_of.pop("paper")
        picks.append(ax.scatter(
            [other["V"]], [other[dkey]], s=240, facecolor="none", linestyle="--",
            edgecolor=RULE_COLOURS["paper"], lw=1.5, zorder=6,
            label=f"paper rule over every family: {other['label']}",
        ))  # fmt: skip
    for name, best in best_of.items():
        if best:
            picks.append(ax.scatter(
                [best["V"]], [best[dkey]], s=240, facecolor="none",
                edgecolor=RULE_COLOURS.get(name, "k"), lw=2.5, zorder=6,
                label=f"{name} rule's pick: {best['label']}",
            ))  # fmt: skip
    chosen = (results.get("validation") or {}).get("chosen")
    if chosen:
        picks.append(ax.scatter([chosen["V"]], [chosen[dkey]], s=90, marker="X", color="black",
                                zorder=7, label=f"validated pick: {chosen['label']}"))  # fmt: skip
    ax.set_xlabel("validity V")
    ax.set_ylabel(f"diversity {dkey}")
    ax.set_title("CRC proxy: validity vs diversity, every family swept", fontsize=10.5)
    groups = [(g, items) for g, items in (("families swept", families), ("references", refs),
                                          ("picks", picks)) if items]  # fmt: skip
    depth = max(len(items) for _, items in groups) + 1
    blank = Line2D([], [], linestyle="none")
    handles: list[Any] = []
    labels: list[str] = []
    heads: list[int] = []
    for title, items in groups:  # legend columns fill top to bottom: one group a column
        heads.append(len(labels))
        handles += [blank, *items] + [blank] * (depth - 1 - len(items))
        labels += [title, *(h.get_label() for h in items)] + [""] * (depth - 1 - len(items))
    leg = fig.legend(handles, labels, loc="outside lower center", ncol=len(groups), fontsize=8.5,
                     frameon=False, handlelength=2.2, columnspacing=2.5)  # fmt: skip
    for i in heads:
        leg.get_texts()[i].set_fontweight("bold")
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
