"""Generic fallback for families without a spec: guess the layer list, then warn.

Why guess at all: most causal LMs on the hub are "a numbered list of identical blocks" under
some prefix, so restore/prune can work on a new family before it gets a spec. Why warn: a
guess can be wrong (e.g. a vision tower with more blocks than the text decoder), so the user
is told which prefix was chosen, via ``warnings`` and the ``layergraft.arch`` logger.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any

from layergraft.arch.adapter import NUM_LAYERS_KEYS, ModelAdapter, Part, _discovery_warning, _first
from layergraft.arch.parts import guess_part
from layergraft.arch.spec import FamilySpec, LayerPart, Residual
from layergraft.errors import ArchitectureError

PRE_TOKENS: tuple[str, ...] = ("embed", "wte", "wpe", "tok")
HEAD_TOKENS: tuple[str, ...] = ("lm_head", "embed_out", "output.weight")
# relative module names of MLP output projections across families we know of
MLP_OUT_SUFFIXES: tuple[str, ...] = (
    "mlp.down_proj",
    "mlp.c_proj",
    "mlp.dense_4h_to_h",
    "mlp.fc2",
    "mlp.fc_out",
    "mlp.w2",
    "feed_forward.w2",
    "feed_forward.down_proj",
    "ffn.down_proj",
    "ffn.fc2",
)
_NUM = re.compile(r"^\d+$")


def discover_layer_prefix(
    names: Iterable[str], expected: int | None = None
) -> tuple[str, int] | None:
    """The prefix ``P`` such that tensors ``P.<i>.*`` exist for exactly ``i = 0..n-1``.

    Among candidates, one whose ``n`` equals the config's layer count wins, then the
    largest ``n``, then the most tensors. ``None`` when no candidate is contiguous.
    """
    indices: dict[str, set[int]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for name in names:
        parts = name.split(".")
        for j, p in enumerate(parts[:-1]):
            if j > 0 and _NUM.match(p):
                prefix = ".".join(parts[:j])
                indices[prefix].add(int(p))
                counts[prefix] += 1
                break
    good = [(p, len(ix)) for p, ix in indices.items() if ix == set(range(len(ix)))]
    if not good:
        return None
    good.sort(key=lambda pn: (pn[1] == expected, pn[1], counts[pn[0]]), reverse=True)
    return good[0]


class GenericAdapter(ModelAdapter):
    """An adapter built from a discovered layer prefix and name heuristics.

    Non-layer tensors: names containing embed/wte/wpe/tok are ``pre``, everything else is
    ``post`` (role ``head`` for lm_head/embed_out/output, ``norm`` for *norm*/ln_f). Layer
    parts come from module-name tokens (:func:`~layergraft.arch.parts.guess_part`).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        layers_path: str,
        num_layers: int,
        tensor_names: Iterable[str] | None = None,
        mlp_out: str | None = None,
    ) -> None:
        self._names = list(tensor_names) if tensor_names is not None else None
        self._n = num_layers
        rel = mlp_out or self._find_mlp_out(layers_path)
        nkey, _ = _first(config, NUM_LAYERS_KEYS)
        spec = FamilySpec(
            "generic",
            (),
            (),
            layers_path=layers_path,
            embed=tuple(self._names_with(PRE_TOKENS, layers_path)),
            final_norm=(),
            head=tuple(self._names_with(HEAD_TOKENS, layers_path)),
            embed_module="",
            norm_module="",
            attn_module="",
            mlp_out=rel or "",
            num_layers_key=nkey or "num_hidden_layers",
            tie_default=False,
            layer_parts={},  # no table: parts are guessed from names (_part_of)
        )
        super().__init__(spec, config)

    def _names_with(self, tokens: tuple[str, ...], layers_path: str) -> list[str]:
        if self._names is None:
            return []
        return [
            n
            for n in self._names
            if not n.startswith(layers_path + ".") and any(t in n.lower() for t in tokens)
        ]

    def _find_mlp_out(self, layers_path: str) -> str | None:
        if self._names is None:
            return None
        prefix = f"{layers_path}.0."
        rel = {n[len(prefix) :].rsplit(".", 1)[0] for n in self._names if n.startswith(prefix)}
        for suffix in MLP_OUT_SUFFIXES:
            for r in sorted(rel):
                if r == suffix or r.endswith("." + suffix):
                    return r
        return None

    @cached_property
    def num_layers(self) -> int:
        return self._n

    @property
    def tied_embeddings(self) -> bool:
        if "tie_word_embeddings" in self.config:
            return bool(self.config["tie_word_embeddings"])
        return self._names is not None and not self.spec.head

    @property
    def residual(self) -> Residual:
        par = self.config.get("use_parallel_residual", self.config.get("parallel_attn", False))
        return "parallel" if par else "sequential"

    def classify(self, name: str) -> Part:
        m = self._layer_re.match(name)
        if m:
            return Part("layer", int(m.group(1)), "layer")
        low = name.lower()
        if any(t in low for t in PRE_TOKENS):
            return Part("pre", None, "embed")
        if any(t in low for t in HEAD_TOKENS):
            return Part("post", None, "head")
        if "norm" in low or "ln_f" in low:
            return Part("post", None, "norm")
        return Part("post", None, "other")

    def _part_of(self, rel: str) -> LayerPart | None:
        return guess_part(rel)

    def mlp_out_proj(self, i: int) -> str:
        if not self.spec.mlp_out:
            raise ArchitectureError(
                f"no MLP output projection found under {self.layer_prefix(0)} (generic discovery); "
                "fix: this operation needs an architecture spec in layergraft.arch.spec"
            )
        return super().mlp_out_proj(i)

    def final_norm(self, model: Any) -> Any:
        import torch

        # the last norm-like module outside the layer list
        found = None
        for name, mod in model.named_modules():
            if name.startswith(self.layers_path) or not name:
                continue
            low = name.lower()
            if ("norm" in low or "ln_f" in low) and not list(mod.children()):
                found = mod
        if found is None or not isinstance(found, torch.nn.Module):
            raise ArchitectureError(
                f"no final norm found in {type(model).__name__}; fix: add a spec in layergraft.arch.spec"
            )
        return found


def discover_from_names(
    config: Mapping[str, Any], tensor_names: Iterable[str], where: str = "", why: str = ""
) -> GenericAdapter:
    """Generic adapter from checkpoint tensor names, or :class:`ArchitectureError`.

    ``where`` names the checkpoint and ``why`` says why no spec applied, for the messages.
    """
    names = list(tensor_names)
    _, expected = _first(config, NUM_LAYERS_KEYS)
    found = discover_layer_prefix(names, expected if isinstance(expected, int) else None)
    why = why or f"model_type {config.get('model_type', '?')!r} has no spec"
    if found is None:
        raise ArchitectureError(
            f"cannot find decoder layers in {where or 'the checkpoint'}: {why} and no tensor names "
            "look like '<prefix>.<i>.*' for i = 0..n-1; "
            "fix: use a supported family or add a FamilySpec in layergraft.arch.spec"
        )
    prefix, n = found
    _discovery_warning(
        f"{where or 'checkpoint'}: {why}; guessed decoder layers at '{prefix}.<i>.' ({n} layers) "
        "from tensor names; check this before trusting the output"
    )
    return GenericAdapter(config, prefix, n, names)


def discover_from_model(model: Any) -> GenericAdapter:
    """Generic adapter from a loaded model: the largest ``nn.ModuleList`` of same-type blocks."""
    import torch

    best: tuple[int, int, str] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        params = sum(p.numel() for p in mod.parameters())
        if params == 0:
            continue
        key = (len(mod), params, name)
        if best is None or key[:2] > best[:2]:
            best = key
    config = model.config.to_dict()
    if best is None:
        raise ArchitectureError(
            f"cannot find decoder layers in {type(model).__name__}: no nn.ModuleList of identical blocks; "
            "fix: use a supported family or add a FamilySpec in layergraft.arch.spec"
        )
    n, _, path = best
    layer0 = model.get_submodule(path)[0]
    mlp_out = None
    rels = [r for r, _ in layer0.named_modules() if r]
    for suffix in MLP_OUT_SUFFIXES:
        hits = [r for r in rels if r == suffix or r.endswith("." + suffix)]
        if hits:
            mlp_out = hits[0]
            break
    _discovery_warning(
        f"unknown model_type {config.get('model_type')!r}: guessed decoder layers at module '{path}' "
        f"({n} x {type(layer0).__name__}); check this before trusting the output"
    )
    names = list(model.state_dict().keys())
    return GenericAdapter(config, path, n, names, mlp_out=mlp_out)
