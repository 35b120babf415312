"""Every layer tensor of every family is attention, MLP or norms — by the adapter, never by default.

Each family is built from its real transformers config class, saved, and opened as a
checkpoint; the classification is checked against an explicit table per family (so a change
in transformers' names or in our spec shows up here), and the checkpoint-name view and the
module-path view of a loaded model must agree.
"""

from __future__ import annotations

import pytest

from layergraft.arch import (
    LAYER_PARTS,
    GenericAdapter,
    adapter_for,
    adapter_for_model,
    guess_part,
    parse_parts,
)
from layergraft.checkpoint.reader import Checkpoint, open_checkpoint
from layergraft.errors import ArchitectureError, InputError
from tiny import FAMILIES, make_tiny, save_tiny

N = 3
_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
_GLU = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
_LLAMA_ATTN = tuple(f"self_attn.{p}.weight" for p in _QKVO)
_QKV_BIAS = tuple(f"self_attn.{p}.bias" for p in _QKVO[:3])
_QK_NORMS = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
_PRE = ("input_layernorm.weight", "post_attention_layernorm.weight")
_GEMMA2_NORMS = (*_PRE, "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight")


def _wb(*modules: str) -> tuple[str, ...]:
    return tuple(f"{m}.{leaf}" for m in modules for leaf in ("weight", "bias"))


#: family -> part -> the names (relative to the layer) a tiny model of it has
EXPECTED: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": {"attn": _LLAMA_ATTN, "mlp": _GLU, "norms": _PRE},
    "mistral": {"attn": _LLAMA_ATTN, "mlp": _GLU, "norms": _PRE},
    # Qwen2: biases on q/k/v (not o) follow their weights
    "qwen2": {"attn": _LLAMA_ATTN + _QKV_BIAS, "mlp": _GLU, "norms": _PRE},
    # q_norm/k_norm live inside attention: attention, not norms
    "qwen3": {"attn": _LLAMA_ATTN + _QK_NORMS, "mlp": _GLU, "norms": _PRE},
    "gemma": {"attn": _LLAMA_ATTN, "mlp": _GLU, "norms": _PRE},
    "gemma2": {"attn": _LLAMA_ATTN, "mlp": _GLU, "norms": _GEMMA2_NORMS},
    "gemma3_text": {"attn": _LLAMA_ATTN + _QK_NORMS, "mlp": _GLU, "norms": _GEMMA2_NORMS},
    # fused projections
    "phi3": {
        "attn": ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight"),
        "mlp": ("mlp.gate_up_proj.weight", "mlp.down_proj.weight"),
        "norms": _PRE,
    },
    # Conv1D everywhere; c_proj is attention under attn and MLP under mlp
    "gpt2": {
        "attn": _wb("attn.c_attn", "attn.c_proj"),
        "mlp": _wb("mlp.c_fc", "mlp.c_proj"),
        "norms": _wb("ln_1", "ln_2"),
    },
    # parallel residual: both norms are still norms
    "gpt_neox": {
        "attn": _wb("attention.query_key_value", "attention.dense"),
        "mlp": _wb("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        "norms": _wb("input_layernorm", "post_attention_layernorm"),
    },
    # post-norms only, plus q/k norms inside attention
    "olmo2": {
        "attn": _LLAMA_ATTN + _QK_NORMS,
        "mlp": _GLU,
        "norms": ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight"),
    },
}


def test_expectations_cover_every_family() -> None:
    assert set(EXPECTED) == set(FAMILIES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Checkpoint]:
    return {
        fam: open_checkpoint(
            save_tiny(fam, tmp_path_factory.mktemp(fam), num_layers=N, max_shard_size="20KB")
        )
        for fam in FAMILIES
    }


def _layer_names(ck: Checkpoint, i: int) -> list[str]:
    prefix = ck.adapter.layer_prefix(i)
    return [n for n in ck.tensors if n.startswith(prefix)]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_tensor_has_exactly_one_expected_part(
    family: str, checkpoints: dict[str, Checkpoint]
) -> None:
    ck = checkpoints[family]
    ad = ck.adapter
    names = list(ck.tensors)
    for i in range(N):
        layer = _layer_names(ck, i)
        prefix = ad.layer_prefix(i)
        by_part = {p: ad.layer_part_names(i, names, p) for p in LAYER_PARTS}
        # a partition: disjoint, covering, each part non-empty
        assert all(by_part[p] for p in LAYER_PARTS), by_part
        assert sorted(n for p in LAYER_PARTS for n in by_part[p]) == sorted(layer)
        assert sorted(ad.layer_part_names(i, names, "all")) == sorted(layer)
        for p in LAYER_PARTS:
            assert all(ad.layer_part(n) == p for n in by_part[p])
            got = sorted(n[len(prefix) :] for n in by_part[p])
            assert got == sorted(EXPECTED[family][p]), (family, p)
    # several parts at once, in the given tensor order
    two = ad.layer_part_names(1, names, "norms,attn")
    assert two == [n for n in _layer_names(ck, 1) if ad.layer_part(n) in ("attn", "norms")]


@pytest.mark.parametrize("family", FAMILIES)
def test_module_paths_agree_with_checkpoint_names(
    family: str, checkpoints: dict[str, Checkpoint]
) -> None:
    ck = checkpoints[family]
    model = make_tiny(family, N)
    mad = adapter_for_model(model)
    params = dict(model.named_parameters())
    for i in range(N):
        for p in (*LAYER_PARTS, "all"):
            from_model = mad.layer_parameters(model, i, p)
            from_disk = ck.adapter.layer_part_names(i, ck.tensors, p)
            assert len(from_model) == len(from_disk) > 0
            assert all(params[n] is t for n, t in from_model)
            disk = {ck.adapter.module_name(n): n for n in from_disk}
            assert {n for n, _ in from_model} == set(disk)
            assert all(tuple(t.shape) == ck.tensors[disk[n]].shape for n, t in from_model)


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_layer_tensor_is_an_error_naming_it(
    family: str, checkpoints: dict[str, Checkpoint]
) -> None:
    ad = checkpoints[family].adapter
    weird = f"{ad.layer_prefix(0)}weird.weight"
    with pytest.raises(ArchitectureError, match=rf"{weird.replace('.', '[.]')}.*fix: "):
        ad.layer_part(weird)
    with pytest.raises(ArchitectureError, match="weird"):
        ad.layer_part_names(0, [*checkpoints[family].tensors, weird], "mlp")
    # a tensor held by the layer itself, outside every submodule
    with pytest.raises(ArchitectureError, match="is attention, MLP or norms"):
        ad.layer_part(f"{ad.layer_prefix(1)}scale")
    # not a layer tensor at all
    with pytest.raises(ArchitectureError, match="not inside a decoder layer"):
        ad.layer_part(ad.embed_names[0])


def test_model_unknown_parameter_is_an_error() -> None:
    import torch

    model = make_tiny("llama", 2)
    model.model.layers[1].extra = torch.nn.Linear(2, 2)
    ad = adapter_for_model(model)
    assert len(ad.layer_parameters(model, 0)) == 9
    with pytest.raises(ArchitectureError, match=r"model\.layers\.1\.extra\.weight"):
        ad.layer_parameters(model, 1, "attn")


def test_biases_follow_their_weights() -> None:
    model = make_tiny("llama", 2, attention_bias=True, mlp_bias=True)
    ad = adapter_for_model(model)
    parts = {n.split(".", 3)[3]: ad.layer_part(n) for n, _ in ad.layer_parameters(model, 0)}
    assert parts["self_attn.o_proj.bias"] == "attn" and parts["mlp.down_proj.bias"] == "mlp"
    assert sum(1 for n in parts if n.endswith(".bias")) == 7


def test_gpt2_checkpoint_without_base_prefix(checkpoints: dict[str, Checkpoint]) -> None:
    ck = checkpoints["gpt2"]
    stripped = [n.removeprefix("transformer.") for n in ck.tensors]
    ad = adapter_for(ck.config, stripped)
    assert ad.layer_part("h.2.attn.c_proj.weight") == "attn"
    assert ad.layer_part("h.2.mlp.c_proj.weight") == "mlp"
    assert ad.layer_part("h.2.ln_2.bias") == "norms"
    assert sorted(ad.layer_part_names(0, stripped, "norms")) == [
        "h.0.ln_1.bias",
        "h.0.ln_1.weight",
        "h.0.ln_2.bias",
        "h.0.ln_2.weight",
    ]
    # the legacy causal-mask buffers of the original files sit inside attention
    assert ad.layer_part("h.0.attn.bias") == ad.layer_part("h.0.attn.masked_bias") == "attn"


def test_discovery_classifies_by_name_tokens(checkpoints: dict[str, Checkpoint]) -> None:
    ck = checkpoints["llama"]
    renamed = [n.replace("model.layers.", "backbone.blocks.") for n in ck.tensors]
    cfg = {**ck.config, "model_type": "mystery", "architectures": ["MysteryForCausalLM"]}
    with pytest.warns(UserWarning):
        ad = adapter_for(cfg, renamed)
    assert isinstance(ad, GenericAdapter)
    for n_old, n_new in zip(ck.tensors, renamed, strict=True):
        if ck.adapter.classify(n_old).section == "layer":
            assert ad.layer_part(n_new) == ck.adapter.layer_part(n_old)
    with pytest.raises(ArchitectureError, match=r"backbone\.blocks\.0\.mixer\.in_proj\.weight"):
        ad.layer_part("backbone.blocks.0.mixer.in_proj.weight")


def test_discovery_from_model_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    import layergraft.arch as arch

    model = make_tiny("gpt_neox", 2)
    monkeypatch.setattr(arch, "spec_for", lambda *a, **k: None)
    with pytest.warns(UserWarning):
        ad = adapter_for_model(model)
    assert isinstance(ad, GenericAdapter)
    got = {p: len(ad.layer_parameters(model, 1, p)) for p in LAYER_PARTS}
    assert got == {"attn": 4, "mlp": 4, "norms": 4}


@pytest.mark.parametrize(
    ("rel", "part"),
    [
        ("attention_norm.weight", "norms"),  # original Llama files
        ("ffn_norm.weight", "norms"),
        ("attention.wq.weight", "attn"),
        ("feed_forward.w1.weight", "mlp"),
        ("self_attention.query_key_value.bias", "attn"),  # Falcon / Bloom
        ("mlp.dense_4h_to_h.weight", "mlp"),
        ("self_attn.q_norm.weight", "attn"),  # the outermost module decides
        ("post_attention_layernorm.weight", "norms"),
        ("block_sparse_moe.experts.0.w2.weight", "mlp"),
        ("fc1.weight", "mlp"),
        ("ln_1.bias", "norms"),
        ("mixer.in_proj.weight", None),  # Mamba: neither
        ("weight", None),
    ],
)
def test_guess_part(rel: str, part: str | None) -> None:
    assert guess_part(rel) == part


def test_parse_parts() -> None:
    assert parse_parts("all") == ("attn", "mlp", "norms")
    assert parse_parts("mlp, attn") == ("attn", "mlp")
    assert parse_parts(["norms", "norms"]) == ("norms",)
    for bad in ("attention", "", "attn,foo"):
        with pytest.raises(InputError, match="give attn, mlp, norms or all"):
            parse_parts(bad)
