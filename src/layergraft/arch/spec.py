"""Architecture knowledge as data: one :class:`FamilySpec` per model family.

Why data and not code: every family in scope is "an embedding, a numbered list of identical
decoder blocks, a final norm, a head"; they differ only in *names* (tensor prefixes, config
keys) and in a few facts (tied by default? parallel residual? Conv1D?). Writing those down as
a table (mergekit's lesson) keeps the special cases in one screenful that can be checked
against transformers, instead of scattering ``if family == ...`` through the algorithms.

All names were verified against transformers 5.23 by building each model, calling
``save_pretrained`` and reading the safetensors header (see ``tests/test_arch.py``).

Checkpoint names vs module names: for every family except ``gpt_neox`` the names in
``model.safetensors`` equal ``model.state_dict()`` keys. transformers 5 renames GPT-NeoX's head
on load/save: the checkpoint holds ``embed_out.weight`` while the module is ``lm_head``. Specs
record the *checkpoint* names (what IO streams) and, separately, the module paths (what the
in-memory surgery touches); :attr:`FamilySpec.checkpoint_to_module` maps one to the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Residual = Literal["sequential", "parallel"]
#: the parts of a decoder layer (see :mod:`layergraft.arch.parts` for the rules)
LayerPart = Literal["attn", "mlp", "norms"]
LAYER_PARTS: tuple[LayerPart, ...] = ("attn", "mlp", "norms")


def _parts(attn: str, mlp: str, *norms: str) -> dict[str, LayerPart]:
    """A ``layer_parts`` table: submodule (relative to a layer) -> part."""
    table: dict[str, LayerPart] = {attn: "attn", mlp: "mlp"}
    table.update(dict.fromkeys(norms, "norms"))
    return table


# q_norm/k_norm live inside self_attn, so they are attention by the outermost-module rule
_PRE_NORMS = ("input_layernorm", "post_attention_layernorm")  # Llama: both are pre-norms
_LLAMA_PARTS = _parts("self_attn", "mlp", *_PRE_NORMS)
# Gemma-2/3: a pre- and a post-norm around each sublayer (post_attention_layernorm is the
# attention's *output* norm here, pre_feedforward_layernorm the MLP's input norm)
_GEMMA2_PARTS = _parts(
    "self_attn", "mlp", *_PRE_NORMS, "pre_feedforward_layernorm", "post_feedforward_layernorm"
)
# OLMo-2: post-norms only (no input_layernorm), on each sublayer's output
_OLMO2_PARTS = _parts("self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm")


def _gemma2_layer_types(config: Mapping[str, Any], n: int) -> list[str]:
    # transformers Gemma2Config.__post_init__: even layers slide, odd layers are global
    return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]


def _gemma3_layer_types(config: Mapping[str, Any], n: int) -> list[str]:
    # transformers Gemma3TextConfig: every `pattern`-th layer is global (pattern defaults to 6)
    pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", 6)) or 6
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]


def _qwen_layer_types(config: Mapping[str, Any], n: int) -> list[str]:
    # transformers Qwen2Config/Qwen3Config: sliding only when enabled, from max_window_layers up
    sliding = config.get("sliding_window") if config.get("use_sliding_window", False) else None
    mwl = config.get("max_window_layers", 28)
    return [
        "sliding_attention" if sliding is not None and i >= mwl else "full_attention"
        for i in range(n)
    ]


@dataclass(frozen=True)
class FamilySpec:
    """Where things are in one family, as checkpoint tensor names and module paths.

    ``layers_path`` is both the module path of the decoder ``nn.ModuleList`` and the tensor
    prefix (``{layers_path}.{i}.``). ``embed``/``pre_extra``/``final_norm``/``head`` are full
    checkpoint tensor names; ``head`` is absent from checkpoints of tied models.
    """

    family: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    layers_path: str = "model.layers"
    embed: tuple[str, ...] = ("model.embed_tokens.weight",)
    pre_extra: tuple[str, ...] = ()  # other "pre" tensors, e.g. GPT-2 position embeddings
    final_norm: tuple[str, ...] = ("model.norm.weight",)
    head: tuple[str, ...] = ("lm_head.weight",)
    embed_module: str = "model.embed_tokens"
    norm_module: str = "model.norm"
    head_module: str = "lm_head"
    attn_module: str = "self_attn"  # relative to a decoder layer; carries ``layer_idx``
    mlp_out: str = "mlp.down_proj"  # relative to a decoder layer
    mlp_out_transposed: bool = False  # True for GPT-2's Conv1D (weight is [in, out])
    num_layers_key: str = "num_hidden_layers"
    hidden_key: str = "hidden_size"
    vocab_key: str = "vocab_size"
    intermediate_key: str | None = "intermediate_size"
    tie_default: bool = False  # transformers' default for tie_word_embeddings in this family
    residual: Residual = "sequential"
    parallel_residual_key: str | None = None  # config key that switches residual to parallel
    # per-layer config lists this family is known to have (others are found by length)
    layer_list_keys: tuple[str, ...] = ()
    # how transformers derives layer_types when config.json lacks them (so slicing keeps them)
    default_layer_types: Callable[[Mapping[str, Any], int], list[str]] | None = None
    checkpoint_to_module: Mapping[str, str] = field(default_factory=dict)
    # submodule of a decoder layer -> its part (attn / mlp / norms); every tensor of a layer
    # must sit in one of them (see layergraft.arch.parts)
    layer_parts: Mapping[str, LayerPart] = field(default_factory=lambda: dict(_LLAMA_PARTS))


SPECS: dict[str, FamilySpec] = {
    s.family: s
    for s in [
        FamilySpec("llama", ("llama",), ("LlamaForCausalLM",)),
        FamilySpec("mistral", ("mistral",), ("MistralForCausalLM",)),
        FamilySpec(
            "qwen2",
            ("qwen2",),
            ("Qwen2ForCausalLM",),
            layer_list_keys=("layer_types",),
            default_layer_types=_qwen_layer_types,
        ),
        FamilySpec(
            "qwen3",
            ("qwen3",),
            ("Qwen3ForCausalLM",),
            layer_list_keys=("layer_types",),
            default_layer_types=_qwen_layer_types,
        ),
        FamilySpec("gemma", ("gemma",), ("GemmaForCausalLM",), tie_default=True),
        FamilySpec(
            "gemma2",
            ("gemma2",),
            ("Gemma2ForCausalLM",),
            tie_default=True,
            layer_list_keys=("layer_types",),
            default_layer_types=_gemma2_layer_types,
            layer_parts=_GEMMA2_PARTS,
        ),
        FamilySpec(
            "gemma3_text",
            ("gemma3_text",),
            ("Gemma3ForCausalLM",),
            tie_default=True,
            layer_list_keys=("layer_types",),
            default_layer_types=_gemma3_layer_types,
            layer_parts=_GEMMA2_PARTS,
        ),
        FamilySpec("phi3", ("phi3",), ("Phi3ForCausalLM",)),
        FamilySpec(
            "gpt2",
            ("gpt2",),
            ("GPT2LMHeadModel",),
            layers_path="transformer.h",
            embed=("transformer.wte.weight",),
            pre_extra=("transformer.wpe.weight",),
            final_norm=("transformer.ln_f.weight", "transformer.ln_f.bias"),
            embed_module="transformer.wte",
            norm_module="transformer.ln_f",
            attn_module="attn",
            mlp_out="mlp.c_proj",
            mlp_out_transposed=True,
            num_layers_key="n_layer",
            hidden_key="n_embd",
            intermediate_key="n_inner",  # None means 4 * n_embd (see ModelAdapter)
            tie_default=True,
            # c_attn (fused qkv) and attn.c_proj; mlp.c_fc and mlp.c_proj; ln_1/ln_2 pre-norms
            layer_parts=_parts("attn", "mlp", "ln_1", "ln_2"),
        ),
        FamilySpec(
            "gpt_neox",
            ("gpt_neox",),
            ("GPTNeoXForCausalLM",),
            layers_path="gpt_neox.layers",
            embed=("gpt_neox.embed_in.weight",),
            final_norm=("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias"),
            head=("embed_out.weight",),
            embed_module="gpt_neox.embed_in",
            norm_module="gpt_neox.final_layer_norm",
            attn_module="attention",
            mlp_out="mlp.dense_4h_to_h",
            residual="parallel",  # transformers' default use_parallel_residual=True
            parallel_residual_key="use_parallel_residual",
            checkpoint_to_module={"embed_out.weight": "lm_head.weight"},
            # both norms are pre-norms (of attention and MLP), parallel residual or not
            layer_parts=_parts("attention", "mlp", *_PRE_NORMS),
        ),
        FamilySpec("olmo2", ("olmo2",), ("Olmo2ForCausalLM",), layer_parts=_OLMO2_PARTS),
    ]
}

# config.json lists that are never per-layer even when their length happens to equal n
NOT_PER_LAYER: frozenset[str] = frozenset(
    {
        "architectures",
        "bad_words_ids",
        "begin_suppress_tokens",
        "suppress_tokens",
        "eos_token_id",
        "bos_token_id",
        "pad_token_id",
        "forced_decoder_ids",
        "id2label",
        "label2id",
        "task_specific_params",
    }
)


def spec_for(model_type: str | None, architectures: Any = None) -> FamilySpec | None:
    """The spec for a config's ``model_type``, else for a listed architecture class name."""
    for s in SPECS.values():
        if model_type in s.model_types:
            return s
    for arch in architectures or ():
        for s in SPECS.values():
            if arch in s.architectures:
                return s
    return None
