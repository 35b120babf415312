"""Architecture adapters: the only place that knows an architecture.

``adapter_for(config, tensor_names)`` works from ``config.json`` and checkpoint tensor names
without importing torch (so header-only commands start fast); ``adapter_for_model(model)``
works from a loaded transformers model. Known families come from the data table in
:mod:`layergraft.arch.spec`; anything else falls back to discovery with a warning.
:mod:`layergraft.arch.parts` splits a layer's tensors into attention, MLP and norms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from layergraft.arch.adapter import (
    LAYER_IDX_ATTRS,
    DiscoveryWarning,
    ModelAdapter,
    Part,
    Role,
    Section,
)
from layergraft.arch.discovery import (
    GenericAdapter,
    discover_from_model,
    discover_from_names,
    discover_layer_prefix,
)
from layergraft.arch.parts import guess_part, parse_parts
from layergraft.arch.spec import LAYER_PARTS, SPECS, FamilySpec, LayerPart, spec_for
from layergraft.errors import ArchitectureError

FAMILIES: tuple[str, ...] = tuple(SPECS)

__all__ = [
    "FAMILIES",
    "LAYER_IDX_ATTRS",
    "LAYER_PARTS",
    "SPECS",
    "DiscoveryWarning",
    "FamilySpec",
    "GenericAdapter",
    "LayerPart",
    "ModelAdapter",
    "Part",
    "Role",
    "Section",
    "adapter_for",
    "adapter_for_model",
    "discover_layer_prefix",
    "guess_part",
    "parse_parts",
    "spec_for",
]


def adapter_for(
    config: Mapping[str, Any],
    tensor_names: Iterable[str] | None = None,
    *,
    where: str | None = None,
) -> ModelAdapter:
    """The adapter for a ``config.json`` dict (and, optionally, the checkpoint's tensor names).

    Known ``model_type`` (or ``architectures`` entry) -> that family's spec. If tensor names
    are given they are checked against the spec's layer prefix: a checkpoint saved without
    the base-model prefix (original GPT-2: ``h.0...``) is accepted; names that fit neither
    fall back to discovery with a warning. Unknown family -> discovery from tensor names.
    ``where`` (a path or hub id) names the checkpoint in error and warning messages.
    """
    cfg = dict(config)
    spec = spec_for(cfg.get("model_type"), cfg.get("architectures"))
    names = list(tensor_names) if tensor_names is not None else None
    if spec is None:
        if names is None:
            raise ArchitectureError(
                f"cannot find decoder layers in {where or 'the model'}: no spec for model_type "
                f"{cfg.get('model_type')!r} and no tensor names to discover them from; "
                "fix: pass the checkpoint's tensor names"
            )
        return discover_from_names(cfg, names, where=where or "")
    if names is None:
        return ModelAdapter(spec, cfg)
    prefix = spec.layers_path + "."
    if any(n.startswith(prefix) for n in names):
        return ModelAdapter(spec, cfg)
    base, _, rest = spec.layers_path.partition(".")
    if rest and any(n.startswith(rest + ".") for n in names):
        return ModelAdapter(spec, cfg, strip=base + ".")
    why = f"{spec.family} config.json, but no tensor starts with {prefix!r}"
    return discover_from_names(cfg, names, where=where or "", why=why)


def adapter_for_model(model: Any) -> ModelAdapter:
    """The adapter for a loaded ``PreTrainedModel``: spec by ``model_type`` when the module
    tree has the spec's layer list, else the largest ``nn.ModuleList`` of identical blocks."""
    cfg = model.config.to_dict()
    spec = spec_for(cfg.get("model_type"), cfg.get("architectures"))
    if spec is not None:
        try:
            model.get_submodule(spec.layers_path)
            return ModelAdapter(spec, cfg)
        except AttributeError:
            pass
    return discover_from_model(model)
