"""Batched forward passes over rows of different lengths: padding and positions.

Why a module of its own: every batched forward that reads a row's last position (CRC, the
sweep runner, calibration, scoring, generation) must pad the same way and give each real
token the position it would have alone. With left padding transformers numbers the pad slots
too, which shifts every position of a short row; RoPE hides that (relative positions), learned
absolute positions (GPT-2) do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def position_ids(mask: Any) -> Any:
    """Positions counted over real tokens only, so left- and right-padded rows see the same
    positions (transformers otherwise numbers pad slots too, which shifts RoPE)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of rows right-aligned (left-padded with ``pad_id``), so
    the last position is every row's next-token slot; ``mask`` is 1 at real tokens."""
    import torch

    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s):
            input_ids[r, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[r, width - len(s) :] = 1
    return input_ids, mask


def forward_logits(
    model: Any, input_ids: Any, attention_mask: Any, *, last_only: bool = True
) -> Any:
    """Logits of a padded batch with padding-aware positions: ``[batch, vocab]`` at the last
    position (every row's next-token slot under left padding), or ``[batch, seq, vocab]``."""
    import torch

    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
            logits_to_keep=1 if last_only else 0,
        ).logits
    return out[:, -1] if last_only else out


class ContextWarning(UserWarning):
    """A requested length is longer than the model's context and was shortened."""


def fit_context(seqlen: int, context: int | None, flag: str) -> int:
    """``seqlen``, or the model's ``context`` (with a :class:`ContextWarning` naming ``flag``)
    when it is longer: positions past the context are not text the model can read, and a
    number computed on them would be meaningless."""
    if context is not None and seqlen > context:
        import warnings

        warnings.warn(
            f"{flag} {seqlen} is longer than the model's context of {context} positions; "
            f"using {context}",
            ContextWarning,
            stacklevel=3,
        )
        return context
    return seqlen
