"""``prune``: remove decoder layers from a checkpoint, repair the gaps, write the result.

The steps, in order of cost: validate everything cheap (:func:`~layergraft.prune.job.open_input`,
the output target), refuse NaN/Inf weights, load the model and calibration batches and choose
the gaps (:func:`~layergraft.prune.job.load_job`), fit and cut in memory
(:func:`~layergraft.prune.model.prune_model`), then stream the kept tensors into a complete,
self-describing output directory (:func:`~layergraft.checkpoint.model_dir.write_model_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layergraft.checkpoint.model_dir import write_model_dir
from layergraft.errors import InputError
from layergraft.prune import recover as R
from layergraft.prune.job import load_job, open_input, warn_greedy_fit
from layergraft.prune.model import prune_model
from layergraft.prune.recover import check_damp
from layergraft.prune.residual import check_norm
from layergraft.prune.write import finish_pruned_dir, pruned_tensors
from layergraft.ranges import format_ranges
from layergraft.text import DEFAULT_CALIB

PathLike = str | os.PathLike[str]

#: what each recovery method does, for the model card
_HOW = {
    "ghost": "a ghost operator `h -> h + h·Δ (+ b)` fitted in closed form (ridge least squares, float64) on calibration activations repairs the residual stream at each gap",
    "diag": "a per-channel ratio of mean magnitudes after and before the gap (LinearPatch-D) repairs the residual stream at each gap",
    "rotate": "the same ratio in a Hadamard basis, applied as the d×d map `H·D·Hᵀ` (LinearPatch-R), repairs the residual stream at each gap",
    "scale": "one magnitude scalar per gap (Prune&Comp) is folded into the residual-writing weights of the layers after the gap (exact up to the norms' eps)",
    "replaceme": "a least-squares linear map on the MLP output of the layer before each gap (ReplaceMe) is folded into that layer's MLP output projection",
    "none": "no recovery",
}


def prune(
    model: PathLike,
    out: PathLike,
    *,
    remove: str | Sequence[Any] | None = None,
    auto: int | None = None,
    metric: str = "angular",
    recover: str = "ghost",
    calib: PathLike = DEFAULT_CALIB,
    calib_tokens: int = 8192,
    seqlen: int = 512,
    batch_size: int = 4,
    damp: float | None = None,
    damp_abs: float | None = None,
    bias: bool = False,
    sequential: bool = False,
    max_boundaries: int | None = None,
    normalise: str = "delta",
    force: bool = False,
    max_shard_bytes: int | None = None,
    hash_inputs: bool = False,
    hash_outputs: bool = True,
    fsync: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Remove decoder layers from ``model`` and repair the gap(s); write the result to ``out``.

    ``remove``: ``"3:5"`` (a block), ``"3,7,9"`` (scattered layers) or mixed; or ``auto=N``
    with ``metric`` (``bi``: the N lowest-influence layers; ``angular``/``cosine``/``residual``:
    the best block of N; ``residual-greedy``: N layers one at a time, each scored on the model
    pruned so far, :mod:`layergraft.prune.greedy`; the residual normalised by ``normalise``,
    :data:`~layergraft.prune.residual.NORMS`). ``recover`` is one of ``ghost`` (default), ``replaceme``, ``diag``, ``scale``,
    ``none``; ``rotate`` is LinearPatch-R. ``damp`` is the ghost and ReplaceMe fits' relative
    ridge, ``damp_abs`` an absolute one instead (the paper's ``1e-6``:
    :class:`~layergraft.prune.recover.Damp`). The model computes in ``dtype`` on ``device`` (or across ``device_map``);
    calibration statistics are float64 on each boundary's device either way. Returns the
    provenance record (also written as ``layergraft.json``).
    """
    if recover not in R.METHODS:
        raise InputError(f"unknown --recover {recover!r}; choose one of {', '.join(R.METHODS)}")
    damp = check_damp(damp, damp_abs)
    check_norm(normalise)
    # everything config.json, the paths and the arguments can tell, before any model loads
    inp = open_input(
        model, calib=calib, remove=remove, auto=auto, allow_pickle=allow_pickle,
        outputs=[(out, "dir", "output", force)], check_finite=False,
    )  # fmt: skip
    ck = inp.ck
    assert ck is not None
    if recover == "rotate":
        R.check_rotate(ck.adapter.hidden_size)
    # NaN/Inf weights would poison the calibration statistics (or crash the solve) long
    # before the writer's own scan could name them: refuse them here, by tensor and file
    ck.check_finite()
    job = load_job(
        inp, calib=calib, calib_tokens=calib_tokens, seqlen=seqlen, batch_size=batch_size,
        device=device, dtype=dtype, device_map=device_map,
    )  # fmt: skip
    gaps = job.gaps(remove, auto, metric, damp=damp, max_boundaries=max_boundaries, norm=normalise)
    warn_greedy_fit(auto, metric, sequential)
    pruned = prune_model(
        job.model, job.adapter, gaps, recover, job.batches, damp=damp, bias=bias,
        sequential=sequential, progress=progress,
    )  # fmt: skip
    n, rtext = ck.adapter.num_layers, format_ranges(gaps)
    ghosted = any(op.is_ghost for op in pruned.ops)
    load = (
        "Load with `layergraft.load_model(DIR)` or `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` "
        "(the ghost operators live in `ghost.safetensors`; `modeling_layergraft_ghost.py` inserts them)."
        if ghosted
        else "A standard checkpoint: loads with `AutoModelForCausalLM.from_pretrained(DIR)`, no remote code."
    )
    return write_model_dir(
        out,
        operation="prune",
        inputs={"model": ck},
        sidecars_from=ck,
        tensors=pruned_tensors(ck, pruned, job.adapter),
        extra=finish_pruned_dir(ck, pruned, job.adapter, hash_outputs=hash_outputs, fsync=fsync),
        recipe={
            "model": ck.origin,
            "remove": rtext,
            "recover": recover,
            "calib": str(calib),
            "calib_tokens": calib_tokens,
            "seqlen": seqlen,
            **damp.as_json(),
            "bias": bias,
            "sequential": sequential,
        },
        details={
            "removed": rtext,
            "ranges": [list(g) for g in gaps],
            "kept_layers": pruned.keep,
            "num_layers": {"before": n, "after": len(pruned.keep)},
            "recover": recover,
            "fit": "sequential" if sequential else "dense",
            "operators": pruned.describe(),
            "selection": job.selection,
            "calibration": {
                "file": str(calib),
                "tokens": sum(b.n_tokens for b in job.batches),
                "seqlen": seqlen,
                "batch_size": batch_size,
            },
            "needs_remote_code": ghosted,
            "family": ck.adapter.family,
        },
        title=f"{Path(ck.origin).name} with layers {rtext} removed ({recover})",
        summary=f"Layer pruning: decoder layers `{rtext}` (0-based, end excluded) of `{ck.origin}` were removed "
        f"({n} -> {len(pruned.keep)} layers; `layer_idx` renumbered, per-layer config lists sliced), "
        f"and {_HOW[recover]}. {load}",
        force=force,
        max_shard_bytes=max_shard_bytes,
        hash_inputs=hash_inputs,
        hash_outputs=hash_outputs,
        fsync=fsync,
        progress=progress,
        desc=f"write {Path(out).name}",
        command=command,
    )
