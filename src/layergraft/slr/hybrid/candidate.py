"""One hybrid described as data, made in memory or written to disk.

Why: a sweep's candidates come from several families (restored intervals, interval soups,
part restores, whole-model soups). Validation generates from each in memory, ``sweep
--restore-best`` writes the chosen one to disk, and a report names them; all three read the
same description, a results row: ``start``/``end`` (absent for a whole-model soup),
``alpha`` (1 = the base layers themselves) and ``parts``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from layergraft.slr.hybrid.restore import restore
from layergraft.slr.hybrid.soup import soup, souped
from layergraft.slr.hybrid.swap import swapped_layers


def describe(row: dict[str, Any]) -> str:
    """What the hybrid is, in words: ``layers 4:7``, ``layers 4:7 blended at 0.5``, ..."""
    alpha, parts = row.get("alpha", 1.0), row.get("parts", "all")
    if "start" not in row:
        return f"whole-model soup at alpha {alpha:g}"
    what = f"layers {row['start']}:{row['end']}"
    if parts != "all":
        what += f" ({parts} only)"
    return what if alpha == 1.0 else f"{what} blended at alpha {alpha:g}"


def in_memory(row: dict[str, Any], post_model: Any, base_model: Any) -> Any:
    """A context manager in which ``post_model`` is the hybrid (undone exactly on exit)."""
    alpha, parts = row.get("alpha", 1.0), row.get("parts", "all")
    if "start" not in row:
        return souped(post_model, base_model, alpha)
    rng = (row["start"], row["end"])
    if alpha == 1.0:
        return swapped_layers(post_model, base_model, [rng], parts=parts)
    return souped(post_model, base_model, alpha, parts, layers=[rng])


def write(
    row: dict[str, Any],
    base: str | os.PathLike[str],
    post: str | os.PathLike[str],
    out: str | os.PathLike[str],
    **kwargs: Any,
) -> dict[str, Any]:
    """Write the hybrid to ``out`` with the command that makes it (``restore`` for base
    layers, ``soup`` for blends): the same bytes a user gets from that command."""
    alpha, parts = row.get("alpha", 1.0), row.get("parts", "all")
    if "start" not in row:
        return soup(base, post, alpha, out, **kwargs)
    layers = f"{row['start']}:{row['end']}"
    if alpha == 1.0:
        return restore(base, post, layers, out, parts=parts, **kwargs)
    return soup(base, post, alpha, out, parts=parts, layers=layers, **kwargs)


@contextlib.contextmanager
def nothing() -> Any:
    """The post model itself (a reference in the same shape as a hybrid's context)."""
    yield None
