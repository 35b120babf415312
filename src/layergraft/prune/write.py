"""Writing a pruned model: kept tensors streamed under their new layer index.

Why streaming from the input checkpoint: untouched tensors are byte copies of the input
(renamed to their new layer index), so only the tensors a fold changed come from memory; the
ghost operators go to ``ghost.safetensors`` beside them, with the remote-code file and a
config rewritten for it (:mod:`layergraft.prune.ghost`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from layergraft.checkpoint.dtypes import torch_dtype
from layergraft.checkpoint.layout import INDEX_NAME
from layergraft.checkpoint.reader import Checkpoint
from layergraft.checkpoint.writer import OutTensor, WriteResult, write_checkpoint
from layergraft.prune import ghost as G
from layergraft.prune.model import Pruned


def _changed_by_checkpoint_name(p: Pruned, model_adapter: Any, ck_adapter: Any) -> dict[str, Any]:
    """Folded parameters, keyed by their *input* checkpoint name (old layer index)."""
    ids = {id(t) for t in p.changed}
    out: dict[str, Any] = {}
    prefix = model_adapter.layers_path + "."
    for name, param in p.model.named_parameters(remove_duplicate=False):
        if id(param) not in ids or not name.startswith(prefix):
            continue
        j, _, rest = name[len(prefix) :].partition(".")
        out[ck_adapter.layer_prefix(p.keep[int(j)]) + rest] = param.detach()
    return out


def _family_classes(config: dict[str, Any]) -> tuple[str, str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    mt = config.get("model_type")
    arch = (config.get("architectures") or [None])[0] or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[mt]
    return CONFIG_MAPPING_NAMES[mt], arch


def pruned_tensors(ck: Checkpoint, p: Pruned, model_adapter: Any) -> list[OutTensor]:
    """The output tensors of the pruned model: every kept tensor under its new layer index,
    a byte copy of the input unless a fold changed it (then taken from memory, in the input's
    dtype)."""
    ad = ck.adapter
    new_index = {old: new for new, old in enumerate(p.keep)}
    changed = _changed_by_checkpoint_name(p, model_adapter, ad)
    tensors = []
    for name, entry in ck.tensors.items():
        part = ad.classify(name)
        new_name = name
        if part.section == "layer":
            if part.layer not in new_index:
                continue
            new_name = (
                ad.layer_prefix(new_index[part.layer]) + name[len(ad.layer_prefix(part.layer)) :]
            )
        if name in changed:
            t = changed.pop(name).to(torch_dtype(entry.dtype)).cpu().contiguous()
            tensors.append(OutTensor.from_torch(new_name, t))
        else:
            tensors.append(OutTensor.copy_of(entry, new_name))
    if changed:  # pragma: no cover - a folded parameter the checkpoint does not name
        raise RuntimeError(f"folded tensors not found in the checkpoint: {sorted(changed)}")
    return tensors


def finish_pruned_dir(
    ck: Checkpoint, p: Pruned, model_adapter: Any, *, hash_outputs: bool = True, fsync: bool = False
):
    """The last step of writing a pruned directory (for
    :func:`~layergraft.checkpoint.model_dir.write_model_dir`'s ``extra``): the sliced config,
    and for a ghosted model the operators in ``ghost.safetensors``, one index over both and
    the remote-code file. Returns the written weight files with their sha256."""

    def finish(out: Path, res: WriteResult, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        config = ck.adapter.slice_config(ck.config, p.keep)
        gt = G.ghost_tensors(p.model)
        if gt:
            gres = write_checkpoint(
                out, [OutTensor.from_torch(k, v) for k, v in gt.items()], stem="ghost",
                hash_outputs=hash_outputs, fsync=fsync,
            )  # fmt: skip
            files = files + gres.as_json()
            # transformers prefers a lone model.safetensors over the index: use shard names
            # so the index (which lists ghost.safetensors too) is what gets loaded
            if (out / "model.safetensors").exists():
                os.rename(out / "model.safetensors", out / "model-00001-of-00001.safetensors")
                res.weight_map = {k: "model-00001-of-00001.safetensors" for k in res.weight_map}
                for f in files:
                    if f["name"] == "model.safetensors":
                        f["name"] = "model-00001-of-00001.safetensors"
            index = {
                "metadata": {"total_size": res.total_size + gres.total_size},
                "weight_map": dict(res.weight_map) | dict(gres.weight_map),
            }
            (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
            base_cfg, base_model = _family_classes(ck.config)
            gcfg = G.ghost_config(model_adapter, p.model)
            gcfg["base_model_type"] = ck.config.get("model_type")
            gcfg["base_architectures"] = ck.config.get("architectures") or [base_model]
            config = G.remote_config(config, gcfg)
            G.write_remote_code(out, base_cfg, base_model)
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return files

    return finish
