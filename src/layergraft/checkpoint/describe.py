"""``layergraft inspect``: what a checkpoint is, read from its headers alone.

Why headers only: inspecting a 70B checkpoint must take milliseconds, not a load. Everything
reported here (parameters per layer, dtype, shards, tying) follows from the safetensors
headers, config.json and the architecture adapter. A ``.gguf`` file not converted yet is
described from its own header (:mod:`layergraft.checkpoint.gguf_header`) instead of being
converted first: the same facts, in GGUF's tensor names and quantisation types.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from layergraft.arch import ModelAdapter
from layergraft.arch.spec import spec_for
from layergraft.checkpoint.convert import gguf_cache_path
from layergraft.checkpoint.gguf_header import read_gguf_header
from layergraft.checkpoint.reader import open_checkpoint


def inspect_gguf(path: Path) -> dict[str, Any]:
    """:func:`inspect_model` of a ``.gguf`` file from its header, without converting it."""
    h = read_gguf_header(path)
    n = int(h.arch_key("block_count", 0))
    per_layer = [0] * n
    pre = post = 0
    by_type: Counter[str] = Counter()
    for t in h.tensors:
        by_type[t.type_name] += t.numel
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) < n:
            per_layer[int(m.group(1))] += t.numel
        elif t.name.startswith(("token_embd", "position_embd")):
            pre += t.numel
        else:
            post += t.numel
    tied = not any(t.name == "output.weight" for t in h.tensors)
    vocab = h.metadata.get("tokenizer.ggml.tokens.length") or h.arch_key("vocab_size")
    config = {
        "model_type": h.model_type,
        "num_hidden_layers": n,
        "hidden_size": h.arch_key("embedding_length"),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
    }
    spec = spec_for(h.model_type)
    ad = ModelAdapter(spec, config) if spec is not None else None
    return {
        "path": str(path),
        "origin": str(path),
        "source": "gguf",
        "converted": False,
        "model_type": h.model_type,
        "architectures": [],
        "family": ad.family if ad else f"unknown ({h.architecture})",
        "adapter": type(ad).__name__ if ad else "none (converted on first use)",
        "num_layers": n,
        "hidden_size": config["hidden_size"],
        "vocab_size": vocab,
        "dtype": by_type.most_common(1)[0][0] if by_type else None,
        "dtypes": dict(by_type),
        "tied_embeddings": tied,
        "residual": ad.residual if ad else None,
        "layer_prefix": "blk.{i}.",
        "per_layer_config_keys": [],
        "sharded": False,
        "shards": [path.name],
        "num_tensors": len(h.tensors),
        "params_total": pre + post + sum(per_layer),
        "params_pre": pre,
        "params_post": post,
        "params_per_layer": per_layer,
        "chat_template": "tokenizer.chat_template" in h.metadata,
        "note": "read from the GGUF header (tensor names and types are GGUF's; dtypes counts "
        "parameters per quantisation type); the first command that runs the model converts it",
    }


def inspect_model(spec: str | os.PathLike[str], *, allow_pickle: bool = False) -> dict[str, Any]:
    """Describe a model as a JSON-ready dict (see ``layergraft inspect --json``)."""
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".gguf" and not (gguf_cache_path(p) / "config.json").is_file():
        return inspect_gguf(p)
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
