"""Public API of the pruning side: ``scores``, ``prune``, ``ppl``, ``lm_eval``,
``compare_recovery`` and ``load_model``. The CLI calls these and nothing more.

Like :func:`layergraft.api.restore`, each writing function validates everything it can before
the expensive part (paths, ranges, output target, calibration text), writes through an
atomic temp directory, and returns a JSON-ready record.

A ``model`` argument is a path (directory, ``.gguf`` file, hub id) or an already loaded
``(model, tokenizer)`` pair; models are loaded in float32 on CPU unless ``device_map`` says
otherwise (calibration statistics are float64 either way).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layergraft.errors import InputError

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
ModelLike = PathLike | tuple[Any, Any]

__all__ = ["compare_recovery", "lm_eval", "load_model", "ppl", "prune", "scores"]

DATA_DIR = Path(__file__).parent / "data" / "text"
DEFAULT_CALIB = DATA_DIR / "calib.txt"
DEFAULT_HELDOUT = DATA_DIR / "heldout.txt"


# ---- loading ---------------------------------------------------------------------------------
# One loader for the whole package (layergraft.loading); these names are this module's API.
from layergraft.loading import load_model, load_tokenizer  # noqa: E402


def _model_and_tokenizer(model: ModelLike, device_map: Any = None) -> tuple[Any, Any, str]:
    if isinstance(model, tuple):
        return model[0], model[1], getattr(model[0].config, "_name_or_path", "<in memory>")
    return load_model(model, device_map=device_map), load_tokenizer(model), str(model)


def _batches(
    tokenizer: Any, data: PathLike, n_tokens: int, seqlen: int, batch_size: int, what: str
):
    from layergraft.calibrate import read_text, text_batches

    return text_batches(
        tokenizer,
        read_text(data, what),
        n_tokens=n_tokens,
        seqlen=seqlen,
        batch_size=batch_size,
        what=what,
    )


# ---- scores ----------------------------------------------------------------------------------
def scores(
    model: ModelLike,
    data: PathLike = DEFAULT_CALIB,
    *,
    block: int = 1,
    metric: str = "angular",
    tokens: str = "all",
    n_tokens: int = 8192,
    seqlen: int = 512,
    batch_size: int = 4,
    plot: PathLike | None = None,
    device_map: Any = None,
) -> dict[str, Any]:
    """Score every contiguous block of ``block`` layers (see :mod:`layergraft.select`)."""
    from layergraft.arch import adapter_for_model
    from layergraft.select import block_scores, plot_scores

    m, tok, origin = _model_and_tokenizer(model, device_map)
    batches = _batches(tok, data, n_tokens, seqlen, batch_size, "scoring")
    sc = block_scores(m, adapter_for_model(m), batches, block=block, metric=metric, tokens=tokens)
    out = sc.as_json()
    out["model"] = origin
    if plot is not None:
        out["plot"] = str(plot_scores(sc, plot))
    return out


# ---- prune -----------------------------------------------------------------------------------
def _resolve_gaps(
    m: Any, adapter: Any, batches: Any, remove: Any, auto: int | None, metric: str
) -> list[tuple[int, int]]:
    from layergraft.select import auto_removal, block_scores
    from layergraft.surgery.prune import merge_adjacent, parse_removal

    n = len(adapter.layers(m))
    if (remove is None) == (auto is None):
        raise InputError("give exactly one of --remove RANGES and --auto N")
    if remove is not None:
        return parse_removal(remove, n)
    if not 1 <= int(auto) < n:
        raise InputError(f"--auto {auto} must be between 1 and {n - 1} for this {n}-layer model")
    gaps = auto_removal(
        lambda b, mt: block_scores(m, adapter, batches, block=b, metric=mt), int(auto), metric
    )
    return merge_adjacent(gaps)


def prune(
    model: PathLike,
    out: PathLike,
    *,
    remove: str | Sequence[Any] | None = None,
    auto: int | None = None,
    metric: str = "bi",
    recover: str = "ghost",
    calib: PathLike = DEFAULT_CALIB,
    calib_tokens: int = 8192,
    seqlen: int = 512,
    batch_size: int = 4,
    damp: float | None = None,
    bias: bool = False,
    sequential: bool = False,
    force: bool = False,
    max_shard_bytes: int | None = None,
    hash_inputs: bool = False,
    allow_pickle: bool = False,
    device_map: Any = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Remove decoder layers from ``model`` and repair the gap(s); write the result to ``out``.

    ``remove``: ``"3:5"`` (a block), ``"3,7,9"`` (scattered layers) or mixed; or ``auto=N``
    with ``metric`` (``bi``: the N lowest-influence layers; ``angular``/``cosine``: the best
    block of N). ``recover`` is one of ``ghost`` (default), ``replaceme``, ``diag``, ``scale``,
    ``none``. Returns the provenance record (also written as ``layergraft.json``).
    """
    from layergraft.arch import adapter_for_model
    from layergraft.io.atomic import atomic_dir, check_output_target
    from layergraft.io.provenance import (
        RECIPE_NAME,
        build_provenance,
        write_model_card,
        write_provenance,
    )
    from layergraft.ranges import format_ranges
    from layergraft.recipe import dump_recipe
    from layergraft.surgery import recover as R
    from layergraft.surgery.prune import parse_removal, prune_model, write_pruned

    if recover not in R.METHODS:
        raise InputError(f"unknown --recover {recover!r}; choose one of {', '.join(R.METHODS)}")
    damp = R.DEFAULT_DAMP if damp is None else float(damp)
    if damp < 0:
        raise InputError(f"--damp must be >= 0 (got {damp})")
    from layergraft.loading import open_loadable

    ck = open_loadable(model, allow_pickle=allow_pickle)
    n = ck.adapter.num_layers
    if remove is not None:
        parse_removal(remove, n)  # fail fast, before loading anything
    target = check_output_target(out, force=force, inputs=[ck.path])
    from layergraft.calibrate import read_text

    read_text(calib, "calibration")  # validate before loading the model
    # NaN/Inf weights would poison the calibration statistics (or crash the solve) long
    # before the writer's own scan could name them: refuse them here, by tensor and file
    ck.check_finite()
    m = load_model(ck.path, device_map=device_map)
    tok = load_tokenizer(ck.path)
    batches = _batches(tok, calib, calib_tokens, seqlen, batch_size, "calibration")
    adapter = adapter_for_model(m)
    gaps = _resolve_gaps(m, adapter, batches, remove, auto, metric)
    pruned = prune_model(
        m, adapter, gaps, recover, batches, damp=damp, bias=bias, sequential=sequential
    )
    rtext = format_ranges(gaps)
    keep = pruned.keep
    with atomic_dir(target, force=force, inputs=[ck.path]) as tmp:
        files = write_pruned(ck, pruned, adapter, tmp, max_shard_bytes=max_shard_bytes)
        recipe = {
            "model": ck.origin,
            "remove": rtext,
            "recover": recover,
            "calib": str(calib),
            "calib_tokens": calib_tokens,
            "seqlen": seqlen,
            "damp": damp,
            "bias": bias,
            "sequential": sequential,
        }
        (tmp / RECIPE_NAME).write_text(dump_recipe("prune", recipe))
        ghosted = any(op.is_ghost for op in pruned.ops)
        prov = build_provenance(
            "prune",
            inputs={"model": ck.fingerprint(hash_inputs)},
            outputs=files,
            details={
                "removed": rtext,
                "ranges": [list(g) for g in gaps],
                "kept_layers": keep,
                "num_layers": {"before": n, "after": len(keep)},
                "recover": recover,
                "fit": "sequential" if sequential else "dense",
                "operators": pruned.describe(),
                "selection": {"auto": auto, "metric": metric} if auto is not None else None,
                "calibration": {
                    "file": str(calib),
                    "tokens": sum(b.n_tokens for b in batches),
                    "seqlen": seqlen,
                    "batch_size": batch_size,
                },
                "needs_remote_code": ghosted,
                "family": ck.adapter.family,
            },
            command=command,
        )
        write_provenance(tmp, prov)
        write_model_card(tmp, _card(ck.origin, rtext, recover, n, len(keep), ghosted, prov))
    return prov


def _card(origin: str, rtext: str, recover: str, n: int, k: int, ghosted: bool, prov: dict) -> str:
    from layergraft.io.provenance import model_card

    how = {
        "ghost": "a ghost operator `h -> h + h·Δ (+ b)` fitted in closed form (ridge least squares, float64) on calibration activations repairs the residual stream at each gap",
        "diag": "a per-channel magnitude ratio (LinearPatch-D) repairs the residual stream at each gap",
        "scale": "one magnitude scalar per gap (Prune&Comp) is folded into the residual-writing weights of the layers after the gap (exact up to the norms' eps)",
        "replaceme": "a least-squares linear map on the MLP output of the layer before each gap (ReplaceMe) is folded into that layer's MLP output projection",
        "none": "no recovery",
    }[recover]
    load = (
        "Load with `layergraft.load_model(DIR)` or `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` "
        "(the ghost operators live in `ghost.safetensors`; `modeling_layergraft_ghost.py` inserts them)."
        if ghosted
        else "A standard checkpoint: loads with `AutoModelForCausalLM.from_pretrained(DIR)`, no remote code."
    )
    return model_card(
        f"{Path(origin).name} with layers {rtext} removed ({recover})",
        f"Layer pruning: decoder layers `{rtext}` (0-based, end excluded) of `{origin}` were removed "
        f"({n} -> {k} layers; `layer_idx` renumbered, per-layer config lists sliced), and {how}. {load}",
        prov,
    )


# ---- perplexity ------------------------------------------------------------------------------
def ppl(
    model: ModelLike,
    data: PathLike = DEFAULT_HELDOUT,
    *,
    seqlen: int = 2048,
    stride: int | None = None,
    max_tokens: int | None = None,
    device_map: Any = None,
) -> dict[str, Any]:
    """Token-level perplexity on a text file (definition in the result's ``definition``)."""
    from layergraft.calibrate import read_text, tokenize
    from layergraft.metrics.perplexity import perplexity

    text = read_text(data, "evaluation")
    m, tok, origin = _model_and_tokenizer(model, device_map)
    ids = tokenize(tok, text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    out = perplexity(m, ids, seqlen=seqlen, stride=stride)
    out.update({"model": origin, "data": str(data)})
    return out


# ---- lm-eval ---------------------------------------------------------------------------------
def lm_eval(
    model: ModelLike,
    tasks: str | Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device_map: Any = None,
) -> dict[str, Any]:
    """Run lm-evaluation-harness on the model in memory (see :mod:`layergraft.evaluate`)."""
    from layergraft.evaluate import run_lm_eval

    m, tok, origin = _model_and_tokenizer(model, device_map)
    out = run_lm_eval(m, tok, tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size)
    out["model"] = origin
    return out


# ---- comparison ------------------------------------------------------------------------------
def _n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def compare_recovery(
    model: ModelLike,
    *,
    remove: str | Sequence[Any] | None = None,
    auto: int | None = None,
    metric: str = "bi",
    methods: Sequence[str] | None = None,
    calib: PathLike = DEFAULT_CALIB,
    data: PathLike = DEFAULT_HELDOUT,
    calib_tokens: int = 8192,
    seqlen: int = 512,
    batch_size: int = 4,
    ppl_seqlen: int = 512,
    ppl_max_tokens: int | None = None,
    damp: float | None = None,
    bias: bool = False,
    sequential: bool = False,
    tasks: str | Sequence[str] | None = None,
    limit: int | float | None = None,
    device_map: Any = None,
) -> dict[str, Any]:
    """Every recovery method on the same removal, fitted from one set of statistics, with
    parameter count, held-out perplexity (and lm-eval accuracy when ``tasks``) per method,
    plus the dense model as the reference row."""
    from layergraft.arch import adapter_for_model
    from layergraft.calibrate import collect_gap_stats, read_text, tokenize
    from layergraft.metrics.perplexity import definition, perplexity
    from layergraft.ranges import format_ranges
    from layergraft.surgery import recover as R
    from layergraft.surgery.prune import prune_model

    methods = list(methods or R.METHODS)
    bad = [x for x in methods if x not in R.METHODS]
    if bad:
        raise InputError(f"unknown recovery method {bad[0]!r}; choose from {', '.join(R.METHODS)}")
    damp = R.DEFAULT_DAMP if damp is None else float(damp)
    held = read_text(data, "evaluation")
    read_text(calib, "calibration")
    if not isinstance(model, tuple):  # as in prune: no fit on NaN/Inf weights (ghosted too)
        from layergraft.io.checkpoint import open_checkpoint

        open_checkpoint(model, validate_arch=False).check_finite()
    dense, tok, origin = _model_and_tokenizer(model, device_map)
    adapter = adapter_for_model(dense)
    batches = _batches(tok, calib, calib_tokens, seqlen, batch_size, "calibration")
    gaps = _resolve_gaps(dense, adapter, batches, remove, auto, metric)
    if "replaceme" in methods and gaps[0][0] == 0:
        log.warning("replaceme skipped: gap %d:%d starts at layer 0", *gaps[0])
        methods.remove("replaceme")
    post_norm = getattr(adapter.layers(dense)[0], "post_feedforward_layernorm", None) is not None
    if "replaceme" in methods and post_norm:
        log.warning("replaceme skipped: %s normalises the MLP output (no fold)", adapter.family)
        methods.remove("replaceme")
    ids = tokenize(tok, held)[: ppl_max_tokens or None]

    def evaluate(m: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"params": _n_params(m)}
        row["ppl"] = perplexity(m, ids, seqlen=ppl_seqlen)["ppl"]
        if tasks:
            from layergraft.evaluate import run_lm_eval

            res = run_lm_eval(m, tok, tasks, limit=limit)
            row["lm_eval"] = {t: v.get("acc") for t, v in res["results"].items()}
        return row

    rows = [{"method": "dense", **evaluate(dense)}]
    stats = None
    if not sequential and any(x != "none" for x in methods):
        stats = collect_gap_stats(dense, adapter, batches, gaps, mlp="replaceme" in methods)
    for method in methods:
        m = copy.deepcopy(dense)
        p = prune_model(
            m,
            adapter,
            gaps,
            method,
            batches,
            damp=damp,
            bias=bias,
            sequential=sequential,
            stats=stats,
        )
        rows.append({"method": method, **evaluate(p.model), "operators": p.describe()})
        del m, p
    return {
        "model": origin,
        "removed": format_ranges(gaps),
        "fit": "sequential" if sequential else "dense",
        "calibration": {"file": str(calib), "tokens": sum(b.n_tokens for b in batches)},
        "heldout": {"file": str(data), "tokens": len(ids)},
        "ppl_definition": definition(ppl_seqlen),
        "rows": rows,
    }
