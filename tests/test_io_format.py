"""Safetensors header parsing/validation, the sharded writer and atomic output dirs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from layergraft.checkpoint.atomic import atomic_dir, clean_stale_temps
from layergraft.checkpoint.format import read_header
from layergraft.checkpoint.writer import OutTensor, write_checkpoint
from layergraft.errors import InputError, OutputError


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "b.bf16": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "c.idx": torch.arange(11, dtype=torch.int64),
        "d.half": torch.randn(2, 2, 2, generator=g).half(),
        "e.scalar": torch.tensor(3.5),
    }


def test_header_matches_reference_reader(tmp_path):
    ts = _tensors()
    save_file(ts, tmp_path / "x.safetensors")
    h = read_header(tmp_path / "x.safetensors")
    assert set(h.tensors) == set(ts)
    raw = (tmp_path / "x.safetensors").read_bytes()
    for name, t in ts.items():
        e = h.tensors[name]
        assert e.shape == tuple(t.shape)
        assert (
            raw[e.offset : e.offset + e.nbytes]
            == t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )


@pytest.mark.parametrize("max_bytes", [10**9, 64])
def test_writer_roundtrip_and_hashes(tmp_path, max_bytes):
    ts = _tensors()
    res = write_checkpoint(
        tmp_path, [OutTensor.from_torch(k, v) for k, v in ts.items()], max_shard_bytes=max_bytes
    )
    if max_bytes == 64:
        assert len(res.files) > 1
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(ts)
        assert index["metadata"]["total_size"] == res.total_size
    else:
        assert [f.name for f in res.files] == ["model.safetensors"]
    for f in res.files:
        data = (tmp_path / f.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f.sha256 and len(data) == f.size
        assert struct.unpack("<Q", data[:8])[0] % 8 == 0  # tensor data 8-byte aligned
    for name, t in ts.items():
        with safe_open(str(tmp_path / res.weight_map[name]), framework="pt") as f:
            assert torch.equal(f.get_tensor(name), t)


def test_byte_range_copy_is_bit_identical(tmp_path):
    ts = {f"t{i}": torch.randn(300, 301) for i in range(9)}
    big = torch.randn(3_000_000)  # 12 MB: crosses the 8 MiB copy chunk
    ts["big"] = big
    save_file(ts, tmp_path / "src.safetensors")
    h = read_header(tmp_path / "src.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    # many small tensors then a large one: the copy buffers rotate across tensors while a
    # hash may still be pending, so the manifest hash must still match the bytes
    res = write_checkpoint(out, [OutTensor.copy_of(e, name="x." + n) for n, e in h.tensors.items()])
    data = (out / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == res.files[0].sha256
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        for n, t in ts.items():
            assert torch.equal(f.get_tensor("x." + n), t)


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) - 10]))
    elif how == "header-json":
        data[8:12] = b"\xff[x{"
        path.write_bytes(bytes(data))
    elif how == "header-len":
        data[:8] = struct.pack("<Q", 10**12)
        path.write_bytes(bytes(data))
    elif how == "tiny":
        path.write_bytes(b"abc")


@pytest.mark.parametrize("how", ["truncated", "header-json", "header-len", "tiny"])
def test_corrupted_files_are_refused(tmp_path, how):
    p = tmp_path / "m.safetensors"
    save_file(_tensors(), p)
    _corrupt(p, how)
    with pytest.raises(InputError) as ei:
        read_header(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_atomic_dir_success_and_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "f").write_text("partial")
        raise RuntimeError("boom")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("done")
    assert (target / "f").read_text() == "done"
    with pytest.raises(OutputError, match="--force"), atomic_dir(target):
        pass
    # a failing --force run keeps the old output
    with pytest.raises(RuntimeError), atomic_dir(target, force=True) as tmp:
        raise RuntimeError("boom")
    assert (target / "f").read_text() == "done"
    with atomic_dir(target, force=True) as tmp:
        (tmp / "g").write_text("new")
    assert sorted(os.listdir(target)) == ["g"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_output_inside_or_equal_to_input_is_refused(tmp_path):
    inp = tmp_path / "model"
    inp.mkdir()
    for bad in (inp, inp / "sub", tmp_path):
        with pytest.raises(OutputError), atomic_dir(bad, force=True, inputs=[inp]):
            pass
    assert inp.is_dir()


def test_stale_temp_dirs_are_cleaned(tmp_path):
    dead = tmp_path / ".out.layergraft-tmp-999999999-abcd"
    dead.mkdir()
    alive = tmp_path / f".out.layergraft-tmp-{os.getpid()}-abcd"
    alive.mkdir()
    removed = clean_stale_temps(tmp_path, "out")
    assert removed == [dead] and alive.exists() and not dead.exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_force_replace_never_loses_the_old_output(tmp_path, monkeypatch, exchange):
    """--force swaps the new output in atomically where the OS can (renameat2), else with two
    renames; a kill between those two renames leaves the old output aside, and the next run
    beside it puts it back before deciding anything."""
    from layergraft.checkpoint import atomic

    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    else:
        probe_a, probe_b = tmp_path / "a", tmp_path / "b"
        probe_a.mkdir(), probe_b.mkdir()
        (probe_a / "x").touch()
        if not atomic._exchange(probe_a, probe_b):
            pytest.skip("renameat2(RENAME_EXCHANGE) not available here")
        assert (probe_b / "x").exists() and not (probe_a / "x").exists()
        shutil.rmtree(probe_a), shutil.rmtree(probe_b)
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("old")
    with atomic_dir(target, force=True) as tmp:
        (tmp / "f").write_text("new")
    assert (target / "f").read_text() == "new" and os.listdir(tmp_path) == ["out"]
    # the state a SIGKILL between "old aside" and "new in" leaves (dead pid, no target)
    aside = tmp_path / ".out.layergraft-old-999999999-abcd"
    os.rename(target, aside)
    (tmp_path / ".out.layergraft-tmp-999999999-ef01").mkdir()
    with pytest.raises(OutputError, match="--force"), atomic_dir(target):
        pass  # the previous output is back, so a run without --force must not replace it
    assert (target / "f").read_text() == "new" and os.listdir(tmp_path) == ["out"]
