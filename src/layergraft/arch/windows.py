"""Which decoder layers attend through a sliding window, and how wide it is.

Why the adapter has to say it: the packed batches of :mod:`layergraft.models.packing` carry
their own attention masks, which transformers passes to every layer as they are. A layer
that slides (Gemma-2/3's local layers, Mistral and Phi-3 with ``sliding_window`` set, Qwen
with ``use_sliding_window``) must get a mask that also hides keys ``window`` or more
positions back, as transformers' own mask does (``q - k < window``), or its scores differ
from the model's own forward.
"""

from __future__ import annotations

from typing import Any

from layergraft.errors import ArchitectureError

#: families in which ``config.sliding_window``, when set, applies to every layer
_ALL_LAYERS = frozenset({"mistral", "phi3"})


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def attention_windows(family: str, config: Any, num_layers: int) -> list[int | None]:
    """Per decoder layer, its sliding window in positions, or None for full attention.

    ``config`` is a transformers config object or its dict. ``layer_types`` decides where it
    exists (``sliding_attention`` slides, ``full_attention`` does not); otherwise the window
    applies to every layer of the families that use one global window. A layer type that is
    neither (chunked or linear attention) cannot be given a packed mask, so it is refused."""
    window = _get(config, "sliding_window")
    types = _get(config, "layer_types")
    if isinstance(types, (list, tuple)) and len(types) == num_layers:
        out: list[int | None] = []
        for i, t in enumerate(types):
            if t == "full_attention":
                out.append(None)
            elif t == "sliding_attention" and isinstance(window, int):
                out.append(window)
            else:
                raise ArchitectureError(
                    f"layer {i} has attention type {t!r}: layergraft's packed batches mask full "
                    "and sliding-window attention only, so this model cannot be scored here"
                )
        return out
    if isinstance(window, int) and (family in _ALL_LAYERS or family == "generic"):
        return [window] * num_layers
    return [None] * num_layers
