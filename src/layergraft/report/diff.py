"""The outputs of ``layergraft diff``: a text table and a layers x parts heatmap.

Both are drawn from the JSON-ready dict :func:`layergraft.slr.hybrid.diff.diff` returns, so the plot
can be re-rendered from a saved ``--json`` output alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from layergraft.report.plotting import pyplot, save_figure

COLUMNS: tuple[str, ...] = ("attn", "mlp", "norms", "all")


def _fmt(x: float | None, width: int = 9) -> str:
    if x is None:
        return "-".rjust(width)
    return (f"{x:.4f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.2e}").rjust(width)


def diff_table(results: dict[str, Any]) -> str:
    """Relative change per layer (rows) and part (columns), cosine of the whole layer, then
    the rows outside the layers and the ranking: what ``layergraft diff`` prints."""
    lines = [
        f"{results['post']} vs {results['base']} ({results['family']}, "
        f"{results['num_layers']} layers)",
        "relative change ||post - base||_F / ||base||_F; cos = cosine of the flattened weights",
        "",
        "layer" + "".join(c.rjust(9) for c in COLUMNS) + "cos(all)".rjust(11),
    ]
    for row in results["layers"]:
        cells = "".join(_fmt(row[c]["rel_change"]) for c in COLUMNS)
        cos = row["all"]["cosine"]
        lines.append(f"{row['layer']:>5}{cells}{'-' if cos is None else f'{cos:.6f}':>11}")
    lines.append("")
    for name, cell in results["outside"].items():
        lines.append(f"{name:<11}{_fmt(cell['rel_change'])}  cos {_fmt(cell['cosine'])}")
    if results.get("tied_embeddings"):
        lines.append("head       tied to the embeddings")
    lines.append(
        f"{'model':<11}{_fmt(results['model']['rel_change'])}  cos {_fmt(results['model']['cosine'])}"
    )
    lines.append(_most_changed(results))
    if results.get("skipped"):
        lines.append(f"not compared (not floating point): {len(results['skipped'])} tensors")
    return "\n".join(lines)


def _most_changed(results: dict[str, Any]) -> str:
    """The ranking's top five among the layers that changed at all: ranking layers whose
    weights are identical (a model against itself) would present ties of zeros as findings."""
    by_layer = {row["layer"]: row["all"] for row in results["layers"]}
    # results saved before unchanged layers left the ranking may still hold them
    changed = [i for i in results["ranking"] if by_layer[i]["abs_change"] > 0]
    if results.get("identical"):
        return "most changed layers: none (post and base are identical)"
    if not changed:
        return "most changed layers: none (every decoder layer of post equals base)"
    top = ", ".join(str(i) for i in changed[:5])
    rest = len(by_layer) - len(changed)
    return f"most changed layers (largest first): {top}" + (f" ({rest} unchanged)" if rest else "")


def plot_diff(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """A PNG: relative change and cosine as two layers x parts heatmaps (layer 0 on top),
    the rows outside the layers in the caption. Written through the output rule, beside
    ``path`` and renamed into place (:func:`~layergraft.report.plotting.save_figure`)."""
    plt = pyplot()
    import numpy as np

    rows = results["layers"]
    n = len(rows)

    def matrix(key: str) -> Any:
        m = [[row[c][key] for c in COLUMNS] for row in rows]
        return np.array([[math.nan if v is None else v for v in r] for r in m], dtype=float)

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 1.6 + 0.32 * max(n, 4)), constrained_layout=True)
    panels = (
        (axes[0], matrix("rel_change"), "relative change ||post-base|| / ||base||", "magma", ".3f"),
        (axes[1], matrix("cosine"), "cosine(post, base)", "viridis_r", ".4f"),
    )
    for ax, m, title, cmap, fmt in panels:
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(COLUMNS)), list(COLUMNS))
        ax.set_yticks(range(n), [str(r["layer"]) for r in rows])
        ax.set_ylabel("decoder layer (0-based)")
        ax.set_title(title, fontsize=10)
        if n <= 48:
            lo, hi = np.nanmin(m), np.nanmax(m)
            for i in range(n):
                for j in range(len(COLUMNS)):
                    if not math.isnan(m[i, j]):
                        # magma is dark at the low end, viridis_r at the high end
                        lower = hi > lo and (m[i, j] - lo) / (hi - lo) < 0.5
                        color = "white" if lower == (cmap == "magma") else "black"
                        ax.text(j, i, format(m[i, j], fmt), ha="center", va="center",
                                fontsize=7, color=color)  # fmt: skip
        fig.colorbar(im, ax=ax, shrink=0.85)
    outside = ", ".join(f"{k} {_fmt(v['rel_change'], 0)}" for k, v in results["outside"].items())
    fig.suptitle(
        f"{Path(results['post']).name} vs {Path(results['base']).name} ({results['family']}) — "
        f"outside the layers: {outside or 'none'}",
        fontsize=9,
    )
    # the inputs again at write time: an API caller may not have checked the path first
    return save_figure(fig, path, inputs=(results["base"], results["post"]), dpi=110)
