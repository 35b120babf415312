"""Writing sharded safetensors checkpoints in one streaming pass.

Why this shape: every output tensor is known up front (name, dtype, shape, where its bytes
come from), so shards are *planned* first and each file is written once, front to back:
header, then tensor bytes copied from a byte range of an input file (no torch, no decode)
or taken from an in-memory tensor. Output bytes are hashed while they are written, so the
sha256 recorded in provenance costs no second pass over the data.

Every floating tensor written is also scanned for NaN/Inf (:mod:`layergraft.checkpoint.finite`), on the
bytes already in hand: a copied tensor in the background pass that hashes it (so the scan
costs no extra read, and with ``hash_outputs=False`` that pass still runs, for the scan alone,
overlapped with the kernel copy), an in-memory tensor right before it is written. A non-finite weight raises
:class:`~layergraft.errors.NonFiniteError`, so the output directory is never completed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layergraft.checkpoint.dtypes import safetensors_dtype, tensor_bytes
from layergraft.checkpoint.finite import has_nonfinite, nonfinite_error
from layergraft.checkpoint.format import (
    DTYPE_SIZES,
    TensorEntry,
    encode_header,
    iter_blocks,
)

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
        dtype = safetensors_dtype(tensor.dtype)
        shape = tuple(int(s) for s in tensor.shape)
        nbytes = int(tensor.numel() * DTYPE_SIZES[dtype])
        return OutTensor(name, dtype, shape, nbytes, load=lambda t=tensor: tensor_bytes(t))


@dataclass
class WrittenFile:
    name: str
    size: int
    sha256: str | None


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


class _ShardWriter:
    """Writes one shard through a raw file descriptor.

    Verbatim tensor copies go through the kernel (``os.copy_file_range``: no bytes pass
    through Python, as with ``cp``). A single worker thread reads the same source ranges
    (from the page cache), scans them for NaN/Inf and, when hashing, feeds sha256 in output
    order, so that work runs on the other core *while* the kernel copies instead of after it. A failure in the worker (a non-finite weight, a read error) is
    kept and raised in the writing thread at its next step, so writing stops early.
    """

    def __init__(self, path: Path, pool: ThreadPoolExecutor, hash_output: bool) -> None:
        self.path = path
        self.fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.h = hashlib.sha256() if hash_output else None
        self.pool = pool
        self.last: Future[None] | None = None
        self.size = 0
        self.error: BaseException | None = None

    def _background(self, fn: Callable[[], None]) -> None:
        self.last = self.pool.submit(self._guarded, fn)  # one worker: jobs run in order

    def _guarded(self, fn: Callable[[], None]) -> None:
        if self.error is not None:
            return  # the shard is lost anyway; skip the remaining reads
        try:
            fn()
        except BaseException as e:  # handed to the writing thread by _raise_pending
            self.error = e

    def _raise_pending(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data: Any) -> None:
        self._raise_pending()
        mv = memoryview(data).cast("B")
        pos = 0
        while pos < mv.nbytes:
            pos += os.write(self.fd, mv[pos:])
        self.size += mv.nbytes
        if self.h is not None:
            h = self.h
            self._background(lambda: h.update(mv))

    def copy(self, run: list[TensorEntry]) -> None:
        """Copy consecutive byte ranges of one source file with as few kernel calls as the
        kernel allows (a restore's output mirrors the input layout, so runs are long)."""
        self._raise_pending()
        first, last = run[0], run[-1]
        span = TensorEntry(
            first.name,
            first.dtype,
            (),
            first.file,
            first.offset,
            last.offset + last.nbytes - first.offset,
        )
        with open(span.file, "rb", buffering=0) as f:
            fd = f.fileno()
            remaining, offset = span.nbytes, span.offset
            try:
                while remaining:
                    n = os.copy_file_range(fd, self.fd, remaining, offset)
                    if n == 0:
                        raise OSError(
                            f"{span.file}: unexpected end of file while copying {span.name!r}"
                        )
                    remaining -= n
                    offset += n
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self._copy_userspace(fd, offset, remaining, span)
        self.size += span.nbytes
        h, entries = self.h, list(run)
        self._background(lambda: _scan_and_hash(entries, h))

    def _copy_userspace(self, fd: int, offset: int, remaining: int, src: TensorEntry) -> None:
        """Fallback where the kernel copy is not available (other filesystems, old kernels)."""
        while remaining:
            chunk = os.pread(fd, min(remaining, _CHUNK), offset)
            if not chunk:
                raise OSError(f"{src.file}: unexpected end of file while copying {src.name!r}")
            pos = 0
            while pos < len(chunk):
                pos += os.write(self.fd, chunk[pos:])
            remaining -= len(chunk)
            offset += len(chunk)

    def finish(self, fsync: bool) -> str | None:
        if self.last is not None:
            self.last.result()
        self._raise_pending()
        if fsync:
            os.fsync(self.fd)
        self.close()
        return self.h.hexdigest() if self.h is not None else None

    def abort(self) -> None:
        """Stop after a failure: cancel pending hash jobs, close the file."""
        if self.last is not None:
            self.last.cancel()
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _continues(prev: TensorEntry, nxt: TensorEntry) -> bool:
    return nxt.file == prev.file and nxt.offset == prev.offset + prev.nbytes


def _scan_and_hash(entries: list[TensorEntry], h: Any | None) -> None:
    """Scan the bytes of consecutive ``entries`` (one file) for NaN/Inf and feed them to the
    hash ``h`` (when hashing): one read serves both."""
    largest = max(e.nbytes for e in entries)
    chunk = min(_CHUNK, max(8, (largest + 7) // 8 * 8))  # no 8 MiB buffer for small tensors
    for src, block in iter_blocks(entries, chunk):
        if h is not None:
            h.update(block)
        if has_nonfinite(block, src.dtype):
            raise nonfinite_error(src.name, src.dtype, block, src.file)


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
    hash_outputs: bool = True,
    fsync: bool = False,
) -> WriteResult:
    """Write ``tensors`` as safetensors shards (plus ``{stem}.safetensors.index.json`` when
    there is more than one) into ``out_dir``; ``progress`` is called with bytes written.

    ``hash_outputs`` records each file's sha256 (computed alongside the copy; off = the raw
    speed of the kernel copy, and ``WrittenFile.sha256`` is None). Every floating tensor is
    scanned for NaN/Inf either way (:class:`~layergraft.errors.NonFiniteError`). ``fsync`` flushes each
    shard to the device before returning: needed for durability across a power loss, not
    for atomicity (the output directory is renamed into place only when complete)."""
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
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        for fname, shard in zip(file_names, shards, strict=True):
            header, _ = encode_header([(t.name, t.dtype, t.shape, t.nbytes) for t in shard], meta)
            w = _ShardWriter(out_dir / fname, pool, hash_outputs)
            try:
                w.write(header)
                run: list[TensorEntry] = []  # consecutive byte ranges of one source file
                for t in shard:
                    src = t.slice_of
                    if run and (src is None or not _continues(run[-1], src)):
                        w.copy(run)
                        run = []
                    if src is not None:
                        if src.nbytes != t.nbytes:
                            raise ValueError(
                                f"tensor {t.name!r}: source has {src.nbytes} bytes, expected {t.nbytes}"
                            )
                        run.append(src)
                    elif t.load is not None:
                        before = w.size
                        data = t.load()
                        if has_nonfinite(data, t.dtype):
                            raise nonfinite_error(t.name, t.dtype, data, None)
                        w.write(data)
                        if w.size - before != t.nbytes:
                            raise ValueError(
                                f"tensor {t.name!r}: wrote {w.size - before} bytes, expected {t.nbytes}"
                            )
                    else:  # pragma: no cover - constructors guarantee one source
                        raise ValueError(f"tensor {t.name!r} has no source")
                    result.weight_map[t.name] = fname
                    result.total_size += t.nbytes
                    if progress is not None:
                        progress(t.nbytes)
                if run:
                    w.copy(run)
                digest = w.finish(fsync)
            except BaseException:
                w.abort()
                raise
            result.files.append(WrittenFile(fname, w.size, digest))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if len(shards) > 1:
        index = {"metadata": {"total_size": result.total_size}, "weight_map": result.weight_map}
        (out_dir / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return result
