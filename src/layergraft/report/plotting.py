"""matplotlib for files, never a screen: the one place that picks the Agg backend."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: plotting is the
    last step of a command, and matplotlib costs a quarter of a second to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
