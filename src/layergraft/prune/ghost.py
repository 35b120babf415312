"""Ghost operators on a pruned model in memory, and how they are written to its directory.

A fitted operator (:class:`layergraft.prune.recover.Operator`) becomes a
:class:`~layergraft.models.ghost.GhostOperator` module hooked onto the residual stream entering
the first kept layer after its gap; on disk it is a tensor in ``ghost.safetensors`` and the
directory ships the remote-code file with the family's classes filled in, so plain
``trust_remote_code=True`` loading works as well as :func:`layergraft.models.load.load_model`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from layergraft.models.ghost import ATTR, GHOST_MODEL_TYPE, REMOTE_FILE, REMOTE_PATH, remote
from layergraft.models.offload import execution_device


def operator_module(op: Any, hidden: int) -> Any:
    """A ``GhostOperator`` module holding a fitted :class:`~layergraft.prune.recover.Operator`."""
    import torch

    kind = {"full": "full", "diag": "diag", "scale": "scalar"}[op.kind]
    g = remote().GhostOperator(hidden, kind, bias=op.bias is not None)
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


def attach_ghost(model: Any, adapter: Any, module: Any, position: int) -> Any:
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
    layers = adapter.layers(model)
    module.to(execution_device(layers[min(position, len(layers) - 1)]))  # not meta if offloaded
    ghosts[key] = module
    (h,) = remote().install_ghosts(
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
    src = REMOTE_PATH.read_text()
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
