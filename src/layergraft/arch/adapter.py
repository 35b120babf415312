"""The :class:`ModelAdapter`: the one object the rest of layergraft asks "where is X?".

Why a class on top of the spec table: the table is pure data; the adapter binds it to one
``config.json`` (layer count, tied weights, residual structure) and answers questions in two
vocabularies that must not be confused:

* **checkpoint names** — tensor names as they appear in ``*.safetensors`` files
  (:meth:`layer_prefix`, :meth:`classify`, :meth:`layer_part`, :attr:`embed_names`, ...).
  Checkpoint IO streams these without ever importing torch.
* **module paths** — attribute paths inside a loaded ``PreTrainedModel``
  (:attr:`layers_path`, :meth:`mlp_out_proj`, :meth:`layer_parameters`, ...), used by in-memory
  surgery, calibration hooks and folding.

They coincide for most families; they differ for GPT-NeoX's head (``embed_out.weight`` on
disk, ``lm_head`` in memory, a transformers-5 conversion) and for checkpoints saved without
the base-model prefix (the original GPT-2 files say ``h.0.attn...``, not
``transformer.h.0.attn...``); :meth:`module_name` translates.

Torch is imported lazily (only model accessors need it) so that ``layergraft restore``, which
only needs the checkpoint-name half, starts fast.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from layergraft.arch.parts import LayerPartsMixin
from layergraft.arch.spec import NOT_PER_LAYER, FamilySpec, Residual
from layergraft.errors import ArchitectureError, RangeError

log = logging.getLogger("layergraft.arch")

Section = Literal["pre", "layer", "post"]
Role = Literal["embed", "layer", "norm", "head", "other"]

# config keys that may hold the layer count, in the order we trust them
NUM_LAYERS_KEYS: tuple[str, ...] = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
HIDDEN_KEYS: tuple[str, ...] = ("hidden_size", "n_embd", "d_model", "dim")
VOCAB_KEYS: tuple[str, ...] = ("vocab_size", "n_vocab", "padded_vocab_size")
INTERMEDIATE_KEYS: tuple[str, ...] = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")
CONTEXT_KEYS: tuple[str, ...] = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")
# attributes transformers uses to tell a module which layer (and which KV-cache slot) it is
LAYER_IDX_ATTRS: tuple[str, ...] = ("layer_idx", "layer_id")


class DiscoveryWarning(UserWarning):
    """The architecture was guessed (no spec for this family): check the guessed prefix."""


@dataclass(frozen=True)
class Part:
    """Where one checkpoint tensor belongs.

    ``section`` is what surgery needs (``pre`` = before the first layer, ``post`` = after
    the last); ``role`` is what a report or the embed/head choice needs.
    """

    section: Section
    layer: int | None = None
    role: Role = "other"


def _first(config: Mapping[str, Any], keys: Iterable[str]) -> tuple[str | None, Any]:
    for k in keys:
        if config.get(k) is not None:
            return k, config[k]
    return None, None


def _discovery_warning(msg: str) -> None:
    # warnings only: library users and tests see a DiscoveryWarning, and the CLI routes
    # warnings into logging (captureWarnings), so the message is printed once
    warnings.warn(msg, DiscoveryWarning, stacklevel=3)


class ModelAdapter(LayerPartsMixin):
    """Answers "where is X" for one family bound to one config (and, through
    :class:`~layergraft.arch.parts.LayerPartsMixin`, which part of a layer a tensor is).

    Parameters: ``spec`` (the family's data), ``config`` (a ``config.json`` dict; copied),
    ``strip`` (a base-model prefix such as ``"transformer."`` that this checkpoint's tensor
    names lack; see the module docstring).
    """

    def __init__(self, spec: FamilySpec, config: Mapping[str, Any], strip: str = "") -> None:
        self.spec = spec
        self.config: dict[str, Any] = dict(config)
        self.strip = strip
        self._layer_re = re.compile(rf"^{re.escape(self._ck(spec.layers_path))}\.(\d+)\.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, num_layers={self.num_layers}, prefix={self.layer_prefix(0)!r})"

    # ---- naming helpers -------------------------------------------------------------------
    def _ck(self, module_name: str) -> str:
        """Module-side name -> checkpoint-side name (drops the stripped base prefix)."""
        if self.strip and module_name.startswith(self.strip):
            return module_name[len(self.strip) :]
        return module_name

    def module_name(self, tensor_name: str) -> str:
        """Checkpoint tensor name -> ``model.state_dict()`` key (they differ for GPT-NeoX's
        head in transformers 5 and for checkpoints saved without the base-model prefix)."""
        name = self.spec.checkpoint_to_module.get(tensor_name, tensor_name)
        heads = {*self.spec.head, *self.spec.checkpoint_to_module.values()}
        if self.strip and not name.startswith(self.strip) and name not in heads:
            name = self.strip + name
        return name

    # ---- facts from config ----------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def num_layers_key(self) -> str:
        """The config key holding the layer count (``n_layer`` for GPT-2)."""
        if self.spec.num_layers_key in self.config:
            return self.spec.num_layers_key
        k, _ = _first(self.config, NUM_LAYERS_KEYS)
        return k or self.spec.num_layers_key

    @cached_property
    def num_layers(self) -> int:
        n = self.config.get(self.num_layers_key)
        if not isinstance(n, int) or n <= 0:
            raise ArchitectureError(
                f"config.json of this {self.family} model has no valid {self.num_layers_key!r} "
                f"(got {n!r}); fix: add the decoder layer count to config.json"
            )
        return n

    @property
    def hidden_size(self) -> int:
        v = self.config.get(self.spec.hidden_key)
        if v is None:
            _, v = _first(self.config, HIDDEN_KEYS)
        return int(v) if v is not None else 0

    @property
    def vocab_size(self) -> int:
        v = self.config.get(self.spec.vocab_key)
        if v is None:
            _, v = _first(self.config, VOCAB_KEYS)
        return int(v) if v is not None else 0

    @property
    def intermediate_size(self) -> int | None:
        """MLP width; GPT-2's ``n_inner=None`` means 4 * hidden (as transformers does)."""
        key = self.spec.intermediate_key
        v = self.config.get(key) if key else None
        if v is None and self.family == "gpt2":
            return 4 * self.hidden_size
        if v is None:
            _, v = _first(self.config, INTERMEDIATE_KEYS)
        return int(v) if v is not None else None

    @property
    def context_length(self) -> int | None:
        """Positions the model was built for (None where its config does not say)."""
        _, v = _first(self.config, CONTEXT_KEYS)
        return int(v) if v is not None else None

    @property
    def tied_embeddings(self) -> bool:
        """``tie_word_embeddings`` with *this family's* transformers default (Gemma and GPT-2
        tie by default, Llama does not), because config.json often omits the key."""
        return bool(self.config.get("tie_word_embeddings", self.spec.tie_default))

    @property
    def residual(self) -> Residual:
        """``parallel`` when attention and MLP read the same residual input (GPT-NeoX with
        ``use_parallel_residual``, its transformers default); matters for folding/repair."""
        key = self.spec.parallel_residual_key
        if key is not None:
            default = self.spec.residual == "parallel"
            return "parallel" if self.config.get(key, default) else "sequential"
        return self.spec.residual

    # ---- checkpoint names -----------------------------------------------------------------
    def layer_prefix(self, i: int) -> str:
        """Checkpoint tensor-name prefix of layer ``i``, e.g. ``"model.layers.3."``."""
        return f"{self._ck(self.spec.layers_path)}.{i}."

    @property
    def embed_names(self) -> list[str]:
        """Token-embedding tensor(s): the one a tied head shares."""
        return [self._ck(n) for n in self.spec.embed]

    @property
    def pre_names(self) -> list[str]:
        """Every known tensor before the first layer (embeddings, GPT-2 position table)."""
        return [self._ck(n) for n in (*self.spec.embed, *self.spec.pre_extra)]

    @property
    def final_norm_names(self) -> list[str]:
        return [self._ck(n) for n in self.spec.final_norm]

    @property
    def head_names(self) -> list[str]:
        """Head tensor(s) in the checkpoint; empty when tied (the head *is* the embedding,
        and transformers does not write it, so copying it would write it twice)."""
        if self.tied_embeddings:
            return []
        return [self._ck(n) for n in self.spec.head]

    @cached_property
    def _fixed(self) -> dict[str, Part]:
        parts: dict[str, Part] = {}
        for n in self.spec.embed:
            parts[self._ck(n)] = Part("pre", None, "embed")
        for n in self.spec.pre_extra:
            parts[self._ck(n)] = Part("pre", None, "embed")
        for n in self.spec.final_norm:
            parts[self._ck(n)] = Part("post", None, "norm")
        for n in self.spec.head:
            # recognised even when tied: some tools write a tied head anyway
            parts[self._ck(n)] = Part("post", None, "head")
            parts[self._ck(self.spec.checkpoint_to_module.get(n, n))] = Part("post", None, "head")
        return parts

    def classify(self, name: str) -> Part:
        """Which section (and layer) a checkpoint tensor belongs to.

        Unknown tensors outside the layers raise: silently assigning them to pre or post
        would let a restore take them from the wrong model.
        """
        m = self._layer_re.match(name)
        if m:
            i = int(m.group(1))
            if i >= self.num_layers:
                raise ArchitectureError(
                    f"tensor {name!r} is layer {i} but config.json says {self.num_layers} layers; "
                    f"fix: correct {self.num_layers_key!r} in config.json or use matching weights"
                )
            return Part("layer", i, "layer")
        part = self._fixed.get(name)
        if part is not None:
            return part
        if name.endswith((".attn.masked_bias", ".inv_freq")):  # legacy buffers, harmless
            return Part("post", None, "other")
        raise ArchitectureError(
            f"cannot place tensor {name!r} in a {self.family} model (not a layer under "
            f"{self.layer_prefix(0).replace('.0.', '.<i>.')}, not embeddings/norm/head); "
            "fix: check that config.json model_type matches the weights"
        )

    # ---- per-layer config -----------------------------------------------------------------
    def layer_config_keys(self, config: Mapping[str, Any] | None = None) -> list[str]:
        """Top-level config keys holding one entry per layer: the family's known ones
        (``layer_types``) plus any list whose length equals the layer count (sliding-window
        lists, per-layer rope flags, ...), minus keys known not to be per-layer."""
        cfg = self.config if config is None else config
        n = cfg.get(self.num_layers_key, self.num_layers if config is None else None)
        keys = []
        for k, v in cfg.items():
            if k in NOT_PER_LAYER or not isinstance(v, list):
                continue
            if k in self.spec.layer_list_keys or len(v) == n:
                keys.append(k)
        return keys

    def slice_config(self, config: Mapping[str, Any], keep: Sequence[int]) -> dict[str, Any]:
        """A new config for a model made of old layers ``keep`` (in that order; repeats allowed).

        Updates the layer count, slices every per-layer list (materialising ``layer_types``
        first when the family derives it from scalars, so a pruned Gemma-2 keeps each layer's
        sliding/global kind), and rewrites ``max_window_layers`` (Qwen: layers ``>=`` it
        slide) to the number of kept layers below the old threshold. That rewrite is exact
        for ascending ``keep``; for reorderings the explicit ``layer_types`` is what
        transformers uses, so it stays correct there too.
        """
        new = copy.deepcopy(dict(config))
        key = self.num_layers_key
        n = new.get(key)
        if not isinstance(n, int):
            n = self.num_layers  # generic discovery: the count came from tensor names
        bad = [i for i in keep if not (0 <= int(i) < n)]
        if bad or not keep:
            raise RangeError(
                f"layers to keep must be within 0:{n} and not empty (got {list(keep)}); fix: check the ranges"
            )
        if self.spec.default_layer_types is not None and new.get("layer_types") is None:
            new["layer_types"] = self.spec.default_layer_types(new, n)
        for k in self.layer_config_keys(new):
            v = new[k]
            if len(v) != n:
                raise ArchitectureError(
                    f"config {k!r} has {len(v)} entries for {n} layers; fix: correct config.json"
                )
            new[k] = [copy.deepcopy(v[int(i)]) for i in keep]
        mwl = new.get("max_window_layers")
        if isinstance(mwl, int):
            new["max_window_layers"] = sum(1 for i in keep if int(i) < mwl)
        new[key] = len(keep)
        for alias in NUM_LAYERS_KEYS:  # some configs carry an alias next to the real key
            if alias != key and isinstance(new.get(alias), int) and new[alias] == n:
                new[alias] = len(keep)
        return new

    def slice_model_config(self, model: Any, keep: Sequence[int]) -> None:
        """Apply :meth:`slice_config` to a loaded model's ``model.config`` in place (the KV
        cache and sliding-window masks are built from it at generation time)."""
        old = model.config.to_dict()
        new = self.slice_config(old, keep)
        for k, v in new.items():
            if old.get(k) != v:
                setattr(model.config, k, v)

    # ---- module paths and accessors -------------------------------------------------------
    @property
    def layers_path(self) -> str:
        """Module path of the decoder ``nn.ModuleList`` (``model.layers``)."""
        return self.spec.layers_path

    @property
    def mlp_out_transposed(self) -> bool:
        """True when the MLP output projection stores ``[in, out]`` (GPT-2's Conv1D)."""
        return self.spec.mlp_out_transposed

    def mlp_out_proj(self, i: int) -> str:
        """Module path of layer ``i``'s MLP output projection (the folding target)."""
        return f"{self.layers_path}.{i}.{self.spec.mlp_out}"

    def attn_path(self, i: int) -> str:
        return f"{self.layers_path}.{i}.{self.spec.attn_module}"

    @property
    def layer_idx_attrs(self) -> tuple[str, ...]:
        return LAYER_IDX_ATTRS

    @staticmethod
    def _get(model: Any, path: str) -> Any:
        try:
            return model.get_submodule(path)
        except AttributeError:
            # a bare base model (LlamaModel) lacks the first path component
            head, _, rest = path.partition(".")
            if rest:
                try:
                    return model.get_submodule(rest)
                except AttributeError:
                    pass
            raise ArchitectureError(
                f"model {type(model).__name__} has no module {path!r}; fix: load it with AutoModelForCausalLM"
            ) from None

    def layers(self, model: Any) -> Any:
        """The decoder ``nn.ModuleList``."""
        return self._get(model, self.layers_path)

    def embeddings(self, model: Any) -> Any:
        return model.get_input_embeddings()

    def final_norm(self, model: Any) -> Any:
        return self._get(model, self.spec.norm_module)

    def lm_head(self, model: Any) -> Any:
        head = model.get_output_embeddings()
        return head if head is not None else self._get(model, self.spec.head_module)

    def renumber_layer_idx(self, model: Any) -> int:
        """Set every ``layer_idx``/``layer_id`` inside decoder layer ``k`` to ``k``.

        Why: attention modules index the KV cache (and Gemma's sliding/global choice) by
        their ``layer_idx``; after removing or duplicating layers, stale indices make two
        layers share a cache slot (silently wrong with Llama) or overflow it (Gemma-2
        crash). A module object listed twice cannot have two indices, so duplicated layers
        must be deep copies; we raise rather than renumber half of them. Note GPT-2 with
        ``scale_attn_by_inverse_layer_idx`` scales attention by its index, so renumbering
        changes its outputs (by design: it is the new depth). Returns the attributes set.
        """
        layers = self.layers(model)
        seen: dict[int, int] = {}
        for k, layer in enumerate(layers):
            if id(layer) in seen:
                raise ValueError(
                    f"decoder layers {seen[id(layer)]} and {k} are the same module object; "
                    "deep-copy duplicated layers before renumbering"
                )
            seen[id(layer)] = k
        count = 0
        for k, layer in enumerate(layers):
            for mod in layer.modules():
                for attr in LAYER_IDX_ATTRS:
                    if isinstance(getattr(mod, attr, None), int):
                        setattr(mod, attr, k)
                        count += 1
        return count
