"""Running decoder layers one at a time on a fixed batch, for fast interval sweeps.

Why: a sweep scores every interval ``[s, e)`` of a hybrid "post layers < s, base layers
s..e-1, post layers >= e". Running each hybrid from the embeddings repeats work: the hidden
states entering ``s`` are the post model's for every interval starting at ``s``, and the base
chain s..e-1 extends by one layer as ``e`` grows. So we record what every decoder layer of the
post model *receives besides its hidden states* (masks, rotary embeddings, per-layer
sliding-window masks, ...) in one cheap pass in which the layers are stand-ins that only
record (and the pass stops before the head), then call the layers directly. No architecture
knowledge is needed beyond the adapter's layer list and attention windows: the model computes
its own position embeddings, and the head (final norm, lm_head, logit soft-capping) is run by
the model's own forward with the layers replaced by pass-throughs.

Two kinds of batch:

* a dense batch (``input_ids`` and a 2-D ``attention_mask``, e.g. perplexity chunks): the
  model builds its own masks, from padding-aware positions;
* a :class:`~layergraft.models.packing.Packed` batch (token trees): the runner gives the model
  the tree's mask and depths as positions, then hands each sliding-window layer the same mask
  cut to its window (:mod:`layergraft.arch.windows`). transformers passes a ready 4-D mask to
  the layers untouched, so the layer calls carry exactly the masks built here.

Memory: one batch's hidden states and the recorded call arguments; the head runs on at most
``HEAD_CHUNK`` positions at a time, so a 262k-token vocabulary costs a few hundred MB at most.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from layergraft.arch.windows import attention_windows
from layergraft.errors import InputError
from layergraft.models.batching import position_ids
from layergraft.models.packing import Packed

#: positions whose logits :meth:`LayerRunner.log_probs` computes at once, at least; more
#: for a small vocabulary, up to about HEAD_ELEMENTS logits per chunk
HEAD_CHUNK = 64
HEAD_ELEMENTS = 1 << 22
#: attention implementations that accept an arbitrary additive 4-D mask
_MASKABLE = ("eager", "sdpa")


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


def _compute_dtype(model: Any) -> Any:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    import torch

    return torch.float32


class LayerRunner:
    """The recorded layer calls of ``model`` on one batch: a :class:`Packed` batch, or dense
    ``input_ids`` with an optional 2-D ``attention_mask``.

    ``hidden0`` is the residual stream entering layer 0 (the embeddings); :meth:`layer` runs
    any compatible decoder layer (the base model's too) at position ``i``; :meth:`logits`
    and :meth:`log_probs` run the model's head on the output of the last layer.
    """

    def __init__(
        self, model: Any, adapter: Any, input_ids: Any, attention_mask: Any | None = None
    ) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.adapter = adapter
        self.packed: Packed | None = input_ids if isinstance(input_ids, Packed) else None
        self.num_layers = len(adapter.layers(model))
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), {})] * self.num_layers
        self.tuple_output = False
        self.hidden0: Any = None
        if self.packed is not None:
            self.input_ids = self.packed.input_ids
            self.attention_mask = None
            positions = self.packed.position_ids
            given = self._mask(None)
        else:
            self.input_ids = input_ids
            self.attention_mask = (
                attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            )
            positions = position_ids(self.attention_mask)
            given = self.attention_mask

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
                input_ids=self.input_ids,
                attention_mask=given,
                position_ids=positions,
                use_cache=False,
            )
        if self.packed is not None:
            self._window_masks(given)

    # ---- packed batches: one mask per attention window ----------------------------------------
    def _mask(self, window: int | None) -> Any:
        """The packed batch's additive ``[rows, 1, width, width]`` mask in the compute dtype."""
        assert self.packed is not None
        impl = getattr(self.model.config, "_attn_implementation", None) or "eager"
        if impl not in _MASKABLE:
            raise InputError(
                f"the model was loaded with {impl!r} attention, which cannot take a packed "
                "batch's mask; load it with attn_implementation='sdpa' (layergraft's default)"
            )
        dtype = _compute_dtype(self.model)
        allowed = self.packed.allowed(window)
        mask = self.torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        mask.masked_fill_(~allowed, self.torch.finfo(dtype).min)
        return mask[:, None]

    def _window_masks(self, full: Any) -> None:
        """Give every sliding-window layer the packed mask cut to its window."""
        windows = attention_windows(self.adapter.family, self.model.config, self.num_layers)
        cut: dict[int, Any] = {}
        for i, w in enumerate(windows):
            if w is None:
                continue
            if w not in cut:
                cut[w] = self._mask(w)
            args, kwargs = self.calls[i]
            hits = [k for k, v in kwargs.items() if v is full]
            spots = [j for j, v in enumerate(args) if v is full]
            if not hits and not spots:
                raise InputError(
                    f"decoder layer {i} of this {self.adapter.family} model did not receive the "
                    "attention mask it was given, so its sliding window cannot be applied to a "
                    "packed batch; this architecture cannot be scored with packed batches"
                )
            kwargs = {k: (cut[w] if k in hits else v) for k, v in kwargs.items()}
            args = tuple(cut[w] if j in spots else v for j, v in enumerate(args))
            self.calls[i] = (args, kwargs)

    # ---- layers ------------------------------------------------------------------------------
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

    # ---- the head ----------------------------------------------------------------------------
    def _head(self, input_ids: Any, mask: Any, value: Any, keep: int) -> Any:
        """The model's own forward with pass-through layers and ``value`` as the last
        layer's output: final norm, lm_head, soft-capping, whatever the family does."""
        stand_in = _stand_in(self.torch)
        value = (value,) if self.tuple_output else value
        stand_ins = [stand_in() for _ in range(self.num_layers - 1)] + [stand_in(value=value)]
        with self.torch.no_grad(), self._layers_replaced(stand_ins):
            return self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids(mask),
                use_cache=False,
                logits_to_keep=keep,
            ).logits

    def logits(self, final_hidden: Any, last_only: bool = True) -> Any:
        """Logits of the model's head on ``final_hidden`` (the output of the last layer) of
        a dense batch: ``[batch, vocab]`` at the last position, or ``[batch, seq, vocab]``."""
        if self.packed is not None:
            raise ValueError("a packed batch is read with log_probs(), at its own positions")
        out = self._head(self.input_ids, self.attention_mask, final_hidden, 1 if last_only else 0)
        return out[:, -1] if last_only else out

    def log_probs(self, final_hidden: Any, reads: Reads) -> Any:
        """The float64 log-probabilities of every requested token at its slot (``reads``,
        flat, in request order). The head runs on as many slots at once as keep one chunk of
        logits near :data:`HEAD_ELEMENTS`, and the normaliser is taken over the whole
        vocabulary in float64."""
        torch = self.torch
        out = torch.empty(reads.ids.numel(), dtype=torch.float64, device=final_hidden.device)
        n = reads.rows.numel()
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 0)
        step = max(HEAD_CHUNK, HEAD_ELEMENTS // max(vocab, 1))
        for a in range(0, n, step):
            b = min(a + step, n)
            h = final_hidden[reads.rows[a:b], reads.cols[a:b]][None]  # [1, m, hidden]
            dummy = torch.zeros((1, b - a), dtype=torch.long, device=final_hidden.device)
            logits = self._head(dummy, torch.ones_like(dummy), h, 0)[0]  # [m, vocab]
            lse = torch.logsumexp(logits.double(), dim=-1)
            ta, tb = int(reads.offsets[a]), int(reads.offsets[b])
            local = reads.slot_of[ta:tb] - a
            out[ta:tb] = logits[local, reads.ids[ta:tb]].double() - lse[local]
        return out


@dataclass(frozen=True)
class Reads:
    """Which token ids to read at which ``(row, col)`` slots of a packed batch, as index
    tensors built once per batch: ``rows``/``cols`` per slot, and per requested id its
    ``slot_of`` and the id itself, grouped by slot (``offsets[k]`` is slot ``k``'s first)."""

    rows: Any
    cols: Any
    slot_of: Any
    ids: Any
    offsets: Any

    @staticmethod
    def of(
        slots: Sequence[tuple[int, int]], ids: Sequence[Sequence[int]], device: Any = None
    ) -> Reads:
        import torch

        counts = [len(x) for x in ids]
        offsets = [0]
        for c in counts:
            offsets.append(offsets[-1] + c)

        def t(values: list[int]) -> Any:
            return torch.tensor(values, dtype=torch.long, device=device)

        return Reads(
            rows=t([r for r, _ in slots]),
            cols=t([c for _, c in slots]),
            slot_of=t([k for k, c in enumerate(counts) for _ in range(c)]),
            ids=t([i for x in ids for i in x]),
            offsets=t(offsets),
        )
