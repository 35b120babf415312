"""`layergraft verify` detects every kind of damage to an output directory."""

from __future__ import annotations

import json

import pytest

from layergraft.api import restore
from layergraft.cli import main
from tiny import save_tiny


@pytest.fixture()
def hybrid(tmp_path):
    base = save_tiny("llama", tmp_path / "b", num_layers=3, seed=1)
    post = save_tiny("llama", tmp_path / "p", num_layers=3, seed=2, max_shard_size="20KB")
    out = tmp_path / "h"
    restore(base, post, "1:2", out, progress=False)
    return out


def test_verify_ok_then_detects_corruption(hybrid, capsys):
    assert main(["verify", str(hybrid)]) == 0
    assert "OK" in capsys.readouterr().out
    shard = sorted(hybrid.glob("model-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in the last tensor
    shard.write_bytes(bytes(data))
    assert main(["verify", str(hybrid), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert not rep["ok"] and "sha256" in rep["problems"][0] and shard.name in rep["problems"][0]


def test_verify_truncated_and_missing(hybrid, capsys):
    shards = sorted(hybrid.glob("model-*.safetensors"))
    shards[0].write_bytes(shards[0].read_bytes()[:-7])
    shards[1].unlink()
    assert main(["verify", str(hybrid)]) == 1
    out = capsys.readouterr().out
    assert "size" in out and "missing" in out and "FAILED" in out


def test_verify_no_hash_checks_sizes_and_loads(tmp_path, capsys):
    base = save_tiny("qwen2", tmp_path / "b", num_layers=2, seed=1)
    post = save_tiny("qwen2", tmp_path / "p", num_layers=2, seed=2)
    restore(base, post, "0:1", tmp_path / "h", progress=False, hash_outputs=False)
    assert main(["verify", str(tmp_path / "h")]) == 0
    assert "not recorded" in capsys.readouterr().out


def test_verify_bad_input(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 2
    (tmp_path / "plain").mkdir()
    assert main(["verify", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert "layergraft.json" in err
