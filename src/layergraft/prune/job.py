"""What every pruning command does before its real work: validate, load, batch, choose gaps.

Why one module: ``prune``, ``compare-recovery`` and ``scores`` all turn (model, calibration
text, ``--remove`` or ``--auto``) into the same four things — a loaded model, its adapter,
calibration batches and the gaps to cut — and must refuse bad input the same way, in the same
order: everything cheap (paths, ranges, text, output target) before anything expensive
(reading all weights for the NaN/Inf check, loading the model, a scoring pass).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layergraft.arch import ModelAdapter, adapter_for_model
from layergraft.arch.spec import spec_for
from layergraft.checkpoint.outputs import check_output
from layergraft.checkpoint.reader import Checkpoint, open_checkpoint
from layergraft.errors import InputError
from layergraft.models.batching import fit_context
from layergraft.models.ghost import ATTR
from layergraft.models.load import load_model, load_tokenizer, require_transformers_family
from layergraft.prune.cut import merge_adjacent, parse_removal
from layergraft.prune.greedy import greedy_residual
from layergraft.prune.importance import METRICS, auto_removal, block_scores, check_block_size
from layergraft.prune.recover import Damp, as_damp
from layergraft.prune.repaired import LOSS_METRICS, loss_selection
from layergraft.prune.residual import residual_scores
from layergraft.ranges import Range
from layergraft.text import Batch, read_text, text_batches

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
#: a model path, or an already loaded ``(model, tokenizer)`` pair
ModelLike = PathLike | tuple[Any, Any]
#: the selections by the ghost fit's own residual (:mod:`layergraft.prune.residual`)
RESIDUAL_METRICS: tuple[str, ...] = ("residual", "residual-greedy")
#: the selections that fit a ghost per candidate on the dense model (``--damp``): by its
#: residual, or by the repaired model's calibration loss (:mod:`layergraft.prune.repaired`)
REPAIR_METRICS: tuple[str, ...] = (*RESIDUAL_METRICS, *LOSS_METRICS)
#: how ``--auto N`` can choose
AUTO_METRICS: tuple[str, ...] = (*METRICS, *REPAIR_METRICS)


def calibration_batches(
    tokenizer: Any,
    data: PathLike,
    *,
    n_tokens: int,
    seqlen: int,
    batch_size: int,
    what: str = "calibration",
) -> list[Batch]:
    """The first ``n_tokens`` tokens of the text file ``data``, cut into batches of rows."""
    return text_batches(
        tokenizer,
        read_text(data, what),
        n_tokens=n_tokens,
        seqlen=seqlen,
        batch_size=batch_size,
        what=what,
    )


def resolve_gaps(
    model: Any,
    adapter: ModelAdapter,
    batches: Sequence[Batch],
    remove: Any,
    auto: int | None,
    metric: str,
    *,
    damp: Damp | float | None = None,
    max_boundaries: int | None = None,
    norm: str = "delta",
) -> tuple[list[Range], dict[str, Any] | None]:
    """The gaps to cut, and how they were chosen (None for ``remove``): ``remove`` as given,
    or ``auto`` layers chosen by ``metric`` — one scoring pass over ``batches``; for
    ``residual-greedy`` one pass per step (:mod:`layergraft.prune.greedy`); ``loss`` and
    ``loss-greedy`` also run every candidate on held-in rows (:mod:`layergraft.prune.repaired`).
    ``damp``, ``max_boundaries`` and ``norm``: the residual metrics' (the ghost fit's damping
    by default; :data:`~layergraft.prune.residual.NORMS`; the loss metrics take no ``norm``)."""
    n = len(adapter.layers(model))
    if (remove is None) == (auto is None):
        raise InputError("give exactly one of --remove RANGES and --auto N")
    if remove is not None:
        return parse_removal(remove, n), None
    if metric not in AUTO_METRICS:
        raise InputError(f"unknown --metric {metric!r}; choose one of {', '.join(AUTO_METRICS)}")
    check_block_size(auto, n, "--auto")
    how: dict[str, Any] = {"auto": int(auto), "metric": metric}
    if metric in LOSS_METRICS:
        damp = as_damp(damp)
        return loss_selection(model, adapter, batches, int(auto), metric, damp=damp, max_boundaries=max_boundaries)  # fmt: skip
    if metric in RESIDUAL_METRICS:
        damp = as_damp(damp)
        how |= {**damp.as_json(), "normalise": norm}
        kw = {"damp": damp, "max_boundaries": max_boundaries, "norm": norm}
        if metric == "residual-greedy":
            gaps, how["steps"] = greedy_residual(model, adapter, batches, int(auto), **kw)
            return gaps, how
        sc = residual_scores(model, adapter, batches, block=int(auto), **kw)
        how["scores"] = sc.as_json()["blocks"]
        how["residual"] = dict(sc.blocks)[sc.best]
        return [sc.best], how
    gaps = auto_removal(
        lambda b, mt: block_scores(model, adapter, batches, block=b, metric=mt), int(auto), metric
    )
    return merge_adjacent(gaps), how


def refuse_ghosted_selection(inp: PruneInput, metric: str, auto: int | None = 0) -> None:
    """A residual selection scores the repair of the dense model: an already pruned
    (ghosted) input has no dense layers to score, so it is refused before it is loaded, as
    ``prune`` refuses it. ``auto=None`` (layers given by ``--remove``): nothing to check."""
    if auto is None or metric not in REPAIR_METRICS:
        return
    if inp.ck is not None:
        ghosted = "layergraft_ghost" in inp.ck.config
    else:
        ghosted = getattr(inp.spec[0], ATTR, None) is not None  # type: ignore[index]
    if ghosted:
        raise InputError(
            f"{inp.origin} is a ghosted layergraft output (already pruned); --metric {metric} scores the repair "
            "of a dense model: give the original model"
        )


def warn_greedy_fit(auto: int | None, metric: str, sequential: bool) -> None:
    """``residual-greedy`` scores each layer as the sequential fit repairs it; a dense fit of
    the chosen gaps is allowed, but it is not what was scored."""
    if auto is not None and metric in ("residual-greedy", "loss-greedy") and not sequential:
        log.warning(
            "%s chose the layers for a sequential fit; add --sequential to fit them so", metric
        )


@dataclass
class PruneInput:
    """A validated input model, nothing loaded yet: ``ck`` is None for an in-memory model."""

    spec: ModelLike
    ck: Checkpoint | None
    origin: str

    @property
    def paths(self) -> list[Any]:
        return [self.ck.path] if self.ck is not None else []


#: an output a command will write: (path, kind "file" or "dir", flag, force)
Output = tuple[PathLike, str, str, bool]


def config_layer_count(ck: Checkpoint) -> int | None:
    """The decoder layer count from config.json alone, for a family layergraft knows (no
    transformers import, no weights read); None where only the loaded model can say (an
    unknown family, found by discovery; a ghosted output)."""
    if "layergraft_ghost" in ck.config:
        return None
    if spec_for(ck.config.get("model_type"), ck.config.get("architectures")) is None:
        return None
    return ck.adapter.num_layers


def check_layer_args(n: int, remove: Any = None, auto: int | None = None, block: int | None = None) -> None:  # fmt: skip
    """``--remove``, ``--auto`` and ``--block`` against a model of ``n`` layers."""
    if remove is not None:
        parse_removal(remove, n)
    if auto is not None:
        check_block_size(auto, n, "--auto")
    if block is not None:
        check_block_size(block, n)


def open_input(
    model: ModelLike,
    *,
    calib: PathLike,
    remove: Any = None,
    auto: int | None = None,
    block: int | None = None,
    outputs: Sequence[Output] = (),
    allow_pickle: bool = False,
    accept_ghosted: bool = False,
    check_finite: bool = True,
) -> PruneInput:
    """Validate everything that costs milliseconds, before any model loads: the model path,
    ``remove``/``auto``/``block`` against the layer count in config.json, every path in
    ``outputs`` (:func:`~layergraft.checkpoint.outputs.check_output`: not an input, writable),
    the calibration text; then that transformers can build the model (ghosted outputs only
    where ``accept_ghosted``: they can be evaluated, not pruned again; this imports
    transformers, seconds); then, with ``check_finite``, refuse NaN/Inf weights before they
    poison calibration statistics (this reads every weight once: loading cannot check it,
    offloaded layers hold no values). An unknown family's layer count is known only once
    its adapter is found: its layer arguments are checked then, still before loading."""
    if isinstance(model, tuple):
        for path, kind, flag, force in outputs:
            check_output(path, kind=kind, flag=flag, force=force)
        read_text(calib, "calibration")
        return PruneInput(model, None, getattr(model[0].config, "_name_or_path", "<in memory>"))
    ck = open_checkpoint(model, validate_arch=False, allow_pickle=allow_pickle)
    n = config_layer_count(ck)
    if n is not None:
        check_layer_args(n, remove, auto, block)
    for path, kind, flag, force in outputs:
        check_output(path, inputs=[ck], kind=kind, flag=flag, force=force)
    read_text(calib, "calibration")
    if not accept_ghosted:
        require_transformers_family(ck)
        _ = ck.adapter
        if n is None:
            check_layer_args(ck.adapter.num_layers, remove, auto, block)
    if check_finite:
        ck.check_finite()
    return PruneInput(model, ck, str(model))


@dataclass
class PruneJob:
    """A loaded model with its adapter and calibration batches."""

    model: Any
    tokenizer: Any
    adapter: ModelAdapter
    origin: str
    batches: list[Batch]

    #: how the last :meth:`gaps` chose them (None for ``--remove``), for the record
    selection: dict[str, Any] | None = None

    def gaps(
        self,
        remove: Any,
        auto: int | None,
        metric: str,
        *,
        damp: Damp | float | None = None,
        max_boundaries: int | None = None,
        norm: str = "delta",
    ) -> list[Range]:
        """:func:`resolve_gaps` on this model and its calibration batches."""
        gaps, self.selection = resolve_gaps(
            self.model, self.adapter, self.batches, remove, auto, metric,
            damp=damp, max_boundaries=max_boundaries, norm=norm,
        )  # fmt: skip
        return gaps


def load_job(
    inp: PruneInput,
    *,
    calib: PathLike,
    calib_tokens: int,
    seqlen: int,
    batch_size: int,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> PruneJob:
    """Load the model (or take the in-memory one) and batch the calibration text."""
    if inp.ck is None:
        model, tok = inp.spec  # type: ignore[misc]
    else:
        model = load_model(inp.ck.path, device=device, dtype=dtype, device_map=device_map)
        tok = load_tokenizer(inp.ck.path)
    adapter = adapter_for_model(model)
    seqlen = fit_context(seqlen, adapter.context_length, "--seqlen")
    batches = calibration_batches(
        tok, calib, n_tokens=calib_tokens, seqlen=seqlen, batch_size=batch_size
    )
    return PruneJob(model, tok, adapter, inp.origin, batches)
