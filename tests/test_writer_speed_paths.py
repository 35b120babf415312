"""The writer's fast paths keep every guarantee, and the work really overlaps.

Restore's speed comes from running the kernel copy, the sha256 and the NaN/Inf scan at the
same time (:mod:`layergraft.checkpoint.writer`). Speed itself is checked by
``benchmarks/bench_restore.py``, never by timings here; these tests check the *order* of
events that makes the overlap possible (with events and generous timeouts: a timeout means
"these steps ran one after the other"), and that hashes, refusals and resources stay right on
every path: one shard or many, hashing or not, copied ranges mixed with in-memory tensors.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from layergraft.checkpoint import lanes, writer
from layergraft.checkpoint.format import read_header
from layergraft.checkpoint.writer import OutTensor, write_checkpoint
from layergraft.errors import NonFiniteError

WAIT_S = 5.0  # far longer than any step here takes; reached only when steps are serialised


def _source(path: Path, n: int = 6, numel: int = 40_000, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    ts = {f"t{i}": torch.randn(numel, generator=g).to(dtype) for i in range(n)}
    save_file(ts, path)
    return ts


def _copies(path: Path, prefix: str = "") -> list[OutTensor]:
    h = read_header(path)
    return [OutTensor.copy_of(e, name=prefix + e.name) for e in h.tensors.values()]


def _out_name(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


class _SlowHash:
    """A sha256 whose updates wait (up to WAIT_S) for ``gate``; records whether it opened."""

    def __init__(self, gate: threading.Event, log: list[bool]) -> None:
        self.h, self.gate, self.log = hashlib.sha256(), gate, log

    def update(self, data) -> None:
        self.log.append(self.gate.wait(WAIT_S))
        self.h.update(data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def test_a_shards_hash_runs_on_while_the_next_shard_is_copied(tmp_path, monkeypatch):
    """Shard 2's kernel copy starts while shard 1 is still being hashed (before: each shard
    waited for its own hash before the next one began, so nothing overlapped across shards)."""
    src = tmp_path / "src.safetensors"
    _source(src)
    out = tmp_path / "out"
    out.mkdir()
    second_copy, opened = threading.Event(), []
    hashers: list[object] = []

    def sha256():  # the first file's hash waits until shard 2 is being copied
        h = _SlowHash(second_copy, opened) if not hashers else hashlib.sha256()
        hashers.append(h)
        return h

    real_copy = os.copy_file_range

    def copy_file_range(src_fd, dst_fd, count, offset_src=None, offset_dst=None):
        if "-00002-of-" in _out_name(dst_fd):
            second_copy.set()
        return real_copy(src_fd, dst_fd, count, offset_src, offset_dst)

    monkeypatch.setattr(writer, "hashlib", types.SimpleNamespace(sha256=sha256))
    monkeypatch.setattr(writer.os, "copy_file_range", copy_file_range)
    res = write_checkpoint(out, _copies(src), max_shard_bytes=3 * 160_000, lanes=1)
    assert len(res.files) == 2
    assert opened and all(opened), "shard 1's hash blocked the copy of shard 2"
    for f in res.files:
        assert hashlib.sha256((out / f.name).read_bytes()).hexdigest() == f.sha256


@pytest.mark.parametrize("hash_outputs", [True, False])
def test_background_reads_a_range_while_the_kernel_copies_it(tmp_path, monkeypatch, hash_outputs):
    """The hash (or, with hashing off, the scan) of a copied range starts before the kernel
    copy of that range returns (before: it was queued only after the copy finished, so on a
    one-file model the hash ran almost entirely after the copy)."""
    src = tmp_path / "src.safetensors"
    _source(src)
    out = tmp_path / "out"
    out.mkdir()
    touched, waited = threading.Event(), []
    if hash_outputs:

        class Hash:
            def __init__(self) -> None:
                self.h, self.n = hashlib.sha256(), 0

            def update(self, data) -> None:
                self.n += 1
                if self.n > 1:  # the first update is the header
                    touched.set()
                self.h.update(data)

            def hexdigest(self) -> str:
                return self.h.hexdigest()

        monkeypatch.setattr(writer, "hashlib", types.SimpleNamespace(sha256=Hash))
    else:
        real_scan = lanes.has_nonfinite

        def has_nonfinite(buf, dtype):
            touched.set()
            return real_scan(buf, dtype)

        monkeypatch.setattr(lanes, "has_nonfinite", has_nonfinite)
    real_copy = os.copy_file_range

    def copy_file_range(*a):
        waited.append(touched.wait(WAIT_S))
        return real_copy(*a)

    monkeypatch.setattr(writer.os, "copy_file_range", copy_file_range)
    res = write_checkpoint(out, _copies(src), hash_outputs=hash_outputs, lanes=1)
    assert waited and all(waited), "the background pass waited for the kernel copy"
    data = (out / "model.safetensors").read_bytes()
    assert res.files[0].sha256 == (hashlib.sha256(data).hexdigest() if hash_outputs else None)


@pytest.mark.parametrize("hash_outputs", [True, False])
@pytest.mark.parametrize("shards", [1, 4])
def test_copied_and_computed_tensors_interleaved_hash_right(tmp_path, hash_outputs, shards):
    """Copied ranges from two files and in-memory tensors, alternating: the bytes are the
    sources' and the recorded sha256 is the file's, on one shard or several."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ta, tb = _source(a, numel=300_000), _source(b, dtype=torch.bfloat16)
    ca, cb = _copies(a, "a."), _copies(b, "b.")
    g = torch.Generator().manual_seed(1)
    mem = {f"m{i}": torch.randn(1000 + i, generator=g) for i in range(6)}
    tensors = []
    for i in range(6):  # copy from a, copy from b, computed: no two neighbours share a source
        tensors += [ca[i], cb[i], OutTensor.from_torch(f"m{i}", mem[f"m{i}"])]
    out = tmp_path / "out"
    out.mkdir()
    total = sum(t.nbytes for t in tensors)
    res = write_checkpoint(
        out, tensors, max_shard_bytes=total // shards + 1, hash_outputs=hash_outputs
    )
    assert (len(res.files) > 1) == (shards > 1)
    for f in res.files:
        data = (out / f.name).read_bytes()
        assert f.size == len(data)
        assert f.sha256 == (hashlib.sha256(data).hexdigest() if hash_outputs else None)
    expect = {**{"a." + k: v for k, v in ta.items()}, **{"b." + k: v for k, v in tb.items()}, **mem}
    for name, fname in res.weight_map.items():
        with safe_open(str(out / fname), framework="pt") as f:
            assert torch.equal(f.get_tensor(name), expect[name]), name


def test_files_are_hashed_on_parallel_lanes(tmp_path, monkeypatch):
    """With two lanes, shard 2 is hashed while shard 1's hash is still running (before: one
    worker hashed every file, one after the other, on one core)."""
    src = tmp_path / "src.safetensors"
    _source(src)
    out = tmp_path / "out"
    out.mkdir()
    second_hashing, opened = threading.Event(), []
    hashers: list[object] = []

    class Second:
        def __init__(self) -> None:
            self.h = hashlib.sha256()

        def update(self, data) -> None:
            second_hashing.set()
            self.h.update(data)

        def hexdigest(self) -> str:
            return self.h.hexdigest()

    def sha256():
        h = _SlowHash(second_hashing, opened) if not hashers else Second()
        hashers.append(h)
        return h

    monkeypatch.setattr(writer, "hashlib", types.SimpleNamespace(sha256=sha256))
    res = write_checkpoint(out, _copies(src), max_shard_bytes=3 * 160_000, lanes=2)
    assert len(res.files) == 2
    assert opened and all(opened), "shard 2 waited for shard 1's hash"
    for f in res.files:
        assert hashlib.sha256((out / f.name).read_bytes()).hexdigest() == f.sha256


@pytest.mark.parametrize("hash_outputs", [True, False])
def test_userspace_copy_fallback_keeps_every_guarantee(tmp_path, monkeypatch, hash_outputs):
    """Where the kernel copy is refused (EXDEV: another filesystem, old kernels), bytes go
    through pread/write: still bit-identical, hashed, and scanned."""

    def refuse(*a):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(writer.os, "copy_file_range", refuse)
    src = tmp_path / "src.safetensors"
    ts = _source(src, numel=3_000_000)  # 12 MB tensors: more than one 8 MiB fallback chunk
    out = tmp_path / "out"
    out.mkdir()
    res = write_checkpoint(out, _copies(src), hash_outputs=hash_outputs)
    data = (out / "model.safetensors").read_bytes()
    assert res.files[0].sha256 == (hashlib.sha256(data).hexdigest() if hash_outputs else None)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        for n, t in ts.items():
            assert torch.equal(f.get_tensor(n), t)
    ts["t2"][-1] = float("inf")
    save_file(ts, src)
    with pytest.raises(NonFiniteError, match="tensor 't2' in .* holds Inf"):
        write_checkpoint(out, _copies(src), hash_outputs=hash_outputs)


def test_a_failed_write_stops_its_background_reads(tmp_path, monkeypatch):
    """When the copy fails (here: disk full on the second range), the hash lane stops at its
    next block and queued ranges are never read: a failure costs no pass over the rest."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _source(a), _source(b)
    ca, cb = _copies(a, "a."), _copies(b, "b.")
    tensors = [t for pair in zip(ca, cb, strict=True) for t in pair]  # 12 ranges, 12 jobs
    out = tmp_path / "out"
    out.mkdir()
    failed, updates = threading.Event(), []

    class Hash:
        def __init__(self) -> None:
            self.h = hashlib.sha256()

        def update(self, data) -> None:  # slow blocks: the failure lands mid-range
            updates.append(failed.wait(WAIT_S))
            time.sleep(0.05)
            self.h.update(data)

    calls = []

    def copy_file_range(*a):
        calls.append(1)
        if len(calls) == 2:
            failed.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(*a)

    real_copy = os.copy_file_range
    monkeypatch.setattr(lanes, "HASH_BLOCK", 16 * 1024)  # 10 blocks per range
    monkeypatch.setattr(writer, "hashlib", types.SimpleNamespace(sha256=Hash))
    monkeypatch.setattr(writer.os, "copy_file_range", copy_file_range)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(out, tensors, lanes=1)
    assert all(updates)
    assert len(updates) <= 3, f"{len(updates)} blocks hashed after the write had failed"


def _pad_header(path: Path, extra: int) -> None:
    """Rewrite ``path`` with ``extra`` more spaces after its JSON header (valid safetensors)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", n + extra) + data[8 : 8 + n] + b" " * extra + data[8 + n :])


@pytest.mark.parametrize("extra", [0, 8, 1000, 4088])
def test_copied_tensors_keep_their_offset_in_the_page(tmp_path, extra):
    """The output header is padded so copied bytes sit at the same offset within a 4 KiB page
    as in their source (the kernel copies such ranges ~1.5x faster); before, the data began
    wherever the compact header ended. The padded files load with the reference reader."""
    src = tmp_path / "src.safetensors"
    ts = _source(src, numel=100_000)  # 2.4 MB: worth aligning (under 1 MiB is left alone)
    _pad_header(src, extra)
    h = read_header(src)
    out = tmp_path / "out"
    out.mkdir()
    computed = OutTensor.from_torch("computed", torch.ones(6))
    tensors = [computed, *_copies(src)]  # a computed tensor first shifts every copy
    res = write_checkpoint(out, tensors)
    written = read_header(out / "model.safetensors")
    for name, e in h.tensors.items():
        assert written.tensors[name].offset % 4096 == e.offset % 4096, name
    assert written.data_start % 8 == 0 and written.header_len < h.header_len + 4096 + 64
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        for n, t in ts.items():
            assert torch.equal(f.get_tensor(n), t)
        assert torch.equal(f.get_tensor("computed"), torch.ones(6))
    data = (out / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == res.files[0].sha256


def test_small_copies_get_no_header_padding(tmp_path):
    """Under 1 MiB of copied bytes the header stays compact (tiny shards keep their size)."""
    src = tmp_path / "src.safetensors"
    _source(src, numel=1000)
    _pad_header(src, 1000)
    out = tmp_path / "out"
    out.mkdir()
    write_checkpoint(out, _copies(src))
    (n,) = struct.unpack("<Q", (out / "model.safetensors").read_bytes()[:8])
    assert n < read_header(src).header_len - 900


def test_encode_header_page_offset():
    from layergraft.checkpoint.format import encode_header

    entries = [("a", "F32", (3,), 12)]
    plain, _ = encode_header(entries)
    for off in (0, 8, 2048, 4088):
        header, _ = encode_header(entries, None, off)
        assert len(header) % 4096 == off and len(header) - len(plain) < 4096
        assert header.startswith(struct.pack("<Q", len(header) - 8))
        assert json.loads(header[8:]) == json.loads(plain[8:])
    with pytest.raises(ValueError, match="multiple of 8"):
        encode_header(entries, None, 12)


def test_long_copies_start_on_a_2mib_boundary_of_the_output(tmp_path, monkeypatch):
    """A range longer than 2 MiB is copied as a short head up to the next 2 MiB boundary of
    the output, then the bulk from there (the kernel copy is ~1.3x faster into aligned output
    offsets); before, one call started wherever the header ended."""
    src = tmp_path / "src.safetensors"
    ts = _source(src, n=3, numel=1_500_000)  # 18 MB in one run
    out = tmp_path / "out"
    out.mkdir()
    calls = []
    real_copy = os.copy_file_range

    def copy_file_range(src_fd, dst_fd, count, offset_src=None, offset_dst=None):
        calls.append((os.lseek(dst_fd, 0, os.SEEK_CUR), count))
        return real_copy(src_fd, dst_fd, count, offset_src, offset_dst)

    monkeypatch.setattr(writer.os, "copy_file_range", copy_file_range)
    write_checkpoint(out, _copies(src))
    big = [(pos, count) for pos, count in calls if count > 2 * 1024 * 1024]
    assert big and all(pos % (2 * 1024 * 1024) == 0 for pos, _ in big), calls
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        for n, t in ts.items():
            assert torch.equal(f.get_tensor(n), t)


def _open_fds() -> set[str]:
    """What this process has open (the directory listing's own fd is gone by the readlink)."""
    out = set()
    for n in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            out.add(os.readlink(f"/proc/self/fd/{n}"))
    return out


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("hash_outputs", [True, False])
@pytest.mark.parametrize("where", ["first", "last", "deep"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_nonfinite_in_any_copied_range_is_refused(tmp_path, hash_outputs, where, dtype):
    """A NaN/Inf in a copied tensor stops the write whichever thread scans it: the first
    tensor, the last one (scanned after the final copy) or deep inside a tensor larger than
    one scan block, in a later shard; and no source stays open or mapped afterwards."""
    src = tmp_path / "src.safetensors"
    g = torch.Generator().manual_seed(0)
    numel = 600_013  # more than one 1 MiB scan block in every dtype, odd length
    ts = {f"t{i}": torch.randn(numel, generator=g).to(dtype) for i in range(5)}
    bad = {"first": "t0", "last": "t4", "deep": "t3"}[where]
    ts[bad][-1 if where == "deep" else 7] = (
        float("nan") if dtype != torch.float16 else -float("inf")
    )
    save_file(ts, src)
    out = tmp_path / "out"
    out.mkdir()
    before = _open_fds()
    with pytest.raises(NonFiniteError, match=rf"tensor '{bad}' in .*src\.safetensors holds"):
        write_checkpoint(
            out, _copies(src, "x."), max_shard_bytes=2 * numel, hash_outputs=hash_outputs
        )
    assert _open_fds() <= before
    assert not _mapped(src)


def test_sources_are_closed_and_unmapped_after_a_write(tmp_path):
    src = tmp_path / "src.safetensors"
    _source(src)
    out = tmp_path / "out"
    out.mkdir()
    before = _open_fds()
    write_checkpoint(out, _copies(src), max_shard_bytes=200_000)
    assert _open_fds() <= before
    assert not _mapped(src)


def test_a_hidden_progress_bar_imports_nothing(tmp_path):
    """``--quiet`` writes without importing tqdm (~30 ms of a 0.2 s copy)."""
    code = (
        "import sys\n"
        "from layergraft.checkpoint.model_dir import byte_progress\n"
        "with byte_progress(10, 'write', False) as bar:\n"
        "    bar.update(10)\n"
        "print('tqdm' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
