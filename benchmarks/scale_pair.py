"""A base/post pair of random weights at a real model's shape, from a config alone, in seconds.

Why: every number layergraft had measured came from models of 1.7M–268M parameters, and the
papers run 7–9B models. Timing and memory depend on the shapes (layers, hidden size, GQA,
MLP width, vocabulary), not on what the weights learned, so a pair at the real shape measures
the engine's cost at that scale with nothing downloaded.

What is written, per model: ``config.json`` of the real family (``LlamaConfig``), sharded
``model-0000k-of-0000N.safetensors`` with ``model.safetensors.index.json`` (bfloat16 by
default), ``generation_config.json`` and the toy pair's tokenizer with its chat template.
The tokenizer has 104 tokens and the model the real vocabulary (128,256 rows for Llama-3):
prompts use the first ids only, but every head call pays for the whole vocabulary, as it
would with the real tokenizer.

The weights: normal(0, 0.02) matrices and unit norms, each tensor from its own seed (the
same name and seed give the same tensor on any device). The post model is the base with
independent noise of 0.5 × the weights' scale added to every tensor of the ``changed``
layers (default: the middle quarter of the stack) and nothing else, so the sweep has
something to find: a hybrid that restores an interval covering the changed layers is the base
model exactly, and every other hybrid differs from both.

Shapes (``--shape``): ``tiny`` (4 layers, d 64, for CI), ``llama-3.2-1b`` (16 layers, d 2048,
32/8 heads, MLP 8192, tied embeddings) and ``llama-3.1-8b`` (32 layers, d 4096, 32/8 heads,
MLP 14336). RoPE is the plain kind with the real θ (the Llama-3 long-context scaling does not
change the cost).

    python benchmarks/scale_pair.py --shape llama-3.2-1b --out /tmp/pair1b [--device cuda]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=1024, tie_word_embeddings=False,
        rope_theta=10000.0, max_position_embeddings=512,
    ),
    "llama-3.2-1b": dict(
        num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
        rope_theta=500000.0, max_position_embeddings=131072,
    ),
    "llama-3.1-8b": dict(
        num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
        rope_theta=500000.0, max_position_embeddings=131072,
    ),
}  # fmt: skip
STD = 0.02
NOISE = 0.5  # the post model's change, relative to STD


def default_changed(n_layers: int) -> tuple[int, int]:
    """The middle quarter of the stack, ``[start, end)`` (at least one layer)."""
    k = max(n_layers // 4, 1)
    start = (n_layers - k) // 2
    return start, start + k


def config_dict(shape: str) -> dict[str, Any]:
    """``config.json`` of ``shape`` as transformers' LlamaConfig writes it."""
    from transformers import LlamaConfig

    kw = dict(SHAPES[shape])
    theta = kw.pop("rope_theta")
    cfg = LlamaConfig(
        **kw, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )  # fmt: skip
    d = cfg.to_dict()
    d["architectures"] = ["LlamaForCausalLM"]
    return d


def tensor_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...], int | None]]:
    """``(name, shape, layer or None)`` of every tensor of a Llama checkpoint, in file order."""
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out: list[tuple[str, tuple[int, ...], int | None]] = [
        ("model.embed_tokens.weight", (v, d), None)
    ]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,), i),
            (p + "self_attn.q_proj.weight", (q, d), i),
            (p + "self_attn.k_proj.weight", (kv, d), i),
            (p + "self_attn.v_proj.weight", (kv, d), i),
            (p + "self_attn.o_proj.weight", (d, q), i),
            (p + "post_attention_layernorm.weight", (d,), i),
            (p + "mlp.gate_proj.weight", (f, d), i),
            (p + "mlp.up_proj.weight", (f, d), i),
            (p + "mlp.down_proj.weight", (d, f), i),
        ]
    out.append(("model.norm.weight", (d,), None))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, d), None))
    return out


def _seed(name: str, seed: int, salt: str = "") -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{salt}:{name}".encode()).digest()[:8], "little")


def make_tensor(name: str, shape: tuple[int, ...], seed: int, device: Any, dtype: Any, salt: str = "") -> Any:  # fmt: skip
    """A norm weight (ones) or a normal(0, STD) matrix, reproducible from name and seed."""
    import torch

    if len(shape) == 1:
        return torch.ones(shape, device=device, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(_seed(name, seed, salt))
    return (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * STD).to(dtype)


class _ShardWriter:
    """Tensors into shards of at most ``max_bytes``, named and indexed at :meth:`close`."""

    def __init__(self, out: Path, max_bytes: int) -> None:
        self.out, self.max_bytes = out, max_bytes
        self.parts: list[list[str]] = []
        self.pending: dict[str, Any] = {}
        self.size = 0
        self.total = 0

    def add(self, name: str, t: Any) -> None:
        n = t.numel() * t.element_size()
        if self.pending and self.size + n > self.max_bytes:
            self._flush()
        self.pending[name] = t.detach().to("cpu").contiguous()
        self.size += n
        self.total += n

    def _flush(self) -> None:
        from safetensors.torch import save_file

        k = len(self.parts)
        save_file(self.pending, str(self.out / f"part-{k}.safetensors"), metadata={"format": "pt"})
        self.parts.append(list(self.pending))
        self.pending, self.size = {}, 0

    def close(self) -> None:
        if self.pending:
            self._flush()
        n = len(self.parts)
        weight_map = {}
        for k, names in enumerate(self.parts):
            final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            (self.out / f"part-{k}.safetensors").rename(self.out / final)
            weight_map |= {name: final for name in names}
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _finish_dir(out: Path, cfg: dict[str, Any], dtype_name: str) -> None:
    from layergraft.toy import toy_paths

    cfg = dict(cfg, dtype=dtype_name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    toy_post = toy_paths()[1]
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(toy_post / f, out / f)


def build_pair(
    shape: str,
    out: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "bfloat16",
    seed: int = 0,
    changed: tuple[int, int] | None = None,
    max_shard_bytes: int = 2 * 1024**3,
) -> dict[str, Any]:
    """Write ``out/base`` and ``out/post`` at ``shape``; returns what was written and how
    long it took. An existing complete pair of the same shape, seed and change is reused."""
    import torch

    if shape not in SHAPES:
        raise SystemExit(f"unknown --shape {shape!r}; choose one of {', '.join(SHAPES)}")
    out = Path(out)
    cfg = config_dict(shape)
    n = cfg["num_hidden_layers"]
    changed = changed or default_changed(n)
    key = {"shape": shape, "seed": seed, "changed": list(changed), "dtype": dtype}
    stamp = out / "pair.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return json.loads(stamp.read_text())
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    tdtype = getattr(torch, dtype)
    dirs = {m: out / m for m in ("base", "post")}
    writers = {}
    for m, d in dirs.items():
        d.mkdir(parents=True)
        writers[m] = _ShardWriter(d, max_shard_bytes)
    params = 0
    for name, shp, layer in tensor_shapes(cfg):
        base = make_tensor(name, shp, seed, device, tdtype)
        writers["base"].add(name, base)
        post = base
        if layer is not None and changed[0] <= layer < changed[1]:
            noise = make_tensor(name, shp, seed, device, torch.float32, salt="post")
            post = (base.float() + NOISE * noise).to(tdtype) if len(shp) > 1 else base
        writers["post"].add(name, post)
        params += base.numel()
    for m, w in writers.items():
        w.close()
        _finish_dir(dirs[m], cfg, dtype)
    info = {
        "key": key,
        "base": str(dirs["base"]),
        "post": str(dirs["post"]),
        "params": params,
        "bytes_per_model": writers["base"].total,
        "changed": f"{changed[0]}:{changed[1]}",
        "seconds": round(time.perf_counter() - t0, 2),
        "device": device,
    }
    stamp.write_text(json.dumps(info, indent=2))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    info = build_pair(args.shape, args.out, device=args.device, dtype=args.dtype, seed=args.seed)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
