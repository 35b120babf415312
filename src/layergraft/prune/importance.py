"""Layer / block importance scores: which layers can go.

All three metrics compare the residual stream at two boundaries (boundary ``b`` = stream
entering layer ``b``; ``L`` = after the last layer), token by token, with the cosine over the
hidden dimension, averaged over real (non-padding) tokens — or over each row's last real
token with ``tokens="last"`` (Gromov et al. use the last token):

* ``angular`` (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"):
  block ``[s, s+N)`` scores ``arccos(cos(h_s, h_{s+N})) / π``; lowest = most removable.
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


@dataclass
class Scores:
    """Scores of every block of ``block`` layers (``blocks[k]`` starts at layer ``k``)."""

    metric: str
    block: int
    tokens: str
    blocks: list[tuple[Range, float]]
    per_layer: list[float] | None
    n_tokens: int

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
        return {
            "metric": self.metric,
            "block": self.block,
            "tokens": self.tokens,
            "n_tokens": self.n_tokens,
            "removable": "lowest" if self.lower_is_removable else "highest",
            "best": format_range(self.best),
            "blocks": [{"range": format_range(r), "score": s} for r, s in self.blocks],
            "per_layer": self.per_layer,
            "range_convention": "0-based, half-open [start, end), written start:end",
        }


def _token_rows(t: Any, mask: Any, tokens: str) -> Any:
    """``[n, d]`` float64 rows of ``t`` at the real tokens (or each row's last real token)."""
    import torch

    mask = mask.to(t.device).bool()
    if tokens == "last":
        idx = mask.long().cumsum(-1).argmax(-1)  # position of the last real token
        return t[torch.arange(t.shape[0], device=t.device), idx].to(torch.float64)
    return t[mask].to(torch.float64)


def boundary_cosines(
    model: Any,
    adapter: Any,
    batches: Sequence[Batch],
    pairs: Sequence[tuple[int, int]],
    tokens: str = "all",
) -> tuple[dict[tuple[int, int], float], int]:
    """Mean over tokens of ``cos(h_a, h_b)`` for each boundary pair, and the token count."""
    import torch

    if tokens not in TOKENS:
        raise InputError(f"unknown --tokens {tokens!r}; choose one of {', '.join(TOKENS)}")
    points = sorted({("in", b) for p in pairs for b in p})
    sums = dict.fromkeys(pairs, 0.0)
    count = 0
    for batch in batches:
        got = run_points(model, adapter, batch, points)
        rows = {b: _token_rows(got[("in", b)], batch.attention_mask, tokens) for _, b in points}
        for a, b in pairs:
            cos = torch.nn.functional.cosine_similarity(rows[a], rows[b], dim=-1, eps=1e-12)
            sums[(a, b)] += float(cos.sum())
        count += next(iter(rows.values())).shape[0]
    if count == 0:
        raise InputError("no tokens to score; give a longer --data file")
    return {p: s / count for p, s in sums.items()}, count


def block_scores(
    model: Any,
    adapter: Any,
    batches: Sequence[Batch],
    *,
    block: int = 1,
    metric: str = "angular",
    tokens: str = "all",
) -> Scores:
    """Score every contiguous block of ``block`` layers with ``metric`` (see module doc)."""
    n = len(adapter.layers(model))
    if metric not in METRICS:
        raise InputError(f"unknown --metric {metric!r}; choose one of {', '.join(METRICS)}")
    if not 1 <= block < n:
        raise InputError(f"--block {block} must be between 1 and {n - 1} for this {n}-layer model")
    if metric == "bi":
        cos, count = boundary_cosines(
            model, adapter, batches, [(i, i + 1) for i in range(n)], tokens
        )
        per_layer = [1.0 - cos[(i, i + 1)] for i in range(n)]
        blocks = [((s, s + block), sum(per_layer[s : s + block])) for s in range(n - block + 1)]
        return Scores(metric, block, tokens, blocks, per_layer, count)
    pairs = [(s, s + block) for s in range(n - block + 1)]
    cos, count = boundary_cosines(model, adapter, batches, pairs, tokens)
    if metric == "angular":
        val = {p: math.acos(max(-1.0, min(1.0, c))) / math.pi for p, c in cos.items()}
    else:
        val = cos
    return Scores(metric, block, tokens, [(p, val[p]) for p in pairs], None, count)


def auto_removal(scores_fn: Any, n_remove: int, metric: str) -> list[Range]:
    """The gaps ``--auto N`` removes: N lowest-BI layers (scattered) for ``bi``, else the best
    contiguous block of N. ``scores_fn(block, metric)`` computes :class:`Scores`."""
    if metric == "bi":
        sc = scores_fn(1, "bi")
        layers = sc.lowest_layers(n_remove)
        return [(i, i + 1) for i in layers]
    return [scores_fn(n_remove, metric).best]
