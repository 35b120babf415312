"""The plot of ``layergraft scores``: score per block start, the best block marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layergraft.report.plotting import pyplot, save_figure


def plot_scores(scores: dict[str, Any], path: str | Path) -> Path:
    """A PNG of score vs block start from the scores' JSON form (``Scores.as_json()``),
    written through the output rule (never over the scored model)."""
    plt = pyplot()
    starts = [int(b["range"].split(":")[0]) for b in scores["blocks"]]
    values = [b["score"] for b in scores["blocks"]]
    best = scores["best"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(starts, values, marker="o")
    best_score = next(b["score"] for b in scores["blocks"] if b["range"] == best)
    ax.scatter([int(best.split(":")[0])], [best_score], color="red", zorder=3, label=f"best {best}")
    block = scores["block"]
    ax.set_xlabel(f"block start s (block = s:s+{block}, 0-based, end excluded)")
    ax.set_ylabel(scores["metric"])
    way = "lower" if scores["removable"] == "lowest" else "higher"
    ax.set_title(f"{scores['metric']} score per block of {block} ({way} = more removable)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, inputs=[scores.get("model")], dpi=100)
