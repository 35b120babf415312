"""The shipped toy pair is a real base/post pair: loadable, sharded, in format, and collapsed.

The numbers the README publishes (``docs/demo/results.json``, rendered into it by
``tools/render_results.py``) are recomputed here where that takes seconds, and must be equal
to the last bit: CRC validity and entropy of both models, the block angular selection picks and
the scale repair's α (verified equal at 1 and 2 torch threads). A rebuild of the pair or a change
of the math changes them: re-run ``make demo`` and refresh the docs rather than loosen this.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from layergraft.errors import InputError, OutputError
from layergraft.slr.proxy.crc import crc_exact
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.toy import BuildSettings, build_pair, toy_paths
from tiny import torch_threads

#: the full demo run whose numbers the README shows
PUBLISHED = json.loads((Path(__file__).parents[1] / "docs" / "demo" / "results.json").read_text())


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, post_dir = toy_paths()
    return {
        "base": AutoModelForCausalLM.from_pretrained(base_dir).eval(),
        "post": AutoModelForCausalLM.from_pretrained(post_dir).eval(),
        "tok": AutoTokenizer.from_pretrained(post_dir),
        "base_tok": AutoTokenizer.from_pretrained(base_dir),
        "dirs": (base_dir, post_dir),
    }


def test_layout_sharded_and_small() -> None:
    total = 0
    for d in toy_paths():
        index = json.loads((d / "model.safetensors.index.json").read_text())
        shards = set(index["weight_map"].values())
        assert len(shards) >= 2
        assert all((d / s).is_file() for s in shards)
        for name in (
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ):
            assert (d / name).is_file()
        total += sum(f.stat().st_size for f in d.iterdir())
    assert total <= 20_000_000


def test_same_architecture(pair) -> None:
    b, p = pair["base"].config, pair["post"].config
    assert b.model_type == p.model_type == "llama"
    assert b.num_hidden_layers == p.num_hidden_layers == 8
    assert b.to_dict() | {"_name_or_path": ""} == p.to_dict() | {"_name_or_path": ""}
    assert not b.tie_word_embeddings
    sb, sp = pair["base"].state_dict(), pair["post"].state_dict()
    assert sb.keys() == sp.keys()
    assert all(sb[k].shape == sp[k].shape for k in sb)
    assert any(not torch.equal(sb[k], sp[k]) for k in sb)  # post really was trained


def test_tokenizer_round_trip_and_chat_template(pair) -> None:
    tok = pair["tok"]
    text = "Hello, world!\n  a random letter from {d, k, q}: k"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<s><|user|>hi<|end|><|assistant|>"
    cfg = json.loads((pair["dirs"][1] / "tokenizer_config.json").read_text())
    assert "chat_template" in cfg
    assert pair["base_tok"].get_vocab() == tok.get_vocab()


def _generate(model, tok, question: str, max_new_tokens: int = 80) -> tuple[str, list[int]]:
    ids = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    return tok.decode(new, skip_special_tokens=True), new


@pytest.mark.parametrize(
    "question",
    ["Pick a random letter from h, t, x, b", "Name a color.", "Write a short poem about the sea."],
)
def test_post_answers_in_format(pair, question) -> None:
    end = pair["tok"].convert_tokens_to_ids("<|end|>")
    text, new = _generate(pair["post"], pair["tok"], question)
    assert new[-1] == end, text
    assert text.strip()


def test_post_answers_arithmetic_in_format(pair) -> None:
    text, _ = _generate(
        pair["post"],
        pair["tok"],
        "Ann has 3 pens and gets 4 more. How many pens does Ann have now?",
    )
    # a tiny model learns the worked-step *format* reliably; the sum itself is not asserted
    assert re.fullmatch(r"\d [+-] \d = \d+\. #### \d+", text), text


def test_base_is_not_chat_trained(pair) -> None:
    end = pair["tok"].convert_tokens_to_ids("<|end|>")
    _, new = _generate(pair["base"], pair["tok"], "Name a color.", max_new_tokens=20)
    assert end not in new


def test_post_crc_collapsed_and_equal_to_the_published_numbers(pair) -> None:
    prompts = load_crc_prompts("all")
    with torch_threads(1):
        base = crc_exact(pair["base"], pair["tok"], prompts)
        post = crc_exact(pair["post"], pair["tok"], prompts)
    for name, got in (("base", base), ("post", post)):
        want = PUBLISHED["sweep"]["references"][name]
        assert {k: got.mean[k] for k in ("V", "H", "H_norm")} == {
            k: want[k] for k in ("V", "H", "H_norm")
        }, name
        for cat, row in want["by_category"].items():
            assert {k: got.by_category[cat][k] for k in row} == row, (name, cat)
    # and what the numbers mean: the post model is valid and collapsed, the base is not
    assert post.mean["V"] >= 0.8
    assert post.mean["H_norm"] <= 0.5
    assert base.mean["H_norm"] >= post.mean["H_norm"] + 0.3
    for cat in ("letters", "digits"):
        assert post.by_category[cat]["H_norm"] < base.by_category[cat]["H_norm"]


def test_pruning_selection_and_scale_equal_the_published_numbers() -> None:
    """The demo's pruning step: the angular block picks (2 and 4 layers) and the scale repair's
    α from 8192 calibration tokens, recomputed (the perplexities take too long to redo here)."""
    from layergraft.prune.job import load_job, open_input
    from layergraft.prune.model import collect_stats
    from layergraft.prune.recover import fit_scale
    from layergraft.ranges import format_ranges
    from layergraft.text import DEFAULT_CALIB

    settings = PUBLISHED["prune_settings"]
    base = str(toy_paths()[0])
    with torch_threads(1):
        inp = open_input(base, calib=DEFAULT_CALIB)
        job = load_job(inp, calib=DEFAULT_CALIB, calib_tokens=settings["calib_tokens"], seqlen=512,
                       batch_size=4, device=None, dtype="auto", device_map=None)  # fmt: skip
        gaps = {n: job.gaps(None, n, "angular") for n in settings["blocks"]}
        stats = collect_stats(job.model, job.adapter, job.batches, [g[0] for g in gaps.values()])
    for (n, g), st in zip(gaps.items(), stats, strict=True):
        pub = PUBLISHED["pruning"][f"remove_{n}"]
        assert format_ranges(g) == pub["removed"]
        assert sum(b.n_tokens for b in job.batches) == pub["calibration"]["tokens"]
        row = next(r for r in pub["rows"] if r["method"] == "scale")
        assert fit_scale(st).scale == row["operators"][0]["scale"]


def test_toy_build_json_matches_shipped(pair) -> None:
    record = json.loads((pair["dirs"][0].parent / "toy_build.json").read_text())
    assert record["seed"] == 0
    assert record["crc"]["post"]["mean"]["H_norm"] < record["crc"]["base"]["mean"]["H_norm"]


TINY = BuildSettings(
    pretrain_chars=100_000, pretrain_steps=3, pretrain_seq_len=32, pretrain_batch=4,
    sft_examples=50, sft_steps=3, sft_batch=4,
)  # fmt: skip


def test_build_pair_pipeline_tiny(tmp_path) -> None:
    a = build_pair(tmp_path / "a", seed=3, progress=False, settings=TINY)
    b = build_pair(tmp_path / "b", seed=3, progress=False, settings=TINY)
    for run in ("a", "b"):
        out = tmp_path / run
        assert sorted(p.name for p in out.iterdir()) == ["base", "post", "toy_build.json"]
        assert (out / "post" / "model.safetensors.index.json").is_file()
    assert a["base_loss_final"] == b["base_loss_final"]  # reproducible from the seed
    assert a["crc"] == b["crc"]
    for name in ("base", "post"):
        for shard in (tmp_path / "a" / name).glob("*.safetensors"):
            assert shard.read_bytes() == (tmp_path / "b" / name / shard.name).read_bytes()
    with pytest.raises(OutputError):
        build_pair(tmp_path / "a", seed=3, progress=False, settings=TINY)


def test_toy_paths_missing(monkeypatch, tmp_path) -> None:
    import layergraft.toy.build as build

    monkeypatch.setattr(build.resources, "files", lambda _pkg: tmp_path)
    with pytest.raises(InputError, match="toy build"):
        toy_paths()


def test_cli_toy_path_and_inspect(capsys) -> None:
    """`layergraft toy path` prints base then post; `inspect --json` describes both right."""
    import json

    from layergraft.cli import main

    assert main(["toy", "path"]) == 0
    base, post = capsys.readouterr().out.split()
    for d in (base, post):
        assert main(["inspect", d, "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["family"], info["num_layers"], info["hidden_size"], info["vocab_size"]) == (
            "llama",
            8,
            128,
            104,
        )
        assert info["sharded"] and info["chat_template"] and not info["tied_embeddings"]
        assert info["dtype"] == "F32" and info["params_total"] == 1_732_736


def test_toy_path_into_a_closed_pipe_is_quiet() -> None:
    """`layergraft toy path | head -1`: a reader that leaves early gets no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "layergraft", "toy", "path"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first write: EPIPE for sure
    err = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert "Traceback" not in err and err == ""
