"""``layergraft inspect``: what a checkpoint is, read from its headers alone.

Why headers only: inspecting a 70B checkpoint must take milliseconds, not a load. Everything
reported here (parameters per layer, dtype, shards, tying) follows from the safetensors
headers, config.json and the architecture adapter.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from layergraft.checkpoint.reader import open_checkpoint


def inspect_model(spec: str | os.PathLike[str], *, allow_pickle: bool = False) -> dict[str, Any]:
    """Describe a model as a JSON-ready dict (see ``layergraft inspect --json``)."""
    ck = open_checkpoint(spec, allow_pickle=allow_pickle)
    ad = ck.adapter
    per_layer = [0] * ad.num_layers
    pre = post = 0
    dtype_bytes: Counter[str] = Counter()
    for name, entry in ck.tensors.items():
        part = ad.classify(name)
        dtype_bytes[entry.dtype] += entry.nbytes
        if part.section == "layer":
            per_layer[part.layer] += entry.numel
        elif part.section == "pre":
            pre += entry.numel
        else:
            post += entry.numel
    dtype = dtype_bytes.most_common(1)[0][0] if dtype_bytes else None
    return {
        "path": str(ck.path),
        "origin": ck.origin,
        "source": ck.source,
        "model_type": ck.config.get("model_type"),
        "architectures": ck.config.get("architectures") or [],
        "family": ad.family,
        "adapter": type(ad).__name__ if ad.family != "generic" else "generic (discovered)",
        "num_layers": ad.num_layers,
        "hidden_size": ad.hidden_size,
        "vocab_size": ad.vocab_size,
        "dtype": dtype,
        "dtypes": dict(dtype_bytes),
        "tied_embeddings": ad.tied_embeddings,
        "residual": ad.residual,
        "layer_prefix": ad.layer_prefix(0).replace(".0.", ".{i}."),
        "per_layer_config_keys": ad.layer_config_keys(),
        "sharded": len(ck.weight_files) > 1,
        "shards": [f.name for f in ck.weight_files],
        "num_tensors": len(ck.tensors),
        "params_total": pre + post + sum(per_layer),
        "params_pre": pre,
        "params_post": post,
        "params_per_layer": per_layer,
        "chat_template": ck.has_chat_template,
    }


def format_inspect(info: dict[str, Any]) -> str:
    """The human-readable table printed by ``layergraft inspect``."""

    def human(n: int) -> str:
        for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= div:
                return f"{n / div:.2f}{unit}"
        return str(n)

    pl = info["params_per_layer"]
    same = len(set(pl)) == 1
    rows = [
        ("model", info["origin"]),
        ("family / adapter", f"{info['family']} / {info['adapter']}"),
        ("layers", f"{info['num_layers']}  (tensor prefix {info['layer_prefix']})"),
        ("hidden / vocab", f"{info['hidden_size']} / {info['vocab_size']}"),
        ("dtype", info["dtype"]),
        ("tied embeddings", "yes" if info["tied_embeddings"] else "no"),
        ("residual", info["residual"]),
        (
            "parameters",
            f"{human(info['params_total'])} (pre {human(info['params_pre'])}, post {human(info['params_post'])})",
        ),
        ("per layer", human(pl[0]) + " each" if same and pl else ", ".join(human(x) for x in pl)),
        ("per-layer config", ", ".join(info["per_layer_config_keys"]) or "-"),
        (
            "shards",
            f"{len(info['shards'])}: "
            + ", ".join(info["shards"][:4])
            + (" ..." if len(info["shards"]) > 4 else ""),
        ),
        ("chat template", "yes" if info["chat_template"] else "no"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
