"""matplotlib for files, never a screen: the one place that picks the Agg backend, and the
one way a figure becomes a file (:func:`save_figure`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layergraft.checkpoint.atomic import atomic_file


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: plotting is the
    last step of a command, and matplotlib costs a quarter of a second to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(
    fig: Any,
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[Any] = (),
    flag: str = "--plot",
    **savefig: Any,
) -> Path:
    """Write ``fig`` to ``path`` through the one output rule and one rename
    (:func:`~layergraft.checkpoint.atomic.atomic_file`: never over an input, never half a
    file), then close it. The format follows the target's suffix (PNG by default), not the
    temp file's name."""
    plt = pyplot()
    p = Path(path)
    fmt = p.suffix.lstrip(".").lower() or "png"
    try:
        with atomic_file(p, inputs=inputs, flag=flag) as tmp:
            fig.savefig(tmp, format=fmt, **savefig)
    finally:
        plt.close(fig)
    return p
