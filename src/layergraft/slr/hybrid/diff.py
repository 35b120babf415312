"""``layergraft diff``: how far post-training moved each layer and each part of it.

Why: restoring a layer range (or, later, one part of it) only helps where post-training
changed something; the relative change of the weights is a prior for where to look that
costs one read of both checkpoints and no forward pass. Per decoder layer and part
(attention, MLP, norms, as the adapter splits them: :mod:`layergraft.arch.parts`), plus the
embeddings, the final norm and the head:

* ``rel_change`` = ||W_post - W_base||_F / ||W_base||_F over all tensors of the cell
  (their flattened concatenation), so a part's value is not an average of its tensors';
* ``cosine`` = <W_post, W_base> / (||W_post||_F ||W_base||_F) of the same concatenation
  (exactly 1.0 when nothing changed).

Streamed tensor by tensor (``Checkpoint.get_tensor``), each in float64 chunks, with four sums
per cell (||post - base||², ||base||², ||post||², <post, base>): memory holds two tensors
of the checkpoint's dtype and a bounded float64 chunk, never a model. The difference is taken
elementwise, so an untouched tensor contributes exactly 0 (not a cancellation of
||post||² - 2<post, base> + ||base||²).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from layergraft.arch import LAYER_PARTS
from layergraft.checkpoint.dtypes import tensor_bytes
from layergraft.checkpoint.finite import has_nonfinite, nonfinite_error
from layergraft.checkpoint.outputs import check_output
from layergraft.checkpoint.reader import Checkpoint, as_checkpoint
from layergraft.errors import InputError
from layergraft.report.diff import plot_diff
from layergraft.slr.hybrid.pair import check_compatible
from layergraft.version import __version__

PathLike = str | os.PathLike[str]

#: rows outside the decoder layers, by the adapter's role of a tensor
OUTSIDE_ROWS: dict[str, str] = {"embed": "embeddings", "norm": "final_norm", "head": "head"}
CHUNK = 1 << 22  # elements per float64 chunk: 32 MiB per operand

CONVENTION = {
    "layers": "0-based decoder layer index; a range start:end is half-open (end excluded)",
    "rel_change": "||W_post - W_base||_F / ||W_base||_F over the flattened, concatenated "
    "tensors of the cell (null when the base is all zeros and the post is not)",
    "cosine": "<W_post, W_base> / (||W_post||_F ||W_base||_F) of the same concatenation "
    "(1.0 when unchanged; null when one side is all zeros)",
    "accumulation": "float64, tensor by tensor",
    "identical": "true when every compared (floating-point) tensor of post equals base",
    "ranking": "the layers whose weights changed at all, largest rel_change first",
}


@dataclass
class Sums:
    """The four float64 sums of one cell (layer x part, or an outside row)."""

    dd: float = 0.0  # ||post - base||^2
    bb: float = 0.0  # ||base||^2
    pp: float = 0.0  # ||post||^2
    pb: float = 0.0  # <post, base>
    numel: int = 0
    tensors: int = 0

    def add(self, other: Sums) -> None:
        self.dd += other.dd
        self.bb += other.bb
        self.pp += other.pp
        self.pb += other.pb
        self.numel += other.numel
        self.tensors += other.tensors

    def row(self) -> dict[str, Any]:
        """The JSON cell: rel_change, cosine, numel, tensors, abs_change (||post - base||)."""
        if self.dd == 0.0:
            rel, cos = 0.0, 1.0  # identical, zeros included
        else:
            rel = math.sqrt(self.dd / self.bb) if self.bb > 0 else None
            den = math.sqrt(self.pp) * math.sqrt(self.bb)
            cos = max(-1.0, min(1.0, self.pb / den)) if den > 0 else None
        return {
            "rel_change": rel,
            "cosine": cos,
            "numel": self.numel,
            "tensors": self.tensors,
            "abs_change": math.sqrt(self.dd),
        }


def tensor_sums(base: Any, post: Any, chunk: int = CHUNK) -> Sums:
    """The four sums of one tensor pair, in float64 chunks of ``chunk`` elements."""
    import torch

    b, p = base.reshape(-1), post.reshape(-1)
    s = Sums(numel=int(b.numel()), tensors=1)
    with torch.no_grad():
        for start in range(0, s.numel, chunk):
            bc = b[start : start + chunk].to(torch.float64)
            pc = p[start : start + chunk].to(torch.float64)
            d = pc - bc
            s.dd += float(torch.dot(d, d))
            s.bb += float(torch.dot(bc, bc))
            s.pp += float(torch.dot(pc, pc))
            s.pb += float(torch.dot(pc, bc))
    return s


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))  # F16, BF16, F32, F64, F8_*


def _refuse_nonfinite(name: str, inputs: tuple[tuple[Checkpoint, Any], ...]) -> None:
    """Non-finite sums: name the input tensor (and its file) that holds NaN/Inf."""
    for ck, t in inputs:
        entry = ck.tensors[name]
        data = tensor_bytes(t)
        if has_nonfinite(data, entry.dtype):
            raise nonfinite_error(name, entry.dtype, data, entry.file)
    raise InputError(
        f"tensor {name!r} gives a non-finite difference (values beyond float64's range, or "
        "NaN/Inf in a dtype the scan does not read); fix: repair or re-download the checkpoint"
    )


def _cell(ck: Checkpoint, name: str) -> tuple[int | None, str]:
    """(layer, part) of a tensor; (None, row name) outside the layers."""
    ad = ck.adapter
    part = ad.classify(name)
    if part.section == "layer":
        return part.layer, ad.layer_part(name)
    return None, OUTSIDE_ROWS.get(part.role, "other")


def diff_seconds(base: PathLike | Checkpoint, post: PathLike | Checkpoint) -> float:
    """Seconds :func:`diff` should take on this pair, from two timings of layer 0: its largest
    float tensor (the cost per byte) and its smallest (the cost per tensor: reading, chunking,
    Python), applied to every float tensor of the checkpoint.

    Why the sweep's plan needs it: a CRC sweep of checkpoints on disk ends with this diff
    (``weight_change`` in results.json). It reads both models whole in float64 chunks: 56 s of
    a 256 s partial sweep at the Llama-3.2-1B shape on 2 busy cores, and minutes at 8B,
    whatever the device the sweep ran on. (Timing layer 0's tensors and scaling by bytes
    counted the small tensors' fixed cost a thousand times over: twice the real time.)"""
    import time

    b, p = as_checkpoint(base), as_checkpoint(post)
    entries = [e for e in p.tensors.values() if _is_float(e.dtype) and e.name in b.tensors]
    first = sorted(
        (e for e in entries if p.adapter.classify(e.name).layer == 0), key=lambda e: e.nbytes
    ) or sorted(entries, key=lambda e: e.nbytes)
    if not first:
        return 0.0

    def timed(e: Any) -> float:
        bt, pt = b.get_tensor(e.name), p.get_tensor(e.name)
        tensor_sums(bt, pt)  # warm: the pages and the allocator
        t0 = time.perf_counter()
        tensor_sums(bt, pt)
        return time.perf_counter() - t0

    small, big = first[0], first[-1]
    per_tensor = timed(small)
    per_byte = max(timed(big) - per_tensor, 0.0) / max(big.nbytes - small.nbytes, 1)
    return sum(per_tensor + per_byte * e.nbytes for e in entries)


def diff(
    base: PathLike | Checkpoint,
    post: PathLike | Checkpoint,
    *,
    plot: PathLike | None = None,
    progress: bool = True,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """How far ``post`` moved from ``base``, per decoder layer and part (JSON-ready dict).

    ``layers[i]`` holds ``attn``, ``mlp``, ``norms`` and ``all`` cells (each ``rel_change``,
    ``cosine``, ``numel``, ``tensors``, ``abs_change``); ``outside`` the embeddings, final norm
    and (untied) head; ``model`` the whole checkpoint; ``identical`` whether every compared
    tensor is equal; ``ranking`` the layers that changed, by ``all`` change, largest first
    (``unchanged_layers`` the others). ``plot`` writes the layers x parts heatmap there (PNG).
    Non-floating tensors (integer buffers) are listed in ``skipped``, not compared.
    """
    b = as_checkpoint(base, allow_pickle)
    p = as_checkpoint(post, allow_pickle)
    # an unwritable plot path, or one onto an input, fails before gigabytes are read
    target = check_output(plot, inputs=[b, p], flag="--plot") if plot is not None else None
    check_compatible(b, p)
    ad = p.adapter
    n = ad.num_layers
    # classify everything first: an unknown tensor fails before any reading
    cells = {name: _cell(p, name) for name in p.tensors}
    layers = [{part: Sums() for part in LAYER_PARTS} for _ in range(n)]
    outside: dict[str, Sums] = {}
    skipped: list[str] = []
    order = sorted(p.tensors.values(), key=lambda e: (str(e.file), e.offset))
    from tqdm.auto import tqdm

    total = sum(e.nbytes for e in order)
    with tqdm(total=total, desc="diff", unit="B", unit_scale=True, disable=not progress) as bar:
        for entry in order:
            name = entry.name
            if not _is_float(entry.dtype):
                skipped.append(name)
                bar.update(entry.nbytes)
                continue
            bt, pt = b.get_tensor(name), p.get_tensor(name)
            s = tensor_sums(bt, pt)
            if not all(math.isfinite(x) for x in (s.dd, s.bb, s.pp, s.pb)):
                _refuse_nonfinite(name, ((p, pt), (b, bt)))
            del bt, pt
            layer, part = cells[name]
            if layer is None:
                outside.setdefault(part, Sums()).add(s)
            else:
                layers[layer][part].add(s)
            bar.update(entry.nbytes)
    whole = Sums()
    rows = []
    for i, by_part in enumerate(layers):
        every = Sums()
        for s in by_part.values():
            every.add(s)
        whole.add(every)
        rows.append({"layer": i, **{k: s.row() for k, s in by_part.items()}, "all": every.row()})
    for s in outside.values():
        whole.add(s)
    results: dict[str, Any] = {
        "command": "diff",
        "base": b.origin or str(b.path),
        "post": p.origin or str(p.path),
        "inputs": {"base": b.fingerprint(), "post": p.fingerprint()},
        "family": ad.family,
        "num_layers": n,
        "dtypes": sorted({e.dtype for e in order}),
        "tied_embeddings": ad.tied_embeddings,
        "parts": list(LAYER_PARTS),
        "convention": CONVENTION,
        "layers": rows,
        "outside": {k: outside[k].row() for k in sorted(outside)},
        "model": whole.row(),
        # a model against itself (or a copy): nothing to rank, and the reader is told so
        "identical": whole.dd == 0.0,
        "ranking": _ranking(rows),
        "unchanged_layers": [r["layer"] for r in rows if r["all"]["abs_change"] == 0.0],
        "skipped": skipped,
        "version": __version__,
    }
    results["plot"] = str(plot_diff(results, target)) if target is not None else None
    return results


def _ranking(rows: list[dict[str, Any]]) -> list[int]:
    """The layers that changed at all, by overall relative change, largest first (ties:
    lower index first). Unchanged layers are not ranked (``unchanged_layers`` lists them):
    ties of zeros in a ranking would read as findings."""

    def key(r: dict[str, Any]) -> tuple[float, int]:
        rel = r["all"]["rel_change"]
        return (-(math.inf if rel is None else rel), r["layer"])

    return [r["layer"] for r in sorted(rows, key=key) if r["all"]["abs_change"] > 0]


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (None when either side is constant or too short)."""
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def change_vs_gain(
    weight_change: dict[str, Any], intervals: list[dict[str, Any]], key: str, post: float
) -> dict[str, Any]:
    """Does "most changed by post-training" predict "best to restore"? Per layer: the relative
    change of its weights (all parts) beside the diversity gain of restoring that layer alone
    (interval ``[i, i+1)``, ``key`` minus the post model's), and their rank correlation."""
    single = {r["start"]: r[key] - post for r in intervals if r["end"] - r["start"] == 1}
    rows = [
        {"layer": r["layer"], "rel_change": r["all"]["rel_change"], "gain": single.get(r["layer"])}
        for r in weight_change["layers"]
    ]
    pairs = [
        (r["rel_change"], r["gain"])
        for r in rows
        if r["gain"] is not None and r["rel_change"] is not None
    ]
    return {
        "definition": f"per layer: relative weight change ||W_post - W_base|| / ||W_base|| (all "
        f"parts) vs the {key} gain of restoring that layer alone; Spearman rank correlation",
        "layers": rows,
        "spearman": spearman([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None,
    }
