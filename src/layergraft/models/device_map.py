"""An explicit ``--device-map`` checked against the model it places, and made flat.

Why: accelerate and transformers take a map of module names to devices but check it poorly.
A key naming no module (``model.layerz.1``) was silently ignored; a map that leaves some
weights without a device failed inside ``from_pretrained`` with a message that blamed the
model; and with a layer on ``"disk"``, transformers 5 fails the same way when one key lies
inside another (``"model": "cpu"`` beside ``"model.layers.1": "disk"``) or when a catch-all
``""`` fills the rest. So a map is resolved here, before anything is loaded or written:

* every key must name a module (or a parameter) of the model; otherwise it is refused with
  the closest real names (:mod:`difflib`);
* each weight gets the device of the most specific key above it (``""`` is the catch-all);
  a weight with none is refused, naming the modules to add;
* the result is a flat partition (no key inside another), which every version accepts.

The module names come from the model built on the ``meta`` device from its config: no
weights are read, and the names are the ones ``from_pretrained`` will use.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.models import ghost as G
from layergraft.models.quiet import quiet_transformers

_MISSING = object()


@dataclass(frozen=True)
class ModuleTree:
    """The modules of a model and the weights (parameters and buffers) directly on each."""

    children: dict[str, tuple[str, ...]]  # module name -> child module names ("" = the model)
    leaves: dict[str, tuple[str, ...]]  # module name -> its own parameter/buffer names

    @property
    def names(self) -> set[str]:
        return set(self.children) | {w for ws in self.leaves.values() for w in ws}

    def weighs(self, name: str) -> bool:
        """Whether the module ``name`` holds any weight, itself or below."""
        return bool(self.leaves.get(name)) or any(
            self.weighs(c) for c in self.children.get(name, ())
        )


def _config(spec: Any) -> Any:
    """The transformers config ``from_pretrained`` would use (a ghosted output: its base's),
    for an opened checkpoint or a local model directory; None for anything else (a hub id or
    ``.gguf`` not opened yet: :func:`~layergraft.models.load.load_model` checks it then)."""
    from transformers import AutoConfig

    path = Path(spec.path) if hasattr(spec, "path") else Path(spec)
    if not (path / "config.json").is_file():
        return None
    if G.is_ghosted(path):
        cfg = json.loads((path / "config.json").read_text())
        return AutoConfig.for_model(**G.base_config_of(cfg))
    with quiet_transformers():
        return AutoConfig.from_pretrained(str(path), trust_remote_code=False)


@functools.lru_cache(maxsize=8)
def _tree_of(config_json: str) -> ModuleTree:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**json.loads(config_json))
    with torch.device("meta"), quiet_transformers():
        model = AutoModelForCausalLM.from_config(cfg)
    children: dict[str, tuple[str, ...]] = {}
    leaves: dict[str, tuple[str, ...]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        pre = f"{name}." if name else ""
        children[name] = tuple(pre + c for c, _ in mod.named_children())
        own = [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]
        leaves[name] = tuple(pre + w for w, _ in own)
    return ModuleTree(children, leaves)


def module_tree(spec: Any) -> ModuleTree | None:
    """The module tree of the model at ``spec`` (an opened checkpoint or a local directory;
    None for a spec not resolved to one yet)."""
    cfg = _config(spec)
    if cfg is None:
        return None
    return _tree_of(json.dumps(cfg.to_dict(), sort_keys=True, default=str))


def _closest(key: str, names: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(names), n=3, cutoff=0.6)
    if not close:  # the top of the tree: where a user starts reading
        close = sorted(n for n in names if n and n.count(".") <= 1)[:4]
    return ", ".join(close)


def resolve_device_map(
    device_map: Mapping[str, Any], tree: ModuleTree, where: str = "the model"
) -> dict[str, Any]:
    """The flat map that gives every weight of ``tree`` the device of its most specific key
    in ``device_map`` (see the module doc); refuses unknown keys and uncovered weights."""
    names = tree.names
    for key in device_map:
        if key and key not in names:
            raise InputError(
                f"--device-map key {key!r} is not a module of {where}; use its real module "
                f"names (closest: {_closest(key, names)})"
            )
    keys = set(device_map)

    def device_of(name: str) -> Any:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            k = ".".join(parts[:i])
            if k in keys:
                return device_map[k]
        return device_map.get("", _MISSING)

    flat: dict[str, Any] = {}
    missing: list[str] = []

    def place(name: str) -> None:
        dev = device_of(name) if name else device_map.get("", _MISSING)
        if dev is _MISSING:
            missing.append(name)
        else:
            flat[name] = dev

    def visit(name: str) -> None:
        below = f"{name}." if name else ""
        if not any(k.startswith(below) and k != name for k in keys if k):
            if tree.weighs(name):  # a module without weights needs no device
                place(name)
            return
        for w in tree.leaves.get(name, ()):
            place(w)
        for c in tree.children.get(name, ()):
            visit(c)

    visit("")
    if missing:
        more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
        raise InputError(
            f"--device-map gives no device to {', '.join(missing[:4])}{more} of {where}; add them, "
            'or add a catch-all "": "cpu" for every module the map does not name'
        )
    return flat
