"""``scores``: how removable every block of layers is, by angular distance, block influence
or cosine (the metrics themselves: :mod:`layergraft.prune.importance`)."""

from __future__ import annotations

import os
from typing import Any

from layergraft.prune.importance import block_scores
from layergraft.prune.job import ModelLike, load_job, open_input
from layergraft.report.scores import plot_scores
from layergraft.text import DEFAULT_CALIB

PathLike = str | os.PathLike[str]


def scores(
    model: ModelLike,
    data: PathLike = DEFAULT_CALIB,
    *,
    block: int = 1,
    metric: str = "angular",
    tokens: str | None = None,
    n_tokens: int = 8192,
    seqlen: int = 512,
    batch_size: int = 4,
    plot: PathLike | None = None,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> dict[str, Any]:
    """Score every contiguous block of ``block`` layers with ``metric`` on ``data``
    (``tokens``: ``last`` or ``all``; default the metric's own, see
    :mod:`layergraft.prune.importance`)."""
    inp = open_input(model, calib=data, accept_ghosted=True, check_finite=False)
    job = load_job(
        inp, calib=data, calib_tokens=n_tokens, seqlen=seqlen, batch_size=batch_size,
        device=device, dtype=dtype, device_map=device_map,
    )  # fmt: skip
    sc = block_scores(
        job.model, job.adapter, job.batches, block=block, metric=metric, tokens=tokens
    )
    out = sc.as_json()
    out["model"] = inp.origin
    if plot is not None:
        out["plot"] = str(plot_scores(out, plot))
    return out
