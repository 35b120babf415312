"""Running decoder layers one at a time on a fixed batch, for fast interval sweeps.

Why: a sweep scores every interval ``[s, e)`` of a hybrid "post layers < s, base layers
s..e-1, post layers >= e". Running each hybrid from the embeddings repeats work: the hidden
states entering layer ``s`` are the post model's for every interval starting at ``s``, and
the base chain s..e-1 extends by one layer as ``e`` grows. So we record, in one ordinary
forward pass of the post model, what every decoder layer receives (hidden states *and* the
extra arguments the model passes it: masks, rotary embeddings, per-layer sliding-window
masks, ...), then call layers directly. No architecture knowledge is needed beyond the
adapter's layer list: the model computes its own masks and position embeddings, and the
head (final norm, lm_head, logit soft-capping) is run by the model's own forward with the
layers replaced by pass-throughs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _skip_module(torch: Any) -> Any:
    class _Skip(torch.nn.Module):
        """Stands in for a decoder layer: returns its input (or a given tensor)."""

        def __init__(self, value: Any = None) -> None:
            super().__init__()
            self.value = value

        def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            return hidden_states if self.value is None else self.value

    return _Skip


class LayerRunner:
    """One recorded forward pass of ``model`` on ``input_ids``/``attention_mask``.

    ``hidden[i]`` is the residual stream entering layer ``i`` (``hidden[L]`` leaves the last
    layer); :meth:`layer` runs any compatible decoder layer (the base model's too) at
    position ``i`` on new hidden states; :meth:`logits` runs the model's head on them.
    """

    def __init__(
        self, model: Any, adapter: Any, input_ids: Any, attention_mask: Any | None = None
    ) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.adapter = adapter
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        layers = adapter.layers(model)
        self.num_layers = len(layers)
        self.hidden: list[Any] = [None] * (self.num_layers + 1)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), {})] * self.num_layers
        self.tuple_output = False
        handles = []

        def pre_hook(i: int):
            def hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                hs = args[0] if args else kwargs.get("hidden_states")
                rest_args = args[1:] if args else ()
                rest_kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                self.hidden[i] = hs
                self.calls[i] = (rest_args, rest_kw)

            return hook

        def last_hook(mod: Any, args: Any, kwargs: Any, out: Any) -> None:
            self.tuple_output = isinstance(out, tuple)
            self.hidden[self.num_layers] = out[0] if isinstance(out, tuple) else out

        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(layers[-1].register_forward_hook(last_hook, with_kwargs=True))
        try:
            with torch.no_grad():
                self.reference_logits = model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    use_cache=False,
                    logits_to_keep=1,
                ).logits[:, -1]
        finally:
            for h in handles:
                h.remove()

    def layer(self, module: Any, i: int, hidden: Any) -> Any:
        """Run ``module`` as decoder layer ``i`` on ``hidden`` (same masks/positions as recorded)."""
        args, kwargs = self.calls[i]
        with self.torch.no_grad():
            out = module(hidden, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    @contextlib.contextmanager
    def _head_only(self, final_hidden: Any) -> Iterator[None]:
        """Temporarily replace the layer list so the model's forward goes straight from the
        embeddings to the head, with ``final_hidden`` as the last layer's output."""
        torch = self.torch
        skip = _skip_module(torch)
        path = self.adapter.layers_path
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        original = getattr(parent, attr)
        value = (final_hidden,) if self.tuple_output else final_hidden
        stand_ins = torch.nn.ModuleList(
            [skip() for _ in range(self.num_layers - 1)] + [skip(value)]
        )
        setattr(parent, attr, stand_ins)
        try:
            yield
        finally:
            setattr(parent, attr, original)

    def logits(self, final_hidden: Any, last_only: bool = True) -> Any:
        """Logits of the model's head applied to ``final_hidden`` (the output of the last
        layer): ``[batch, vocab]`` at the last position, or ``[batch, seq, vocab]``."""
        with self.torch.no_grad(), self._head_only(final_hidden):
            out = self.model(
                input_ids=self.input_ids,
                attention_mask=self.attention_mask,
                use_cache=False,
                logits_to_keep=1 if last_only else 0,
            ).logits
        return out[:, -1] if last_only else out

    def run_from(self, i: int, hidden: Any, layers: Any) -> Any:
        """Run ``layers[i:]`` (a model's layer list) from hidden states entering layer ``i``."""
        for j in range(i, self.num_layers):
            hidden = self.layer(layers[j], j, hidden)
        return hidden
