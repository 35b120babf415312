"""Writing sharded safetensors checkpoints in one streaming pass.

Why this shape: every output tensor is known up front (name, dtype, shape, where its bytes
come from), so shards are *planned* first and each file is written once, front to back:
header, then tensor bytes copied from a byte range of an input file (no torch, no decode)
or taken from an in-memory tensor. Output bytes are hashed while they are written, so the
sha256 recorded in provenance costs no second pass over the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layergraft.io.safetensors_format import DTYPE_SIZES, TensorEntry, encode_header

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # the Hugging Face default of "5GB"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write. Its bytes come from ``slice_of`` (a byte range of an input
    safetensors file, copied verbatim) or from ``load()`` (anything exposing the buffer
    protocol, called only when the tensor is written so memory stays bounded)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    slice_of: TensorEntry | None = None
    load: Callable[[], Any] | None = None

    @staticmethod
    def copy_of(entry: TensorEntry, name: str | None = None) -> OutTensor:
        """A verbatim copy of an input tensor (bit-identical by construction)."""
        return OutTensor(name or entry.name, entry.dtype, entry.shape, entry.nbytes, slice_of=entry)

    @staticmethod
    def from_torch(name: str, tensor: Any) -> OutTensor:
        """An in-memory torch tensor; its bytes are taken when written."""
        from layergraft.io.torch_util import safetensors_dtype, tensor_bytes

        dtype = safetensors_dtype(tensor.dtype)
        shape = tuple(int(s) for s in tensor.shape)
        nbytes = int(tensor.numel() * DTYPE_SIZES[dtype])
        return OutTensor(name, dtype, shape, nbytes, load=lambda t=tensor: tensor_bytes(t))


@dataclass
class WrittenFile:
    name: str
    size: int
    sha256: str


@dataclass
class WriteResult:
    """What was written: files with their sha256, the weight map, and the total tensor bytes."""

    files: list[WrittenFile] = field(default_factory=list)
    weight_map: dict[str, str] = field(default_factory=dict)
    total_size: int = 0

    def as_json(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files]


def plan_shards(tensors: Sequence[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Group tensors, in order, into shards of at most ``max_shard_bytes`` (a tensor larger
    than the limit gets a shard of its own, as transformers does)."""
    shards: list[list[OutTensor]] = []
    current: list[OutTensor] = []
    size = 0
    for t in tensors:
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current or not shards:
        shards.append(current)
    return shards


class _HashingWriter:
    """Writes to a file and hashes the same bytes in a worker thread (hashlib releases the
    GIL on large buffers), so hashing overlaps reading and writing."""

    def __init__(self, f: Any, pool: ThreadPoolExecutor) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.pool = pool
        self.pending: Future[None] | None = None
        self.size = 0
        self.turn = 0  # which copy buffer is next; kept across tensors (see _copy_range)

    def write(self, data: Any) -> None:
        mv = memoryview(data).cast("B")
        if self.pending is not None:
            self.pending.result()
        self.pending = self.pool.submit(self.h.update, mv)
        self.f.write(mv)
        self.size += mv.nbytes

    def finish(self) -> str:
        if self.pending is not None:
            self.pending.result()
            self.pending = None
        return self.h.hexdigest()


def _copy_range(src: TensorEntry, out: _HashingWriter, bufs: list[bytearray]) -> None:
    """Copy ``src``'s bytes into ``out`` through rotating buffers (one may still be hashed)."""
    with open(src.file, "rb", buffering=0) as f:
        f.seek(src.offset)
        remaining = src.nbytes
        while remaining:
            buf = bufs[out.turn % len(bufs)]
            out.turn += 1
            want = min(remaining, len(buf))
            # At most one hash is pending, and it is of the *other* buffer (write() waits
            # for the previous hash before queueing the next), so this one is free.
            view = memoryview(buf)[:want]
            got = f.readinto(view)
            if not got:
                raise OSError(f"{src.file}: unexpected end of file while copying {src.name!r}")
            out.write(view[:got])
            remaining -= got


def shard_file_names(n: int, stem: str = "model") -> list[str]:
    if n == 1:
        return [f"{stem}.safetensors"]
    return [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def write_checkpoint(
    out_dir: str | os.PathLike[str],
    tensors: Iterable[OutTensor],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    metadata: dict[str, str] | None = None,
    stem: str = "model",
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    """Write ``tensors`` as safetensors shards (plus ``{stem}.safetensors.index.json`` when
    there is more than one) into ``out_dir``; ``progress`` is called with bytes written."""
    out_dir = Path(out_dir)
    tensors = list(tensors)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate output tensor names: {dup[:5]}")
    meta = {"format": "pt", **(metadata or {})}
    shards = plan_shards(tensors, max_shard_bytes)
    file_names = shard_file_names(len(shards), stem)
    result = WriteResult()
    bufs = [bytearray(_CHUNK), bytearray(_CHUNK)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        for fname, shard in zip(file_names, shards, strict=True):
            header, _ = encode_header([(t.name, t.dtype, t.shape, t.nbytes) for t in shard], meta)
            with open(out_dir / fname, "wb") as f:
                w = _HashingWriter(f, pool)
                w.write(header)
                for t in shard:
                    before = w.size
                    if t.slice_of is not None:
                        _copy_range(t.slice_of, w, bufs)
                    elif t.load is not None:
                        data = t.load()
                        w.write(data)
                        w.finish()  # the buffer may be freed after this
                    else:  # pragma: no cover - constructor guarantees one source
                        raise ValueError(f"tensor {t.name!r} has no source")
                    if w.size - before != t.nbytes:
                        raise ValueError(
                            f"tensor {t.name!r}: wrote {w.size - before} bytes, expected {t.nbytes}"
                        )
                    result.weight_map[t.name] = fname
                    result.total_size += t.nbytes
                    if progress is not None:
                        progress(t.nbytes)
                digest = w.finish()
                f.flush()
                os.fsync(f.fileno())
            result.files.append(WrittenFile(fname, w.size, digest))
    if len(shards) > 1:
        index = {"metadata": {"total_size": result.total_size}, "weight_map": result.weight_map}
        (out_dir / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return result
