"""A decoder layer's tensors split into its three parts: attention, MLP and norms.

Why parts: post-training does not move a layer uniformly, and restoring or diffing "the
attention of layers 4:7" needs to know, for every tensor of a layer, which part it is. The
answer is architecture knowledge, so it lives in the adapters: each
:class:`~layergraft.arch.spec.FamilySpec` lists its layer's submodules with their part
(``layer_parts``, pure data), and :class:`LayerPartsMixin` gives :class:`ModelAdapter` the
questions in both vocabularies — checkpoint tensor names (:meth:`~LayerPartsMixin.layer_part`,
:meth:`~LayerPartsMixin.layer_part_names`) and module paths of a loaded model
(:meth:`~LayerPartsMixin.layer_parameters`). (A mixin so that ``adapter.py`` stays a
readable screenful under the 400-line house rule.)

The rules, the same for every family:

* A tensor belongs to the part of the *outermost* listed submodule that holds it, so fused
  projections need no special case (Phi-3's ``self_attn.qkv_proj`` is attention,
  ``mlp.gate_up_proj`` is MLP; GPT-2's ``attn.c_attn``/``attn.c_proj`` attention,
  ``mlp.c_fc``/``mlp.c_proj`` MLP), and a bias always follows its weight.
* ``q_norm``/``k_norm`` (Qwen3, Gemma-3, OLMo-2) are **attention**: they sit inside the
  attention module and normalise queries and keys *inside* the attention computation, so
  restoring attention without them would pair base projections with post-trained q/k scales.
  ``norms`` are the norms on the residual stream: pre-norms (``input_layernorm``, GPT-2's
  ``ln_1``/``ln_2``, Gemma-2/3's ``pre_feedforward_layernorm``) and post-norms of a
  sublayer's output (``post_attention_layernorm`` in Gemma-2/3 and OLMo-2,
  ``post_feedforward_layernorm``). GPT-NeoX's ``input_layernorm``/``post_attention_layernorm``
  are norms too, parallel residual or not.
* A layer tensor that no listed submodule holds is an :class:`ArchitectureError` naming it:
  a silent default would let a restore of "attention" quietly take or leave it.

The discovery fallback has no table; it classifies by common name tokens
(:func:`guess_part`) and raises for anything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from layergraft.arch.spec import LAYER_PARTS, FamilySpec, LayerPart
from layergraft.errors import ArchitectureError, InputError

# name tokens of the discovery fallback (a module name is split at "_"; see guess_part)
ATTN_TOKENS = frozenset({"attn", "attention", "self_attention", "query_key_value", "qkv"})
ATTN_TOKENS |= {f"{x}_proj" for x in ("q", "k", "v", "o", "qkv")} | {"wq", "wk", "wv", "wo"}
MLP_TOKENS = frozenset({"mlp", "ffn", "feed_forward", "feedforward", "moe", "experts"})
MLP_TOKENS |= {"block_sparse_moe", "dense_h_to_4h", "dense_4h_to_h", "gate_up_proj"}
MLP_TOKENS |= {"gate_proj", "up_proj", "down_proj", "w1", "w2", "w3", "c_fc"}
_FC = re.compile(r"^fc\d*$")
_NORM = re.compile(r"(norm|^ln(_?\d+|_f)?$)")


def parse_parts(parts: str | Iterable[str]) -> tuple[LayerPart, ...]:
    """``"attn,mlp"``, ``"all"``, ``["norms"]`` -> the parts in canonical order
    (attn, mlp, norms), for ``--parts`` flags and recipes; anything else is an
    :class:`InputError` listing the valid names."""
    words = parts.split(",") if isinstance(parts, str) else list(parts)
    words = [w.strip() for w in words if w.strip()]
    if "all" in words:
        words = [w for w in words if w != "all"] + list(LAYER_PARTS)
    bad = [w for w in words if w not in LAYER_PARTS]
    if bad or not words:
        raise InputError(
            f"unknown layer part {bad[0] if bad else str(parts)!r}; "
            "give attn, mlp, norms or all (several as attn,mlp)"
        )
    return tuple(p for p in LAYER_PARTS if p in words)


def part_from_table(rel: str, table: Mapping[str, LayerPart]) -> LayerPart | None:
    """The part of the outermost submodule in ``table`` holding ``rel`` (a name relative to
    its layer, e.g. ``"self_attn.q_norm.weight"``), or None."""
    pieces = rel.split(".")
    for k in range(1, len(pieces)):
        hit = table.get(".".join(pieces[:k]))
        if hit is not None:
            return hit
    return None


def guess_part(rel: str) -> LayerPart | None:
    """Discovery fallback: the part named by the outermost module of ``rel`` whose name says
    norm (``*norm*``, ``ln_1``), attention (``self_attn``, ``attention``, ``c_attn``, ``q_proj``,
    ...) or MLP (``mlp``, ``ffn``, ``feed_forward``, ``fc1``, ``down_proj``, ...); None if none
    does. A name saying norm wins within one module (``attention_norm`` is a norm) but
    the outermost module decides (``self_attn.q_norm`` is attention)."""
    for piece in rel.split(".")[:-1]:
        low = piece.lower()
        tokens = {low, *low.split("_")}
        if _NORM.search(low):
            return "norms"
        if tokens & ATTN_TOKENS:
            return "attn"
        if tokens & MLP_TOKENS or any(_FC.match(t) for t in tokens):
            return "mlp"
    return None


class LayerPartsMixin:
    """The part questions of :class:`~layergraft.arch.adapter.ModelAdapter` (mixed into it).

    Uses the adapter's ``spec``, its checkpoint layer-name pattern and its module accessors;
    :class:`~layergraft.arch.discovery.GenericAdapter` overrides :meth:`_part_of` to guess.
    """

    spec: FamilySpec
    _layer_re: re.Pattern[str]
    family: str

    def _part_of(self, rel: str) -> LayerPart | None:
        return part_from_table(rel, self.spec.layer_parts)

    def _unknown(self, name: str, rel: str) -> ArchitectureError:
        module = rel.rsplit(".", 1)[0] if "." in rel else "(the layer itself)"
        if self.spec.layer_parts:
            why = f"{module!r} is none of {', '.join(sorted(self.spec.layer_parts))}"
        else:
            why = f"no module name in {module!r} says attention, MLP or norm (discovery)"
        return ArchitectureError(
            f"cannot tell whether layer tensor {name!r} is attention, MLP or norms in a "
            f"{self.family} model ({why}); fix: check that config.json model_type matches the "
            "weights, or list the submodule in layer_parts of a FamilySpec in layergraft.arch.spec"
        )

    def layer_part(self, name: str) -> LayerPart:
        """The part (``"attn"``, ``"mlp"`` or ``"norms"``) of a layer tensor, by its
        checkpoint name; :class:`ArchitectureError` naming the tensor when it is not inside
        a decoder layer or is held by no known submodule."""
        m = self._layer_re.match(name)
        if not m:
            raise ArchitectureError(
                f"tensor {name!r} is not inside a decoder layer of this {self.family} model, so "
                "it has no attention/MLP/norms part; fix: ask only about layer tensors"
            )
        rel = name[m.end() :]
        part = self._part_of(rel)
        if part is None:
            raise self._unknown(name, rel)
        return part

    def layer_part_names(
        self, i: int, tensor_names: Iterable[str], parts: str | Iterable[str] = "all"
    ) -> list[str]:
        """The checkpoint names among ``tensor_names`` of layer ``i``'s tensors of ``parts``
        (``"attn,mlp"``, ``"all"``, a list), in the given order. Every tensor of layer ``i``
        is classified, wanted or not: an unknown one raises rather than being left behind."""
        want = set(parse_parts(parts))
        prefix = self.layer_prefix(i)  # type: ignore[attr-defined]
        return [n for n in tensor_names if n.startswith(prefix) and self.layer_part(n) in want]

    def layer_parameters(
        self, model: Any, i: int, parts: str | Iterable[str] = "all"
    ) -> list[tuple[str, Any]]:
        """``(module name, parameter)`` of layer ``i`` of a loaded model, for ``parts``.

        Names are full ``model.named_parameters()`` keys (``model.layers.3.mlp.up_proj.weight``):
        the layer's module path plus the same relative name the checkpoint uses, which is
        what :meth:`module_name` guarantees for layer tensors."""
        want = set(parse_parts(parts))
        layer = self.layers(model)[i]  # type: ignore[attr-defined]
        prefix = f"{self.layers_path}.{i}."  # type: ignore[attr-defined]
        out = []
        for rel, p in layer.named_parameters():
            part = self._part_of(rel)
            if part is None:
                raise self._unknown(prefix + rel, rel)
            if part in want:
                out.append((prefix + rel, p))
        return out
