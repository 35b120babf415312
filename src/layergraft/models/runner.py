"""Running decoder layers one at a time on a fixed batch, for fast interval sweeps.

Why: a sweep scores every interval ``[s, e)`` of a hybrid "post layers < s, base layers
s..e-1, post layers >= e". Running each hybrid from the embeddings repeats work: the hidden
states entering ``s`` are the post model's for every interval starting at ``s``, and the base
chain s..e-1 extends by one layer as ``e`` grows. So we record what every decoder layer of the
post model *receives besides its hidden states* (masks, rotary embeddings, per-layer
sliding-window masks, ...) in one cheap pass in which the layers are stand-ins that only
record (and the pass stops before the head), then call the layers directly. No architecture
knowledge is needed beyond the adapter's layer list: the model computes its own masks and
position embeddings (from padding-aware positions, so a row scores the same alone and in any
batch), and the head (final norm, lm_head, logit soft-capping) is run by the model's own
forward with the layers replaced by pass-throughs.

Memory: one batch's hidden states and the recorded call arguments; nothing grows with the
number of batches a sweep goes through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from layergraft.models.batching import position_ids


class _Stop(Exception):
    """Raised by the last recording stand-in: the pass ends before the final norm and head."""


def _stand_in(torch: Any) -> Any:
    class _StandIn(torch.nn.Module):
        """Stands in for a decoder layer: records its call, or returns a given tensor."""

        def __init__(self, record: Any = None, value: Any = None) -> None:
            super().__init__()
            self.record, self.value = record, value

        def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            if self.record is not None:
                self.record(hidden_states, args, kwargs)
            return hidden_states if self.value is None else self.value

    return _StandIn


class LayerRunner:
    """The recorded layer calls of ``model`` on one batch ``input_ids`` / ``attention_mask``.

    ``hidden0`` is the residual stream entering layer 0 (the embeddings); :meth:`layer` runs
    any compatible decoder layer (the base model's too) at position ``i``; :meth:`logits` runs
    the model's head on the output of the last layer.
    """

    def __init__(
        self, model: Any, adapter: Any, input_ids: Any, attention_mask: Any | None = None
    ) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.adapter = adapter
        self.input_ids = input_ids
        self.attention_mask = (
            attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        )
        self.num_layers = len(adapter.layers(model))
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), {})] * self.num_layers
        self.tuple_output = False
        self.hidden0: Any = None

        def recorder(i: int) -> Any:
            def record(hidden: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                if i == 0:
                    self.hidden0 = hidden
                self.calls[i] = (args, {k: v for k, v in kwargs.items() if k != "hidden_states"})
                if i == self.num_layers - 1:
                    raise _Stop

            return record

        stand_in = _stand_in(torch)
        with (
            torch.no_grad(),
            self._layers_replaced([stand_in(record=recorder(i)) for i in range(self.num_layers)]),
            contextlib.suppress(_Stop),
        ):
            model(
                input_ids=input_ids,
                attention_mask=self.attention_mask,
                position_ids=position_ids(self.attention_mask),
                use_cache=False,
            )

    def layer(self, module: Any, i: int, hidden: Any) -> Any:
        """Run ``module`` as decoder layer ``i`` on ``hidden`` (same masks/positions as recorded)."""
        args, kwargs = self.calls[i]
        with self.torch.no_grad():
            out = module(hidden, *args, **kwargs)
        # transformers 5 layers return a tensor; older ones (and GPT-2 blocks) a tuple
        self.tuple_output = isinstance(out, tuple)
        return out[0] if isinstance(out, tuple) else out

    def run(self, layers: Any, start: int, end: int, hidden: Any) -> Any:
        """Run ``layers[start:end]`` (a model's layer list) from hidden states entering ``start``."""
        for j in range(start, end):
            hidden = self.layer(layers[j], j, hidden)
        return hidden

    def run_from(self, i: int, hidden: Any, layers: Any) -> Any:
        """Run ``layers[i:]`` from hidden states entering layer ``i`` to the last layer's output."""
        return self.run(layers, i, self.num_layers, hidden)

    @contextlib.contextmanager
    def _layers_replaced(self, stand_ins: list[Any]) -> Iterator[None]:
        """Temporarily swap the model's decoder layer list for ``stand_ins``."""
        path = self.adapter.layers_path
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        original = getattr(parent, attr)
        setattr(parent, attr, self.torch.nn.ModuleList(stand_ins))
        try:
            yield
        finally:
            setattr(parent, attr, original)

    def logits(self, final_hidden: Any, last_only: bool = True) -> Any:
        """Logits of the model's head applied to ``final_hidden`` (the output of the last
        layer): ``[batch, vocab]`` at the last position, or ``[batch, seq, vocab]``."""
        stand_in = _stand_in(self.torch)
        value = (final_hidden,) if self.tuple_output else final_hidden
        stand_ins = [stand_in() for _ in range(self.num_layers - 1)] + [stand_in(value=value)]
        with self.torch.no_grad(), self._layers_replaced(stand_ins):
            out = self.model(
                input_ids=self.input_ids,
                attention_mask=self.attention_mask,
                position_ids=position_ids(self.attention_mask),
                use_cache=False,
                logits_to_keep=1 if last_only else 0,
            ).logits
        return out[:, -1] if last_only else out
