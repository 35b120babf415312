"""Opening checkpoints (dir, sharded dir, gguf, hub id offline) and `layergraft inspect`."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from gguf_util import write_tiny_llama_gguf
from layergraft.checkpoint.describe import inspect_model
from layergraft.checkpoint.reader import open_checkpoint
from layergraft.cli import main
from layergraft.errors import InputError
from tiny import FAMILIES, save_tiny


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("m") / "llama", num_layers=3, seed=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_inspect_every_family(tmp_path, family):
    from tiny import make_tiny

    model = make_tiny(family, num_layers=3)
    path = save_tiny(family, tmp_path / family, num_layers=3)
    info = inspect_model(path)
    cfg = model.config
    assert info["family"] == family
    assert info["num_layers"] == 3
    assert info["hidden_size"] == cfg.hidden_size
    assert info["vocab_size"] == cfg.vocab_size
    assert info["dtype"] == "F32"
    assert info["tied_embeddings"] == bool(cfg.tie_word_embeddings)
    n_params = sum(p.numel() for p in model.state_dict().values() if p is not None)
    # the checkpoint stores a tied lm_head once; state_dict lists it twice
    if cfg.tie_word_embeddings:
        n_params -= model.get_output_embeddings().weight.numel()
    layer_params = (
        [sum(p.numel() for p in layer.state_dict().values()) for layer in model.model.layers]
        if hasattr(model, "model") and hasattr(model.model, "layers")
        else None
    )
    assert info["params_total"] <= n_params  # non-persistent buffers are not stored
    if layer_params is not None:
        assert info["params_per_layer"] == layer_params
    assert len(info["params_per_layer"]) == 3 and len(set(info["params_per_layer"])) == 1
    assert info["chat_template"] is False


def test_inspect_json_cli_and_sharded(tmp_path, capsys):
    path = save_tiny("qwen2", tmp_path / "q", num_layers=4, max_shard_size="30KB")
    assert (path / "model.safetensors.index.json").exists()
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in (
        "family",
        "adapter",
        "num_layers",
        "hidden_size",
        "vocab_size",
        "dtype",
        "tied_embeddings",
        "shards",
        "params_per_layer",
        "chat_template",
    ):
        assert key in info
    assert info["sharded"] and len(info["shards"]) > 1
    assert main(["inspect", str(path)]) == 0
    assert "qwen2" in capsys.readouterr().out


def test_inspect_gguf(tmp_path):
    g = write_tiny_llama_gguf(tmp_path / "tiny.gguf", layers=2, hidden=32, vocab=64)
    info = inspect_model(g)
    assert (info["family"], info["num_layers"], info["hidden_size"], info["vocab_size"]) == (
        "llama",
        2,
        32,
        64,
    )
    assert info["source"] == "gguf" and info["origin"] == str(g)
    # read from the header: nothing was converted
    from layergraft.checkpoint.convert import gguf_cache_path

    assert info["converted"] is False and not gguf_cache_path(g).exists()
    # once converted (any command that runs the model), inspect reads the converted
    # directory, and the two descriptions agree on every count
    ck = open_checkpoint(g)
    full = inspect_model(g)
    assert full["path"] == str(ck.path) and "converted" not in full
    for key in ("num_layers", "hidden_size", "vocab_size", "params_total", "params_pre",
                "params_post", "params_per_layer", "tied_embeddings", "family"):  # fmt: skip
        assert info[key] == full[key], key


def _digest(p):
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(p.rglob("*"))
        if f.is_file()
    }


def _bad_inputs(tmp_path, llama_dir):
    """(name, path) pairs for every way a checkpoint can be unusable."""
    cases = {}
    cases["missing"] = tmp_path / "nope"
    f = tmp_path / "afile.txt"
    f.write_text("x")
    cases["file-not-dir"] = f
    (tmp_path / "empty").mkdir()
    cases["empty-dir"] = tmp_path / "empty"
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(llama_dir / "config.json", d)
    cases["config-without-weights"] = d
    d = tmp_path / "truncated"
    shutil.copytree(llama_dir, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    cases["truncated"] = d
    d = tmp_path / "badheader"
    shutil.copytree(llama_dir, d)
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[8:16] = b"\x00garbage"
    w.write_bytes(bytes(data))
    cases["corrupted-header"] = d
    d = tmp_path / "missing-shard"
    shutil.copytree(save_tiny("llama", tmp_path / "sh", num_layers=3, max_shard_size="20KB"), d)
    next(iter(sorted(d.glob("model-*.safetensors")))).unlink()
    cases["missing-shard"] = d
    d = tmp_path / "pickle"
    d.mkdir()
    shutil.copy(llama_dir / "config.json", d)
    torch.save({"x": torch.zeros(2)}, d / "pytorch_model.bin")
    cases["pickle-only"] = d
    d = tmp_path / "nolayers"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mystery", "hidden_size": 8}))
    from safetensors.torch import save_file

    save_file(
        {"encoder.weight": torch.zeros(2, 2), "head.weight": torch.zeros(2, 2)},
        d / "model.safetensors",
    )
    cases["unknown-arch-no-layers"] = d
    return cases


def test_bad_inputs_one_line_exit_2(tmp_path, llama_dir, capsys):
    cases = _bad_inputs(tmp_path, llama_dir)
    for name, path in cases.items():
        before = _digest(path) if path.exists() and path.is_dir() else None
        rc = main(["inspect", str(path)])
        err = capsys.readouterr().err
        assert rc == 2, name
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert str(path.name) in err or "no such" in err, (name, err)
        if before is not None:
            assert _digest(path) == before, name


def test_pickle_allowed_on_request(tmp_path, llama_dir):
    from transformers import AutoModelForCausalLM

    d = tmp_path / "pk"
    m = AutoModelForCausalLM.from_pretrained(llama_dir)
    d.mkdir()
    shutil.copy(llama_dir / "config.json", d)
    torch.save(m.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(InputError, match="--allow-pickle"):
        open_checkpoint(d)
    ck = open_checkpoint(d, allow_pickle=True)
    assert ck.source == "pickle" and ck.adapter.num_layers == 3


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError, match="huggingface-cli download"):
        open_checkpoint("some-org/some-model-that-is-not-cached")


def test_fingerprint_full_hash(llama_dir):
    fp = open_checkpoint(llama_dir).fingerprint(full_hash=True)
    rec = fp["files"][0]
    assert (
        rec["sha256"] == hashlib.sha256((llama_dir / "model.safetensors").read_bytes()).hexdigest()
    )
    assert len(rec["header_sha256"]) == 64


def _sample_digest(path, tensors) -> str:
    from safetensors.torch import save_file

    from layergraft.checkpoint.format import read_header

    save_file(tensors, str(path))
    return read_header(path).sample_sha256()


def test_sample_sha256_sees_retrained_weights_that_keep_the_header(tmp_path):
    """Same names, shapes, dtypes and file size: the header hash cannot tell these files
    apart; the sample of each tensor's first and last 4 KiB can (and its limit: the middle of
    a large tensor is not read)."""
    big = torch.arange(4096, dtype=torch.float32)  # 16 KiB: head, middle and tail pages
    small = torch.ones(10)  # shorter than a page: read whole
    ref = _sample_digest(tmp_path / "a.safetensors", {"big": big, "small": small})
    assert (
        _sample_digest(tmp_path / "copy.safetensors", {"big": big.clone(), "small": small}) == ref
    )
    for i, where in [(0, "head"), (4095, "tail")]:
        edited = big.clone()
        edited[i] += 1
        got = _sample_digest(tmp_path / f"{where}.safetensors", {"big": edited, "small": small})
        assert got != ref, where
    tiny = small.clone()
    tiny[5] = 2
    assert _sample_digest(tmp_path / "s.safetensors", {"big": big, "small": tiny}) != ref
    middle = big.clone()
    middle[2048] += 1
    assert _sample_digest(tmp_path / "m.safetensors", {"big": middle, "small": small}) == ref
    renamed = {"large": big, "small": small}  # a different header, the same bytes
    assert _sample_digest(tmp_path / "r.safetensors", renamed) != ref


def test_a_converted_gguf_stops_on_the_end_of_turn_tokens_its_vocabulary_has():
    """A GGUF records one EOS id; a chat model ends its turn with <end_of_turn> / <|im_end|>
    / ... — the converted directory's generation config stops on those too."""
    from layergraft.checkpoint.convert import stop_ids
    from layergraft.toy.tokenizer import build_tokenizer

    tok = build_tokenizer()  # has <|end|> (the toy's end of turn)
    end = tok.get_vocab()["<|end|>"]
    assert stop_ids(2, tok) == [2, end]
    assert stop_ids([2, end], tok) == [2, end]

    class NoChat:
        def get_vocab(self):
            return {"<s>": 1, "</s>": 2}

    assert stop_ids(2, NoChat()) == 2


# ---- the output rule: one check for every path layergraft writes (issue 22, part 1) --------
def _refused(fn, match, where):
    """``fn()`` raises OutputError matching ``match``, and ``where`` is listed as before."""
    from layergraft.errors import OutputError

    before = sorted(p.name for p in where.iterdir())
    with pytest.raises(OutputError, match=match):
        fn()
    assert sorted(p.name for p in where.iterdir()) == before, "the refusal left something"


def test_output_rule_refuses_every_overlap_with_an_input(tmp_path, llama_dir):
    from layergraft.checkpoint.outputs import check_output

    model = shutil.copytree(llama_dir, tmp_path / "m")
    calib = tmp_path / "calib.txt"
    calib.write_text("text")
    ins = [model, calib]
    link = tmp_path / "link.json"
    link.symlink_to(model / "config.json")
    for path, kind, match in [
        (model / "config.json", "file", "is inside the input"),  # diff --plot P/config.json
        (model / "sub" / "x.png", "file", "is inside the input"),
        (calib, "file", "is an input itself"),  # diversity GENS --out GENS
        (tmp_path / "x" / ".." / "calib.txt", "file", "is an input itself"),
        (link, "file", "is inside the input"),  # a link to an input file
        (model, "dir", "is an input itself"),
        (model / "out", "dir", "is inside the input"),
        (tmp_path, "dir", "contains the input"),
    ]:
        _refused(lambda p=path, k=kind: check_output(p, inputs=ins, kind=k, force=True, reuse=True), match, tmp_path)  # fmt: skip
    # hub ids and in-memory models name nothing on this disk
    assert check_output(tmp_path / "ok.png", inputs=["org/model", object(), None, *ins])


def test_output_rule_parent_kind_and_writability(tmp_path):
    from layergraft.checkpoint.outputs import check_output

    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "adir").mkdir()
    _refused(lambda: check_output(tmp_path / "no" / "x.png", flag="--plot"), r"--plot .*x\.png: the directory .*no does not exist; create it", tmp_path)  # fmt: skip
    _refused(lambda: check_output(afile / "x.png"), r"afile is not a directory; choose another output path", tmp_path)  # fmt: skip
    _refused(lambda: check_output(tmp_path / "adir"), r"adir is a directory; give a file name", tmp_path)  # fmt: skip
    _refused(lambda: check_output(afile, kind="dir"), r"exists and is not a directory", tmp_path)
    _refused(lambda: check_output(tmp_path / "adir", kind="dir"), r"already exists; pass --force", tmp_path)  # fmt: skip
    assert check_output(tmp_path / "adir", kind="dir", force=True) == tmp_path / "adir"
    assert check_output(tmp_path / "adir", kind="dir", reuse=True) == tmp_path / "adir"
    assert check_output(afile) == afile  # an existing file is replaced (atomically)
    # writability is proven by creating the temp: /proc takes no new file, whoever asks
    from layergraft.errors import OutputError

    with pytest.raises(OutputError, match=r"cannot write in /proc .*choose a writable location"):
        check_output("/proc/x.png", flag="--plot")
    # a cache entry creates its missing parents (the cache is ours), and only then
    made = check_output(tmp_path / "cache" / "gguf" / "entry", kind="dir", parents=True)
    assert made.parent.is_dir() and not made.exists()


def test_output_rule_on_a_read_only_directory(tmp_path):
    """The mode bits are not read: a real denial, from a child without root's override."""
    import subprocess
    import sys

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code = (
        "import sys\nfrom layergraft.checkpoint.outputs import check_output\n"
        "from layergraft.errors import OutputError\n"
        f"try:\n    check_output({str(ro / 'x.json')!r}, flag='--out')\n"
        "except OutputError as e:\n    print(e); sys.exit(3)\n"
    )
    from test_bad_inputs import _drop_dac_override

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       preexec_fn=_drop_dac_override)  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "Permission denied" in r.stdout and "choose a writable location" in r.stdout
    assert list(ro.iterdir()) == []


def test_atomic_file_replaces_in_one_rename_and_cleans_up(tmp_path):
    import os

    from layergraft.checkpoint.atomic import atomic_file, clean_stale_temps, write_text_atomic

    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["r.json"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["r.json"]
    # a temp of a killed writer (a pid that cannot be alive) is removed beside the next write
    stale = tmp_path / ".r.json.layergraft-tmp-999999999-abcdef12.json"
    stale.write_text("left by a kill")
    assert clean_stale_temps(tmp_path, "r.json") == [stale] and not stale.exists()
    # the rule again at write time: an API caller who skipped the check still cannot
    # write over an input
    from layergraft.errors import OutputError

    with pytest.raises(OutputError, match="is an input itself"):
        write_text_atomic(target, "x", inputs=[target])
    assert target.read_text() == "new"
