"""Layer / block importance scores: which layers can go.

All three metrics compare the residual stream at two boundaries (boundary ``b`` = stream
entering layer ``b``; ``L`` = after the last layer), sample by sample, with the cosine over
the hidden dimension. A sample is each row's last real token (``tokens="last"``, the default
of ``angular``, as Gromov et al.) or every real (non-padding) token (``tokens="all"``, the
default of ``bi`` and ``cosine``):

* ``angular`` (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"):
  block ``[s, s+N)`` scores the mean over samples of ``arccos(cos(h_s, h_{s+N})) / π``;
  lowest = most removable. (The arccos of the *mean* cosine would rank exactly like
  ``cosine``; the mean of per-sample angles need not: :func:`angle_and_cosine_sums`.)
* ``bi`` (ShortGPT block influence): layer ``i`` scores ``1 − cos(h_i, h_{i+1})``; a block's
  score is the sum over its layers; lowest = most removable. ``--auto N`` with ``bi`` removes
  the N lowest layers wherever they are (scattered).
* ``cosine`` (LLM-Streamline): block ``[s, s+N)`` scores ``cos(h_s, h_{s+N})``; *highest* =
  most removable.

One forward pass per batch, stopped after the last layer (the head is never computed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layergraft.errors import InputError
from layergraft.prune.calibrate import run_points
from layergraft.ranges import Range, format_range
from layergraft.text import Batch

METRICS: tuple[str, ...] = ("angular", "bi", "cosine")
TOKENS: tuple[str, ...] = ("all", "last")
#: the samples each metric averages over by default (``tokens=None``)
DEFAULT_TOKENS = {"angular": "last", "bi": "all", "cosine": "all"}


@dataclass
class Scores:
    """Scores of every block of ``block`` layers (``blocks[k]`` starts at layer ``k``)."""

    metric: str
    block: int
    tokens: str
    blocks: list[tuple[Range, float]]
    per_layer: list[float] | None
    n_tokens: int
    #: more fields per block (``block_info[k]`` goes with ``blocks[k]``) and for the whole
    #: scoring, in the JSON form (the residual metric: damping, memory, stream residual)
    block_info: list[dict[str, Any]] | None = None
    info: dict[str, Any] | None = None

    @property
    def lower_is_removable(self) -> bool:
        return self.metric != "cosine"

    @property
    def best(self) -> Range:
        pick = min if self.lower_is_removable else max
        return pick(self.blocks, key=lambda rs: rs[1])[0]

    def lowest_layers(self, n: int) -> list[int]:
        """The ``n`` individually most removable layers (bi), ascending by index."""
        if self.per_layer is None:
            raise ValueError("per-layer scores exist for metric 'bi' only")
        order = sorted(range(len(self.per_layer)), key=lambda i: (self.per_layer[i], i))
        return sorted(order[:n])

    def as_json(self) -> dict[str, Any]:
        extra = self.block_info or [{} for _ in self.blocks]
        return {
            "metric": self.metric,
            "block": self.block,
            "tokens": self.tokens,
            "n_tokens": self.n_tokens,
            "removable": "lowest" if self.lower_is_removable else "highest",
            "best": format_range(self.best),
            "blocks": [
                {"range": format_range(r), "score": s, **x}
                for (r, s), x in zip(self.blocks, extra, strict=True)
            ],
            "per_layer": self.per_layer,
            **(self.info or {}),
            "range_convention": "0-based, half-open [start, end), written start:end",
        }


def check_block_size(block: int, n: int, flag: str = "--block") -> None:
    """A block of ``block`` layers (``--block``, ``--auto``) must leave at least one of the
    ``n`` layers: checked from config.json before any model loads, and again on the model."""
    if not 1 <= int(block) < n:
        raise InputError(f"{flag} {block} must be between 1 and {n - 1} for this {n}-layer model")


def _token_rows(t: Any, mask: Any, tokens: str) -> Any:
    """``[n, d]`` float64 rows of ``t`` at the real tokens (or each row's last real token)."""
    import torch

    mask = mask.to(t.device).bool()
    if tokens == "last":
        idx = mask.long().cumsum(-1).argmax(-1)  # position of the last real token
        return t[torch.arange(t.shape[0], device=t.device), idx].to(torch.float64)
    return t[mask].to(torch.float64)


def angle_and_cosine_sums(x: Any, y: Any) -> tuple[float, float, int]:
    """``(Σ cos, Σ arccos(cos)/π, n)`` over the rows of ``x`` and ``y`` (``[n, d]``, float64):
    the per-sample pieces of the ``cosine``/``bi`` and ``angular`` means."""
    import torch

    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=1e-12).clamp(-1.0, 1.0)
    return float(cos.sum()), float((torch.arccos(cos) / math.pi).sum()), int(cos.numel())


def boundary_similarity(
    model: Any,
    adapter: Any,
    batches: Sequence[Batch],
    pairs: Sequence[tuple[int, int]],
    tokens: str = "all",
) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float], int]:
    """For each boundary pair: the mean over samples of ``cos(h_a, h_b)`` and of the angle
    ``arccos(cos)/π``, and the number of samples."""
    if tokens not in TOKENS:
        raise InputError(f"unknown --tokens {tokens!r}; choose one of {', '.join(TOKENS)}")
    points = sorted({("in", b) for p in pairs for b in p})
    cos_sum = dict.fromkeys(pairs, 0.0)
    ang_sum = dict.fromkeys(pairs, 0.0)
    count = 0
    for batch in batches:
        got = run_points(model, adapter, batch, points)
        rows = {b: _token_rows(got[("in", b)], batch.attention_mask, tokens) for _, b in points}
        for a, b in pairs:
            c, g, _ = angle_and_cosine_sums(rows[a], rows[b])
            cos_sum[(a, b)] += c
            ang_sum[(a, b)] += g
        count += next(iter(rows.values())).shape[0]
    if count == 0:
        raise InputError("no tokens to score; give a longer --data file")
    return (
        {p: v / count for p, v in cos_sum.items()},
        {p: v / count for p, v in ang_sum.items()},
        count,
    )


def block_scores(
    model: Any,
    adapter: Any,
    batches: Sequence[Batch],
    *,
    block: int = 1,
    metric: str = "angular",
    tokens: str | None = None,
) -> Scores:
    """Score every contiguous block of ``block`` layers with ``metric`` (see module doc);
    ``tokens=None`` is the metric's own default (:data:`DEFAULT_TOKENS`)."""
    n = len(adapter.layers(model))
    if metric not in METRICS:
        raise InputError(f"unknown --metric {metric!r}; choose one of {', '.join(METRICS)}")
    check_block_size(block, n)
    tokens = tokens or DEFAULT_TOKENS[metric]
    if metric == "bi":
        cos, _, count = boundary_similarity(
            model, adapter, batches, [(i, i + 1) for i in range(n)], tokens
        )
        per_layer = [1.0 - cos[(i, i + 1)] for i in range(n)]
        blocks = [((s, s + block), sum(per_layer[s : s + block])) for s in range(n - block + 1)]
        return Scores(metric, block, tokens, blocks, per_layer, count)
    pairs = [(s, s + block) for s in range(n - block + 1)]
    cos, angle, count = boundary_similarity(model, adapter, batches, pairs, tokens)
    val = angle if metric == "angular" else cos
    return Scores(metric, block, tokens, [(p, val[p]) for p in pairs], None, count)


def auto_removal(scores_fn: Any, n_remove: int, metric: str) -> list[Range]:
    """The gaps ``--auto N`` removes: N lowest-BI layers (scattered) for ``bi``, else the best
    contiguous block of N. ``scores_fn(block, metric)`` computes :class:`Scores`."""
    if metric == "bi":
        sc = scores_fn(1, "bi")
        layers = sc.lowest_layers(n_remove)
        return [(i, i + 1) for i in layers]
    return [scores_fn(n_remove, metric).best]
