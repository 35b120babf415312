"""Loading a ghosted model directory: the family's own model plus layergraft's ghost module.

A pruned model whose gaps are repaired by ghost operators holds the standard, renumbered
decoder weights (``model*.safetensors``), the operators in ``ghost.safetensors`` (tensor names
``layergraft_ghosts.<position>.delta|bias|scale``, float32), one index
``model.safetensors.index.json`` listing both (so ``from_pretrained`` loads the operators into
the remote class's ``layergraft_ghosts`` ModuleDict), the remote-code file, and a
``config.json`` whose ``model_type`` is ``layergraft_ghost`` with the family recorded in
``layergraft_ghost.base_model_type``.

The operator class and the hook logic live in
:mod:`layergraft.models.ghost_remote.modeling_layergraft_ghost` (the file shipped as remote
code), so in-memory pruning, :func:`load_ghosted` and ``trust_remote_code`` loading all run
the same code. Writing ghosts belongs to pruning (:mod:`layergraft.prune.ghost`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layergraft.models.offload import execution_device
from layergraft.models.quiet import quiet_transformers

GHOST_FILE = "ghost.safetensors"
REMOTE_FILE = "modeling_layergraft_ghost.py"
#: the remote-code file, as shipped into every ghosted model directory
REMOTE_PATH = Path(__file__).parent / "ghost_remote" / REMOTE_FILE
ATTR = "layergraft_ghosts"
#: the ``model_type`` of a ghosted config (the remote file defines the same; a test checks)
GHOST_MODEL_TYPE = "layergraft_ghost"


def remote() -> Any:
    """The ghost module's code (:mod:`layergraft.models.ghost_remote.modeling_layergraft_ghost`),
    imported on first use: it imports torch, which commands that never build a ghost (restore,
    inspect) must not pay for at start-up."""
    from layergraft.models.ghost_remote import modeling_layergraft_ghost

    return modeling_layergraft_ghost


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


def load_ghosted(model_dir: Path, *, dtype: Any, device_map: Any = None) -> Any:
    """Load a ghosted output without executing its shipped file: build the family's own
    model from the recorded base config, then attach layergraft's copy of the ghost module."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    p = Path(model_dir)
    cfg = json.loads((p / "config.json").read_text())
    spec = cfg["layergraft_ghost"]
    config = AutoConfig.for_model(**base_config_of(cfg))
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            p, config=config, dtype=dtype, device_map=device_map, trust_remote_code=False
        )
    ghosts = remote().build_ghosts(spec)
    state = load_file(str(p / GHOST_FILE))
    prefix = ATTR + "."
    ghosts.load_state_dict({k[len(prefix) :]: v for k, v in state.items()})
    layers = model.get_submodule(spec["layers_path"])
    for key, g in ghosts.items():
        g.to(execution_device(layers[min(int(key), len(layers) - 1)]))
    model.layergraft_ghosts = ghosts
    remote().install_ghosts(model, ghosts, spec["layers_path"], spec["norm_module"])
    return model.eval()
