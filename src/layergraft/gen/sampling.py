"""Sampling one token per row with that row's own random stream.

Why our own sampler inside ``model.generate``: transformers samples a whole batch from the
global RNG, so a sample depends on which other prompts share its batch (and on the batch
size). Here ``generate`` runs in *greedy* mode and a logits processor (:class:`RowSampler`)
does the sampling: temperature -> min-p -> top-p, then one uniform draw per row from that
row's own ``torch.Generator``, seeded from ``(seed, prompt id, sample index)``
(:func:`sample_seed`). The chosen token is the only finite logit, so greedy picks it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from layergraft.errors import InputError


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings. Defaults are the SLR paper's: temperature 1.0, min-p 0.1.

    ``temperature=0`` means greedy decoding (the seed is then irrelevant).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.1
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError(
                f"temperature must be a finite number >= 0 (0 = greedy), not {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise InputError(f"top-p must be in (0, 1], not {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise InputError(f"min-p must be in [0, 1), not {self.min_p}")
        if self.max_new_tokens < 1:
            raise InputError(f"max new tokens must be at least 1, not {self.max_new_tokens}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample_seed(seed: int, prompt_id: str, sample: int) -> int:
    """A 63-bit seed for one (prompt, sample): stable across runs, machines and batch layouts."""
    h = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{sample}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- sampling


def filter_probs(probs: Any, top_p: float, min_p: float) -> Any:
    """Zero out tokens removed by min-p (p < min_p * max p) then top-p (smallest prefix of the
    sorted distribution whose mass reaches ``top_p``); renormalise. Rows of ``probs`` sum to 1.

    Order as in vLLM and the min-p paper: min-p on the temperature-scaled distribution first.
    """
    import torch

    if min_p > 0:
        keep = probs >= min_p * probs.max(dim=-1, keepdim=True).values
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(dim=-1, keepdim=True)
    if top_p < 1:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


class RowSampler:
    """A transformers logits processor that samples each row with its own generator.

    Returns logits that are 0 at the drawn token and -inf elsewhere, so greedy decoding in
    ``generate`` emits exactly the draw. Works in float64 so the inverse-CDF draw does not
    depend on the float32 summation order of the batch.
    """

    def __init__(self, settings: SamplingSettings, seeds: Sequence[int]) -> None:
        import torch

        self.settings = settings
        self.generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(s)
            self.generators.append(g)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        s = self.settings
        if s.temperature == 0:
            choice = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores.double() / s.temperature, dim=-1)
            probs = filter_probs(probs, s.top_p, s.min_p)
            u = torch.stack(
                [torch.rand((), generator=g, dtype=torch.float64) for g in self.generators]
            )
            cdf = probs.cumsum(dim=-1)
            # u in [0, total mass): the first index whose cdf exceeds u has probability > 0
            u = u.to(cdf.device) * cdf[:, -1]
            choice = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
            choice = choice.clamp_max(probs.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, choice.unsqueeze(-1), 0.0)
        return out
