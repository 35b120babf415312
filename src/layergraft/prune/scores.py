"""``scores``: how removable every block of layers is, by angular distance, block influence,
cosine (:mod:`layergraft.prune.importance`), the ghost fit's own residual
(:mod:`layergraft.prune.residual`) or the repaired model's calibration loss
(:mod:`layergraft.prune.repaired`)."""

from __future__ import annotations

import os
from typing import Any

from layergraft.errors import InputError
from layergraft.prune.importance import METRICS, block_scores
from layergraft.prune.job import ModelLike, load_job, open_input, refuse_ghosted_selection
from layergraft.prune.recover import check_damp
from layergraft.prune.repaired import loss_scores
from layergraft.prune.residual import check_norm, residual_scores
from layergraft.report.scores import plot_scores
from layergraft.text import DEFAULT_CALIB

PathLike = str | os.PathLike[str]
#: what ``scores`` can rank blocks by
SCORE_METRICS: tuple[str, ...] = (*METRICS, "residual", "loss")


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
    damp: float | None = None,
    damp_abs: float | None = None,
    max_boundaries: int | None = None,
    normalise: str = "delta",
    plot: PathLike | None = None,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> dict[str, Any]:
    """Score every contiguous block of ``block`` layers with ``metric`` on ``data``
    (``tokens``: ``last`` or ``all``; default the metric's own, see
    :mod:`layergraft.prune.importance`; ``residual`` uses every token by default, with the
    ghost fit's ``damp`` (relative) or ``damp_abs`` (absolute, :class:`~layergraft.prune.recover.Damp`),
    ``max_boundaries`` block statistics per pass, ``normalise``:
    :data:`~layergraft.prune.residual.NORMS`; ``loss`` the held-in loss after ghost repair with
    the same damping, :mod:`layergraft.prune.repaired`)."""
    if metric not in SCORE_METRICS:
        raise InputError(f"unknown --metric {metric!r}; choose one of {', '.join(SCORE_METRICS)}")
    damp = check_damp(damp, damp_abs)
    check_norm(normalise)
    # --block against config.json's layer count and --plot's path, before any model loads
    outputs = [(plot, "file", "--plot", False)] if plot is not None else []
    inp = open_input(
        model, calib=data, block=block, outputs=outputs, accept_ghosted=True, check_finite=False
    )
    refuse_ghosted_selection(inp, metric)
    job = load_job(
        inp, calib=data, calib_tokens=n_tokens, seqlen=seqlen, batch_size=batch_size,
        device=device, dtype=dtype, device_map=device_map,
    )  # fmt: skip
    if metric == "loss":
        sc = loss_scores(
            job.model,
            job.adapter,
            job.batches,
            block=block,
            damp=damp,
            max_boundaries=max_boundaries,
        )
    elif metric == "residual":
        sc = residual_scores(
            job.model, job.adapter, job.batches, block=block, tokens=tokens or "all",
            damp=damp, max_boundaries=max_boundaries, norm=normalise,
        )  # fmt: skip
    else:
        sc = block_scores(
            job.model, job.adapter, job.batches, block=block, metric=metric, tokens=tokens
        )
    out = sc.as_json()
    out["model"] = inp.origin
    if plot is not None:
        out["plot"] = str(plot_scores(out, plot))
    return out
