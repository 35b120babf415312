"""Block selection by the repair's own residual: how much of a block's work a ghost cannot redo.

Why: angular distance, block influence and cosine ask how much layers change the residual
stream. Ghost repair replaces the layers by a linear map ``W = I + M``, so the question that
matters for it is how well a linear map can stand in for them. For a block ``[s, s+n)`` the
ghost fit minimises ``‖X_s M − Δ‖² + λ‖M‖²`` with ``Δ = X_{s+n} − X_s``; its normalised residual
``‖X_s M* − Δ‖² / ‖Δ‖²`` (0: on these samples the block *is* a linear map; 1: none of its work
can be redone linearly) follows in closed form from the fit's own second moments
(:func:`~layergraft.prune.recover.normalised_residual`), with the ghost fit's damping, from one
streaming float64 pass over the calibration batches (:func:`collect_gap_stats`).

Memory: each candidate block holds two d×d float64 matrices at its start boundary,
``X_sᵀX_s`` and ``X_sᵀΔ`` (``X_sᵀX_{s+n}`` less the first: accumulating the difference directly
loses no digits to cancellation): ``16·d²`` bytes per boundary, 5 MiB at d = 576, 1 GiB at
d = 8192. All candidates in one pass is the default; ``max_boundaries`` splits them into several
passes over the same batches. A request that would take more than :data:`MEMORY_SHARE` of the
memory available on a boundary's device is refused before the pass, naming the option.

Samples: with fewer samples than channels a ridge fit with little damping interpolates, and every
block's residual is close to 0: a ranking of noise, so the metric refuses it. Above that the
residual is in-sample, optimistic by roughly ``d / n`` for every block alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from layergraft.errors import InputError
from layergraft.models.offload import execution_device
from layergraft.prune.calibrate import TOKENS, GapStats, collect_gap_stats, sample_mask
from layergraft.prune.importance import Scores
from layergraft.prune.recover import DEFAULT_DAMP, Damp, as_damp, fit_ghost
from layergraft.text import Batch

#: refuse a pass whose statistics would take more than this share of the available memory
MEMORY_SHARE = 0.8
#: how a residual is normalised: by the block's own change (``delta``, as issue 21 defines it)
#: or token by token by the stream after the block (``token``)
NORMS: tuple[str, ...] = ("delta", "token")
#: d×d float64 matrices per boundary: ``X_sᵀX_s`` and ``X_sᵀΔ``, and for ``token`` the same
#: two weighted by ``1 / ‖x_{s+n}‖²``
MATRICES = {"delta": 2, "token": 4}


def boundary_bytes(d: int, norm: str = "delta") -> int:
    """Bytes of the statistics one candidate boundary holds: 2 (``token``: 4) d×d float64."""
    return MATRICES[norm] * 8 * d * d


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise InputError(f"unknown --normalise {norm!r}; choose one of {', '.join(NORMS)}")


def _gib(n: float) -> str:
    if n >= 2**28:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def available_bytes(device: Any) -> int | None:
    """Memory free for new tensors on ``device`` (CPU: the kernel's MemAvailable; CUDA: the
    driver's free memory); None where unknown (the check is then skipped)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_max_boundaries(max_boundaries: int | None) -> None:
    if max_boundaries is not None and max_boundaries < 1:
        raise InputError(f"--max-boundaries must be at least 1 (got {max_boundaries})")


def check_memory(
    per_device: dict[Any, int],
    d: int,
    *,
    max_boundaries: int | None = None,
    norm: str = "delta",
    fix_block: bool = True,
    available: Callable[[Any], int | None] | None = None,
) -> None:
    """Refuse, before any pass, statistics that would not fit: ``per_device`` maps a device to
    the candidate boundaries whose statistics live there (a pass holds at most
    ``max_boundaries`` of them). ``fix_block``: the command has a ``--block`` to name too.
    ``available``: bytes free on a device (default :func:`available_bytes`)."""
    check_max_boundaries(max_boundaries)
    available = available or available_bytes
    per = boundary_bytes(d, norm)
    for dev, count in per_device.items():
        held = min(count, max_boundaries) if max_boundaries else count
        need, free = held * per, available(dev)
        if free is None or need <= MEMORY_SHARE * free:
            continue
        fit = int(MEMORY_SHARE * free // per)
        if fit >= 1:
            fix = f"pass --max-boundaries {fit} (one pass over the calibration text per {fit} boundaries)"
            fix += " or a larger --block" if fix_block else ""
        else:
            fix = f"free memory or use a device with more (one boundary alone needs {_gib(per)})"
        raise InputError(
            f"--metric residual would hold {held} boundaries × {MATRICES[norm]} d×d float64 matrices "
            f"(d = {d}): {_gib(need)} on {dev}, more than {MEMORY_SHARE:.0%} of the {_gib(free)} available; {fix}"
        )


def count_samples(batches: Sequence[Batch], tokens: str = "all") -> int:
    return sum(int(sample_mask(b.attention_mask, tokens).sum()) for b in batches)


def check_samples(
    batches: Sequence[Batch], d: int, tokens: str = "all", metric: str = "residual"
) -> int:
    """The number of samples, refusing fewer than the hidden size ``d`` (module doc: every
    block would fit almost exactly), with the minimum named; ``metric`` names the selection
    in the message."""
    n = count_samples(batches, tokens)
    if n >= d:
        return n
    if tokens == "last":
        seqlen = max(int(b.input_ids.shape[1]) for b in batches)
        raise InputError(
            f"--metric {metric} with --tokens last has {n} samples (one per calibration row), fewer than the hidden size {d}, "
            f"so every block would fit exactly; give at least {d} rows (--calib-tokens {d * seqlen} at --seqlen {seqlen}) or use --tokens all"
        )
    raise InputError(
        f"--metric {metric} has {n} calibration tokens, fewer than the hidden size {d}, so every block would fit exactly; "
        f"raise --calib-tokens to at least {d} (with a calibration text that long)"
    )


def boundary_device(model: Any, adapter: Any, b: int) -> Any:
    """Where the statistics of a fit starting at boundary ``b`` accumulate (its layer's device)."""
    layers = adapter.layers(model)
    return execution_device(layers[min(b, len(layers) - 1)])


def per_device(model: Any, adapter: Any, starts: Sequence[int]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for s in starts:
        dev = boundary_device(model, adapter, s)
        out[dev] = out.get(dev, 0) + 1
    return out


def chunks(items: Sequence[Any], size: int | None) -> Iterator[list[Any]]:
    size = size or len(items) or 1
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def residual_of(st: GapStats, damp: Damp | float, norm: str = "delta") -> dict[str, float]:
    """The residual of the ghost fit on ``st`` as ``score`` (normalised by ``norm``), beside
    ``residual`` (``‖X M* − Δ‖² / ‖Δ‖²``), ``stream_residual`` (the same error over
    ``‖X_{s+n}‖²``) and, from weighted statistics, ``token_residual``: the mean over tokens of
    ``‖x_t M* − Δ_t‖² / ‖x_{s+n,t}‖²``, each token's error relative to its own stream — what the
    next layer's norm sees, so one token with a massive activation cannot outweigh the rest."""
    op = fit_ghost(st, damp)
    post = float(st.post_sq.sum())
    absolute = (op.residual or 0.0) * (op.delta_sq or 0.0)
    out = {"residual": float(op.residual or 0.0), "stream_residual": absolute / post if post > 0 else 0.0}  # fmt: skip
    if st.weighted:
        m = op.delta
        fitted = float((m * (st.wxtx @ m)).sum()) - 2.0 * float((m * st.wxtd).sum())
        out["token_residual"] = max(fitted + st.wdd, 0.0) / st.n
    out["score"] = out["token_residual"] if norm == "token" else out["residual"]
    return out


#: what the score of each normalisation is, for the record
DEFINITIONS = {
    "delta": "‖X_s M* − Δ‖² / ‖Δ‖² of the ghost fit W = I + M* of block [s, s+n), Δ = X_{s+n} − X_s, "
    "same damping as the fit, on the calibration samples",
    "token": "mean over calibration tokens of ‖x_s M* − Δ‖² / ‖x_{s+n}‖², the error the ghost fit W = I + M* of "
    "block [s, s+n) leaves, relative to each token's stream after the block (same fit and damping)",
}


def residual_scores(
    model: Any,
    adapter: Any,
    batches: Sequence[Batch],
    *,
    block: int = 1,
    tokens: str = "all",
    damp: Damp | float = DEFAULT_DAMP,
    max_boundaries: int | None = None,
    norm: str = "delta",
) -> Scores:
    """Every contiguous block of ``block`` layers scored by its ghost fit's residual,
    normalised by ``norm`` (lowest = most removable), statistics of ``max_boundaries``
    blocks per pass."""
    n_layers, d = len(adapter.layers(model)), adapter.hidden_size
    if not 1 <= block < n_layers:
        raise InputError(
            f"--block {block} must be between 1 and {n_layers - 1} for this {n_layers}-layer model"
        )
    if tokens not in TOKENS:
        raise InputError(f"unknown --tokens {tokens!r}; choose one of {', '.join(TOKENS)}")
    check_norm(norm)
    n = check_samples(batches, d, tokens)
    gaps = [(s, s + block) for s in range(n_layers - block + 1)]
    starts = [s for s, _ in gaps]
    check_memory(per_device(model, adapter, starts), d, max_boundaries=max_boundaries, norm=norm)
    blocks, info = [], []
    for part in chunks(gaps, max_boundaries):
        for st in collect_gap_stats(model, adapter, batches, part, tokens=tokens, weighted=norm == "token"):  # fmt: skip
            r = residual_of(st, damp, norm)
            blocks.append(((st.start, st.end), r.pop("score")))
            info.append(r)
    passes = -(-len(gaps) // (max_boundaries or len(gaps)))
    summary = {
        **as_damp(damp).as_json(),
        "normalise": norm,
        "passes": passes,
        "stats_bytes": min(len(gaps), max_boundaries or len(gaps)) * boundary_bytes(d, norm),
        "definition": DEFINITIONS[norm],
    }
    return Scores("residual", block, tokens, blocks, None, n, block_info=info, info=summary)
