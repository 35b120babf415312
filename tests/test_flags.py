"""Every flag does what it says (issue 15, parts 1 and 5): the same placement options on every
command that runs a model, prune's output flags, the mergekit export, crc's --tokenizer,
lengths beyond a model's context, one name per option."""

from __future__ import annotations

import json
import warnings

import pytest
import yaml

from layergraft.cli import build_parser, main
from layergraft.text import DEFAULT_CALIB
from layergraft.toy import toy_paths
from layergraft.toy.tokenizer import save_tokenizer
from tiny import save_tiny

MODEL_COMMANDS = {
    "crc": ["M"],
    "sweep": ["--base", "B", "--post", "P"],
    "generate": ["M", "--task", "qa", "--out", "o.jsonl"],
    "compare": ["--models", "a=M", "--task", "qa", "--out", "o"],
    "scores": ["M"],
    "prune": ["M", "--remove", "1:2", "--out", "o"],
    "compare-recovery": ["M", "--remove", "1:2"],
    "ppl": ["M"],
    "lm-eval": ["M", "--tasks", "x"],
    "demo": [],
}


@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_every_command_that_runs_a_model_takes_the_same_placement(command):
    parser = build_parser()
    args = parser.parse_args([command, *MODEL_COMMANDS[command]])
    assert (args.device, args.dtype, args.device_map) == (None, "auto", None)
    args = parser.parse_args(
        [command, *MODEL_COMMANDS[command], "--dtype", "bfloat16", "--device-map", "auto"]
    )
    assert (args.dtype, args.device_map) == ("bfloat16", "auto")
    with pytest.raises(SystemExit):
        parser.parse_args([command, *MODEL_COMMANDS[command], "--dtype", "float8"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = save_tiny("llama", tmp_path_factory.mktemp("m") / "m", num_layers=4, seed=1)
    save_tokenizer(d)
    calib = d.parent / "calib.txt"
    calib.write_text(DEFAULT_CALIB.read_text()[:4000])
    return d, calib


def test_prune_honours_no_hash_fsync_quiet_and_shard_size(tiny, tmp_path, capsys, monkeypatch):
    import os

    d, calib = tiny
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    out = tmp_path / "p"
    argv = ["prune", str(d), "--remove", "1:2", "--calib", str(calib), "--calib-tokens", "512",
            "--seqlen", "64", "--out", str(out), "--no-hash", "--fsync", "--quiet",
            "--max-shard-size", "60KB", "--json"]  # fmt: skip
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert cap.err == ""  # --quiet: no progress bars
    files = json.loads((out / "layergraft.json").read_text())["outputs"]["weight_files"]
    shards = [f for f in files if f["name"].startswith("model-")]
    assert len(shards) > 1 and all(f["size"] <= 60_000 + 8192 for f in shards)
    assert all(f["sha256"] is None for f in files)  # --no-hash
    assert len(synced) >= len(shards)  # --fsync flushed every shard
    # and without the flags: hashed, one shard like the input, a progress bar on stderr
    out2 = tmp_path / "p2"
    plain = argv[: argv.index("--out")] + ["--out", str(out2), "--json"]
    assert main(plain) == 0
    assert "calibrate" in capsys.readouterr().err
    files = json.loads((out2 / "layergraft.json").read_text())["outputs"]["weight_files"]
    assert len(files) == 2 and all(len(f["sha256"]) == 64 for f in files)


def test_prune_default_shard_size_is_like_the_input(tiny, tmp_path):
    d, calib = tiny
    sharded = save_tiny("llama", tmp_path / "sharded", num_layers=4, seed=1, max_shard_size="20KB")
    save_tokenizer(sharded)
    out = tmp_path / "p"
    assert main(["prune", str(sharded), "--remove", "1:2", "--calib", str(calib),
                 "--calib-tokens", "256", "--seqlen", "64", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    inputs = sorted(sharded.glob("model-*.safetensors"))
    outputs = sorted(out.glob("model-*.safetensors"))
    assert len(inputs) > 1 and len(outputs) > 1
    assert max(f.stat().st_size for f in outputs) <= max(f.stat().st_size for f in inputs)


def test_mergekit_export_names_who_supplies_embeddings_and_head(tmp_path):
    base, post = toy_paths()
    mk = tmp_path / "mk.yaml"
    argv = ["restore", "--base", str(base), "--post", str(post), "--layers", "2:4",
            "--out", str(tmp_path / "o"), "--quiet", "--export-mergekit", str(mk)]  # fmt: skip
    assert main([*argv, "--embed-from", "base", "--head-from", "base"]) == 0
    text = mk.read_text()
    body = yaml.safe_load(text)
    assert body["base_model"] == str(base) and "the base model" in text
    assert [s["sources"][0]["layer_range"] for s in body["slices"]] == [[0, 2], [2, 4], [4, 8]]


def test_crc_takes_another_tokenizer(capsys, tmp_path):
    import shutil

    toy_base, post = toy_paths()
    base = shutil.copytree(toy_base, tmp_path / "base")  # a base model without a chat template
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(["crc", str(base), "--json"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["crc", str(base), "--tokenizer", str(post), "--json", "--prompts", "letters"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["mean"]["V"] < 0.2  # the base model, scored in the post model's chat format


def test_lengths_beyond_the_context_are_clamped_with_a_message(tiny, capsys):
    d, calib = tiny  # the tiny llama has 128 positions
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert main(["ppl", str(d), "--data", str(calib), "--ppl-seqlen", "100000", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["seqlen"] == 128 and "chunks of 128 tokens" in res["definition"]
    assert any(
        "--ppl-seqlen 100000 is longer than the model's context of 128" in str(x.message) for x in w
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert main(["scores", str(d), "--data", str(calib), "--seqlen", "4096", "--json"]) == 0
    assert any("--seqlen 4096 is longer" in str(x.message) for x in w)


def test_old_option_names_still_work_and_say_the_new_one(tiny, capsys):
    d, calib = tiny
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert main(["ppl", str(d), "--data", str(calib), "--seqlen", "64", "--max-tokens", "300", "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert res["seqlen"] == 64 and res["tokens_total"] == 300
    said = " ".join(str(x.message) for x in w)
    assert "--seqlen is now --ppl-seqlen" in said and "--max-tokens is now --ppl-tokens" in said
    parser = build_parser()
    assert parser.parse_args(["scores", "M", "--max-tokens", "5"]).calib_tokens == 5
    for command in ("prune", "compare-recovery", "scores"):  # one name, one default
        a = parser.parse_args([command, "M", *(["--auto", "1"] if command != "scores" else [])])
        assert (a.calib_tokens, a.seqlen) == (8192, 512)
        # prune's --metric is None until the command runs: given with --remove it is refused
        # (it chooses nothing there), with --auto it defaults to angular as scores' does
        assert a.metric == ("angular" if command == "scores" else None)
    for command in ("ppl", "compare-recovery"):
        a = parser.parse_args([command, "M", *(["--remove", "1:2"] if command != "ppl" else [])])
        assert (a.ppl_seqlen, a.ppl_tokens) == (2048, None)


def test_a_renamed_option_warning_is_a_whole_line(tiny):
    """Warned while parsing, it used to lack its newline, so the error after it ran on."""
    import subprocess
    import sys

    d, calib = tiny
    r = subprocess.run([sys.executable, "-m", "layergraft", "ppl", str(d), "--seqlen", "64",
                        "--device", "tpu"], capture_output=True, text=True)  # fmt: skip
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert lines[0] == (
        "layergraft: WARNING: RenamedOptionWarning: --seqlen is now --ppl-seqlen; the old name still works"
    )
    assert lines[1].startswith("layergraft ppl: error: --device tpu: unknown device type")


def test_a_device_map_catch_all_fills_what_the_map_does_not_name(tiny, capsys):
    """``"": "cpu"`` beside a layer on disk: transformers 5 refuses that map as given; the
    resolved, flat map loads and computes the same perplexity as no map at all."""
    d, calib = tiny
    argv = ["ppl", str(d), "--data", str(calib), "--ppl-seqlen", "64", "--ppl-tokens", "300", "--json"]  # fmt: skip
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)["ppl"]
    for dm in ('{"model.layers.1": "disk", "": "cpu"}',
               '{"model": "cpu", "model.layers.2": "disk", "lm_head": "cpu"}'):  # fmt: skip
        assert main([*argv, "--device-map", dm]) == 0
        assert json.loads(capsys.readouterr().out)["ppl"] == pytest.approx(plain, rel=1e-6)


def test_diff_of_a_model_with_itself_ranks_no_layer(tiny, capsys):
    d, _ = tiny
    assert main(["diff", str(d), str(d), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "most changed layers: none (post and base are identical)" in out


def test_dtype_bfloat16_is_the_dtype_loaded_and_computed_in(tiny, tmp_path, capsys, monkeypatch):
    """``--dtype bfloat16`` loads bfloat16 weights (a plain and a ghosted model; the ghost
    operators stay float32 by design) and the perplexity is computed in it: it differs from the
    float32 one by bfloat16 rounding, not by nothing and not by much."""
    import torch

    import layergraft.models.load as load

    d, calib = tiny
    ghosted = tmp_path / "ghosted"
    prune = ["prune", str(d), "--remove", "1:2", "--calib", str(calib), "--calib-tokens", "512",
             "--seqlen", "64", "--out", str(ghosted), "--quiet"]  # fmt: skip
    assert main(prune) == 0
    capsys.readouterr()
    loaded = []
    real = load.load_model
    monkeypatch.setattr(
        load, "load_model", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1]
    )
    for model_dir in (d, ghosted):
        ppl = {}
        for dtype in ("float32", "bfloat16"):
            argv = ["ppl", str(model_dir), "--data", str(calib), "--ppl-seqlen", "64",
                    "--ppl-tokens", "300", "--dtype", dtype, "--json"]  # fmt: skip
            assert main(argv) == 0
            ppl[dtype] = json.loads(capsys.readouterr().out)["ppl"]
        m = loaded[-1]
        ghosts = getattr(m, "layergraft_ghosts", None)
        ghost_params = {id(p) for p in ghosts.parameters()} if ghosts is not None else set()
        assert (ghosts is not None) == (model_dir == ghosted)
        assert m.dtype == torch.bfloat16
        assert {p.dtype for p in m.parameters() if id(p) not in ghost_params} == {torch.bfloat16}
        if ghosts is not None:
            assert {p.dtype for p in ghosts.parameters()} == {torch.float32}
        assert ppl["bfloat16"] != ppl["float32"]
        assert ppl["bfloat16"] == pytest.approx(ppl["float32"], rel=0.05)


def test_placement_on_a_machine_with_one_gpu(monkeypatch):
    """The index and availability checks, with torch told it has one CUDA device (this
    runs anywhere; the catalogue covers the real CPU-only machine)."""
    import torch

    from layergraft.errors import InputError
    from layergraft.models.placement import check_device, check_placement

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for ok in ("cuda", "cuda:0", "cpu", "auto", None, 0):
        check_device(ok)
    with pytest.raises(InputError, match=r"--device cuda:7: this machine has 1 CUDA device \(cuda:0\); use an index below 1"):  # fmt: skip
        check_device("cuda:7")
    with pytest.raises(InputError, match=r"--device-map maps 'lm_head' to cuda:1: this machine has 1 CUDA device"):  # fmt: skip
        check_placement(device_map={"": 0, "lm_head": 1})
    assert check_placement(device_map={"": 0, "lm_head": "disk"}).device_map == {"": 0, "lm_head": "disk"}  # fmt: skip
