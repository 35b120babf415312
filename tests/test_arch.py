"""Architecture adapters against what transformers really writes and builds.

Every family: build a tiny random model, save it, and check the adapter partitions the
checkpoint's tensor names into pre / exactly one layer / post; then the module-side accessors,
config slicing (rebuilt through the real config classes, which validate ``layer_types``),
``layer_idx`` renumbering (cached vs uncached generation), discovery and errors.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import layergraft.arch as arch
from layergraft.arch import (
    DiscoveryWarning,
    GenericAdapter,
    ModelAdapter,
    adapter_for,
    adapter_for_model,
)
from layergraft.errors import ArchitectureError, RangeError
from tiny import FAMILIES, HIDDEN, config_class, make_tiny, save_tiny, tiny_config

N = 4


def checkpoint_names(path: Path) -> list[str]:
    names: list[str] = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            names.extend(fh.keys())
    return names


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Every family saved once (sharded, so the index path is exercised too)."""
    out = {}
    for fam in FAMILIES:
        d = save_tiny(fam, tmp_path_factory.mktemp(fam), num_layers=N, max_shard_size="20KB")
        out[fam] = (json.loads((d / "config.json").read_text()), checkpoint_names(d))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_partition(
    family: str, saved: dict[str, tuple[dict[str, Any], list[str]]]
) -> None:
    config, names = saved[family]
    ad = adapter_for(config, names)
    assert type(ad) is ModelAdapter and ad.family == family
    assert ad.num_layers == N and ad.hidden_size == HIDDEN and ad.vocab_size == 128
    assert ad.intermediate_size and ad.intermediate_size > 0

    by_layer: dict[int, set[str]] = defaultdict(set)
    pre, post = set(), set()
    for name in names:
        part = ad.classify(name)
        if part.section == "layer":
            assert part.layer is not None and part.role == "layer"
            prefix = ad.layer_prefix(part.layer)
            assert name.startswith(prefix)
            # exactly one layer: no other layer prefix matches
            assert [i for i in range(N) if name.startswith(ad.layer_prefix(i))] == [part.layer]
            by_layer[part.layer].add(name[len(prefix) :])
        else:
            assert part.layer is None
            (pre if part.section == "pre" else post).add(name)
    assert sorted(by_layer) == list(range(N))
    assert all(by_layer[i] == by_layer[0] for i in range(N)), "layers differ in relative names"

    assert set(ad.embed_names) <= pre and pre == set(ad.pre_names)
    assert post == set(ad.final_norm_names) | set(ad.head_names)
    if ad.tied_embeddings:
        assert ad.head_names == []
        assert not any(ad.classify(n).role == "head" for n in names), "tied head written to disk"
    else:
        assert ad.head_names and set(ad.head_names) <= post

    # every checkpoint name maps onto a state_dict key of the loaded model
    model = make_tiny(family, N)
    sd = set(model.state_dict())
    assert {ad.module_name(n) for n in names} <= sd


@pytest.mark.parametrize("family", FAMILIES)
def test_model_accessors(family: str) -> None:
    model = make_tiny(family, N)
    ad = adapter_for_model(model)
    assert ad.family == family
    layers = ad.layers(model)
    assert isinstance(layers, torch.nn.ModuleList) and len(layers) == N
    assert model.get_submodule(ad.layers_path) is layers
    for i in (0, N - 1):
        proj = model.get_submodule(ad.mlp_out_proj(i))
        w = proj.weight
        out_dim = w.shape[1] if ad.mlp_out_transposed else w.shape[0]
        assert out_dim == HIDDEN
        assert w.shape[0 if ad.mlp_out_transposed else 1] == ad.intermediate_size
        assert isinstance(model.get_submodule(ad.attn_path(i)).layer_idx, int)
    assert ad.embeddings(model).weight.shape == (128, HIDDEN)
    assert ad.lm_head(model).weight.shape == (128, HIDDEN)
    assert ad.final_norm(model).weight.shape == (HIDDEN,)
    if ad.tied_embeddings:
        assert ad.lm_head(model).weight.data_ptr() == ad.embeddings(model).weight.data_ptr()


def test_family_defaults_and_residual() -> None:
    # config.json often omits tie_word_embeddings: the family default decides
    assert adapter_for({"model_type": "gemma", "num_hidden_layers": 2}).tied_embeddings
    assert adapter_for({"model_type": "gpt2", "n_layer": 2}).tied_embeddings
    assert not adapter_for({"model_type": "llama", "num_hidden_layers": 2}).tied_embeddings
    assert adapter_for({"model_type": "gpt2", "n_layer": 2}).num_layers_key == "n_layer"
    neox = {"model_type": "gpt_neox", "num_hidden_layers": 2}
    assert adapter_for(neox).residual == "parallel"
    assert adapter_for({**neox, "use_parallel_residual": False}).residual == "sequential"
    assert adapter_for({"model_type": "llama", "num_hidden_layers": 2}).residual == "sequential"
    # picked by architectures when model_type is unfamiliar
    ad = adapter_for(
        {"model_type": "x", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2}
    )
    assert ad.family == "llama"


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("gemma2", {}),
        ("gemma3_text", {}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2}),
        ("qwen3", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2}),
        ("llama", {}),
        ("gpt2", {}),
        ("gpt_neox", {}),
    ],
)
def test_slice_config_rebuilds(family: str, overrides: dict[str, Any]) -> None:
    config = tiny_config(family, 6, **overrides).to_dict()
    ad = adapter_for(config)
    keep = [0, 2, 3, 5]
    cls = config_class(family)
    sliced = ad.slice_config(config, keep)
    assert sliced[ad.num_layers_key] == 4 and config[ad.num_layers_key] == 6  # input untouched
    if "layer_types" in config:
        assert ad.layer_config_keys() == ["layer_types"]
        assert sliced["layer_types"] == [config["layer_types"][i] for i in keep]
        # negative control: transformers does validate the list against the layer count
        with pytest.raises(Exception, match="layer_types"):
            cls.from_dict({**config, ad.num_layers_key: 4})
    rebuilt = cls.from_dict(sliced)
    assert getattr(rebuilt, ad.num_layers_key) == 4
    if "layer_types" in config:
        assert rebuilt.layer_types == sliced["layer_types"]
    if family.startswith("qwen"):
        # layers >= 2 slid before; of the kept [0, 2, 3, 5] only the first stays below
        assert sliced["max_window_layers"] == 1
        assert sliced["layer_types"] == ["full_attention"] + ["sliding_attention"] * 3
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(rebuilt)
    assert len(adapter_for_model(model).layers(model)) == 4


def test_slice_config_materialises_layer_types_and_checks_range() -> None:
    config = tiny_config("gemma2", 6).to_dict()
    expected = [config["layer_types"][i] for i in (1, 2, 5)]
    del config["layer_types"]
    ad = adapter_for(config)
    assert ad.slice_config(config, [1, 2, 5])["layer_types"] == expected
    with pytest.raises(RangeError):
        ad.slice_config(config, [0, 6])
    with pytest.raises(RangeError):
        ad.slice_config(config, [])
    # duplication is allowed; any length-n list is per-layer, special-token lists are not
    cfg = {
        "model_type": "llama",
        "num_hidden_layers": 3,
        "my_list": [1, 2, 3],
        "eos_token_id": [7, 8, 9],
    }
    ad = adapter_for(cfg)
    assert ad.layer_config_keys() == ["my_list"]
    s = ad.slice_config(cfg, [0, 1, 1, 2])
    assert s["my_list"] == [1, 2, 2, 3] and s["eos_token_id"] == [7, 8, 9]


def _greedy(model: Any, use_cache: bool) -> torch.Tensor:
    prompt = torch.tensor([[5, 17, 33, 9, 64, 21, 40]])  # longer than the sliding window (4)
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=8,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=0,
    )


def _surgery(model: Any, keep: list[int], renumber: bool) -> None:
    ad = adapter_for_model(model)
    old = list(ad.layers(model))
    seen: set[int] = set()
    new = []
    for i in keep:
        new.append(copy.deepcopy(old[i]) if i in seen else old[i])
        seen.add(i)
    parent, _, attr = ad.layers_path.rpartition(".")
    setattr(model.get_submodule(parent), attr, torch.nn.ModuleList(new))
    ad.slice_model_config(model, keep)
    if renumber:
        assert ad.renumber_layer_idx(model) >= len(keep)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("keep", [[0, 2, 4, 5], [0, 1, 1, 2, 3]])
def test_renumber_makes_cache_agree(family: str, keep: list[int]) -> None:
    model = make_tiny(family, 6)
    _surgery(model, keep, renumber=True)
    ad = adapter_for_model(model)
    assert [
        ad.layers(model)[k].get_submodule(ad.spec.attn_module).layer_idx for k in range(len(keep))
    ] == list(range(len(keep)))
    assert torch.equal(_greedy(model, True), _greedy(model, False))

    # negative control: without renumbering the cache is corrupt (crash or different tokens)
    stale = make_tiny(family, 6)
    _surgery(stale, keep, renumber=False)
    try:
        same = torch.equal(_greedy(stale, True), _greedy(stale, False))
    except (IndexError, RuntimeError):
        same = False
    assert not same


def test_renumber_refuses_shared_modules() -> None:
    model = make_tiny("llama", 3)
    layers = adapter_for_model(model).layers(model)
    model.model.layers = torch.nn.ModuleList([layers[0], layers[1], layers[1]])
    with pytest.raises(ValueError, match="same module object"):
        adapter_for_model(model).renumber_layer_idx(model)


def test_gemma3_decoder_layer_idx_renumbered() -> None:
    model = make_tiny("gemma3_text", 4)
    ad = adapter_for_model(model)
    model.model.layers = torch.nn.ModuleList([ad.layers(model)[i] for i in (1, 3)])
    ad.renumber_layer_idx(model)
    assert [layer.layer_idx for layer in model.model.layers] == [0, 1]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]


def test_gpt2_checkpoint_without_base_prefix(
    saved: dict[str, tuple[dict[str, Any], list[str]]],
) -> None:
    # the original GPT-2 files name tensors 'h.0.attn...', 'wte.weight' (no 'transformer.')
    config, names = saved["gpt2"]
    stripped = [n.removeprefix("transformer.") for n in names]
    ad = adapter_for(config, stripped)
    assert ad.layer_prefix(2) == "h.2." and ad.embed_names == ["wte.weight"]
    assert ad.classify("h.3.mlp.c_proj.weight").layer == 3
    assert ad.classify("wpe.weight").section == "pre" and ad.classify("ln_f.bias").section == "post"
    assert ad.module_name("h.0.attn.c_attn.weight") == "transformer.h.0.attn.c_attn.weight"
    assert ad.layers_path == "transformer.h"  # module paths are unchanged


def test_gpt_neox_head_name_differs_on_disk(
    saved: dict[str, tuple[dict[str, Any], list[str]]],
) -> None:
    config, names = saved["gpt_neox"]
    ad = adapter_for(config, names)
    assert "embed_out.weight" in names and ad.head_names == ["embed_out.weight"]
    assert ad.module_name("embed_out.weight") == "lm_head.weight"
    assert ad.classify("lm_head.weight").role == "head"


def test_unknown_tensor_and_layer_overflow_raise(
    saved: dict[str, tuple[dict[str, Any], list[str]]],
) -> None:
    config, names = saved["llama"]
    ad = adapter_for(config, names)
    with pytest.raises(ArchitectureError, match="cannot place tensor"):
        ad.classify("model.vision_tower.proj.weight")
    with pytest.raises(ArchitectureError, match="layer 4"):
        ad.classify("model.layers.4.mlp.down_proj.weight")


def test_discovery_from_names_warns(saved: dict[str, tuple[dict[str, Any], list[str]]]) -> None:
    config, names = saved["llama"]
    renamed = [
        n.replace("model.layers.", "backbone.blocks.").replace("model.", "backbone.") for n in names
    ]
    cfg = {**config, "model_type": "mystery", "architectures": ["MysteryForCausalLM"]}
    with pytest.warns(DiscoveryWarning, match=r"backbone\.blocks"):
        ad = adapter_for(cfg, renamed)
    assert isinstance(ad, GenericAdapter) and ad.family == "generic"
    assert ad.num_layers == N and ad.layer_prefix(1) == "backbone.blocks.1."
    assert ad.classify("backbone.blocks.3.self_attn.q_proj.weight").layer == 3
    assert ad.classify("backbone.embed_tokens.weight").section == "pre"
    assert ad.classify("backbone.norm.weight") == arch.Part("post", None, "norm")
    assert ad.classify("lm_head.weight").role == "head"
    assert ad.mlp_out_proj(2) == "backbone.blocks.2.mlp.down_proj"
    assert not ad.tied_embeddings
    s = ad.slice_config(cfg, [0, 3])
    assert s["num_hidden_layers"] == 2


def test_discovery_prefers_config_layer_count() -> None:
    names = [f"vision.blocks.{i}.w" for i in range(8)] + [f"text.layers.{i}.w" for i in range(3)]
    with pytest.warns(DiscoveryWarning):
        ad = adapter_for(
            {"model_type": "mm", "num_hidden_layers": 3}, names + ["text.embed.weight"]
        )
    assert ad.layer_prefix(0) == "text.layers.0."


def test_discovery_from_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_tiny("llama", 3)
    monkeypatch.setattr(arch, "spec_for", lambda *a, **k: None)
    with pytest.warns(DiscoveryWarning, match="model.layers"):
        ad = adapter_for_model(model)
    assert ad.family == "generic" and len(ad.layers(model)) == 3
    assert model.get_submodule(ad.mlp_out_proj(1)).out_features == HIDDEN
    assert ad.final_norm(model) is model.model.norm
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in (2, 0)])
    ad.renumber_layer_idx(model)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]


def test_no_layers_is_an_architecture_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ArchitectureError, match="cannot find decoder layers"):
            adapter_for({"model_type": "mystery"}, ["embed.weight", "head.weight", "norm.weight"])
        with pytest.raises(ArchitectureError, match="cannot find decoder layers"):
            adapter_for({"model_type": "mystery"})
        # indices with a gap are not a layer list
        with pytest.raises(ArchitectureError):
            adapter_for({"model_type": "mystery"}, ["blocks.0.w", "blocks.2.w"])
    with pytest.raises(ArchitectureError, match="num_hidden_layers"):
        _ = adapter_for({"model_type": "llama"}).num_layers


def test_import_stays_light() -> None:
    code = (
        "import sys, layergraft.arch as a\n"
        "ad = a.adapter_for({'model_type': 'llama', 'num_hidden_layers': 2}, ['model.layers.0.w', 'model.layers.1.w'])\n"
        "ad.classify('model.layers.1.w'); ad.slice_config(ad.config, [1])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_messages_name_the_checkpoint() -> None:
    with pytest.raises(ArchitectureError, match="in /data/nolayers:"):
        adapter_for({"model_type": "mystery"}, ["a.weight"], where="/data/nolayers")
    # a known config whose tensors sit elsewhere (e.g. inside a multimodal wrapper): discovery
    names = [f"language_model.model.layers.{i}.w" for i in range(2)] + [
        "language_model.model.embed_tokens.weight"
    ]
    with pytest.warns(
        DiscoveryWarning, match=r"/data/mm: llama config.json.*language_model\.model\.layers"
    ):
        ad = adapter_for({"model_type": "llama", "num_hidden_layers": 2}, names, where="/data/mm")
    assert ad.num_layers == 2 and ad.classify(names[-1]).section == "pre"
