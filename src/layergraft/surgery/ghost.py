"""Ghost modules on a loaded model, and saving / loading them with a model directory.

The operator class and the hook logic live in
:mod:`layergraft.surgery.ghost_remote.modeling_layergraft_ghost` (the file shipped as remote
code), so in-memory, ``load_model`` and ``trust_remote_code`` loading run the same code.

On disk a ghosted model directory holds the standard, renumbered decoder weights
(``model*.safetensors``), the operators in ``ghost.safetensors`` (tensor names
``layergraft_ghosts.<position>.delta|bias|scale``, float32), one index
``model.safetensors.index.json`` listing both (so ``from_pretrained`` loads the operators
into the remote class's ``layergraft_ghosts`` ModuleDict), the remote-code file, and a
``config.json`` whose ``model_type`` is ``layergraft_ghost`` with the family recorded in
``layergraft_ghost.base_model_type``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from layergraft.surgery.ghost_remote import modeling_layergraft_ghost as remote
from layergraft.surgery.ghost_remote.modeling_layergraft_ghost import (
    GHOST_MODEL_TYPE,
    GhostOperator,
    build_ghosts,
    install_ghosts,
)

GHOST_FILE = "ghost.safetensors"
REMOTE_FILE = "modeling_layergraft_ghost.py"
ATTR = "layergraft_ghosts"

__all__ = [
    "ATTR",
    "GHOST_FILE",
    "GHOST_MODEL_TYPE",
    "GhostOperator",
    "attach_ghost",
    "build_ghosts",
    "ghost_config",
    "ghost_tensors",
    "install_ghosts",
    "write_remote_code",
]


def operator_module(op: Any, hidden: int) -> GhostOperator:
    """A :class:`GhostOperator` holding a fitted :class:`~layergraft.surgery.recover.Operator`."""
    import torch

    kind = {"full": "full", "diag": "diag", "scale": "scalar"}[op.kind]
    g = GhostOperator(hidden, kind, bias=op.bias is not None)
    with torch.no_grad():
        if kind == "full":
            g.delta.copy_(op.delta.float().cpu())
            if op.bias is not None:
                g.bias.copy_(op.bias.float().cpu())
        elif kind == "diag":
            g.scale.copy_(op.scale.float().cpu())
        else:
            g.scale.fill_(float(op.scale))
    return g


def attach_ghost(model: Any, adapter: Any, module: GhostOperator, position: int) -> Any:
    """Insert ``module`` on the residual stream entering (current) layer ``position`` — or the
    final norm when ``position`` is the layer count — and register it under
    ``model.layergraft_ghosts[str(position)]``. Returns the hook handle."""
    from torch import nn

    if not hasattr(model, ATTR):
        setattr(model, ATTR, nn.ModuleDict())
    ghosts = getattr(model, ATTR)
    key = str(position)
    if key in ghosts:
        raise ValueError(f"a ghost already sits at position {position}")
    from layergraft.offload import execution_device

    layers = adapter.layers(model)
    module.to(execution_device(layers[min(position, len(layers) - 1)]))  # not meta if offloaded
    ghosts[key] = module
    (h,) = install_ghosts(
        model, nn.ModuleDict({key: module}), adapter.layers_path, adapter.spec.norm_module
    )
    return h


def ghost_config(adapter: Any, model: Any) -> dict[str, Any]:
    """The ``layergraft_ghost`` config entry describing ``model``'s ghosts (kinds by position)."""
    ghosts = getattr(model, ATTR, {})
    return {
        "hidden_size": adapter.hidden_size,
        "layers_path": adapter.layers_path,
        "norm_module": adapter.spec.norm_module,
        "base_model_type": adapter.config.get("model_type"),
        "base_architectures": adapter.config.get("architectures"),
        "positions": {
            k: {"kind": g.kind, "bias": getattr(g, "bias", None) is not None}
            for k, g in ghosts.items()
        },
    }


def ghost_tensors(model: Any) -> dict[str, Any]:
    """``{"layergraft_ghosts.<pos>.<param>": float32 CPU tensor}`` for saving."""
    ghosts = getattr(model, ATTR, None)
    if ghosts is None:
        return {}
    return {
        f"{ATTR}.{k}": v.detach().float().cpu().contiguous() for k, v in ghosts.state_dict().items()
    }


def write_remote_code(out_dir: Path, base_config: str, base_model: str) -> Path:
    """Copy the remote-code file into ``out_dir`` with the family's classes filled in."""
    src = Path(remote.__file__).read_text()
    src = re.sub(
        r"^BASE_CONFIG = None.*$", f"BASE_CONFIG = {base_config!r}", src, count=1, flags=re.M
    )
    src = re.sub(r"^BASE_MODEL = None.*$", f"BASE_MODEL = {base_model!r}", src, count=1, flags=re.M)
    p = Path(out_dir) / REMOTE_FILE
    p.write_text(src)
    return p


def remote_config(config: dict[str, Any], ghost: dict[str, Any]) -> dict[str, Any]:
    """``config`` rewritten for remote-code loading (own model_type, auto_map, ghost entry)."""
    new = dict(config)
    new["model_type"] = GHOST_MODEL_TYPE
    new["architectures"] = ["LayergraftGhostForCausalLM"]
    new["auto_map"] = {
        "AutoConfig": f"{REMOTE_FILE[:-3]}.LayergraftGhostConfig",
        "AutoModelForCausalLM": f"{REMOTE_FILE[:-3]}.LayergraftGhostForCausalLM",
    }
    new["layergraft_ghost"] = ghost
    return new


def base_config_of(config: dict[str, Any]) -> dict[str, Any]:
    """The family's plain config from a ghosted ``config.json`` (inverse of :func:`remote_config`)."""
    g = config["layergraft_ghost"]
    new = {k: v for k, v in config.items() if k not in ("auto_map", "layergraft_ghost")}
    new["model_type"] = g["base_model_type"]
    new["architectures"] = g["base_architectures"]
    return new


def is_ghosted(model_dir: Path) -> bool:
    p = Path(model_dir) / "config.json"
    return p.is_file() and "layergraft_ghost" in json.loads(p.read_text())


def copy_remote_file(src_dir: Path, dst_dir: Path) -> None:
    shutil.copy2(Path(src_dir) / REMOTE_FILE, Path(dst_dir) / REMOTE_FILE)


def load_ghosted(model_dir: Path, *, dtype: Any, device_map: Any = None) -> Any:
    """Load a ghosted output without executing its shipped file: build the family's own
    model from the recorded base config, then attach layergraft's copy of the ghost module."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from layergraft.loading import quiet_transformers
    from layergraft.offload import execution_device

    p = Path(model_dir)
    cfg = json.loads((p / "config.json").read_text())
    spec = cfg["layergraft_ghost"]
    config = AutoConfig.for_model(**base_config_of(cfg))
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            p, config=config, dtype=dtype, device_map=device_map, trust_remote_code=False
        )
    ghosts = build_ghosts(spec)
    state = load_file(str(p / GHOST_FILE))
    prefix = ATTR + "."
    ghosts.load_state_dict({k[len(prefix) :]: v for k, v in state.items()})
    layers = model.get_submodule(spec["layers_path"])
    for key, g in ghosts.items():
        g.to(execution_device(layers[min(int(key), len(layers) - 1)]))
    model.layergraft_ghosts = ghosts
    install_ghosts(model, ghosts, spec["layers_path"], spec["norm_module"])
    return model.eval()
