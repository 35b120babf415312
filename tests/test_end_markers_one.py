"""One definition of a model's end markers for ``crc`` and ``sweep`` (issue 34, class 5).

A Llama checkpoint whose files name no eos and whose chat template closes a turn with plain
text has no end marker. transformers fills in Llama's default ``eos_token_id=2`` (``</s>``)
when it loads such a model, so ``crc`` (which loads the model) used to report ``</s>`` and
V_end 0.000 while ``sweep`` (which reads the path) said "no end marker". Both must now say
what the files say; the control (the toy post as shipped) must keep its markers.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from layergraft.cli import main
from layergraft.models.load import load_with_tokenizer
from layergraft.slr.proxy.ends import EndWarning, find_end_markers
from layergraft.toy import toy_paths
from tiny import torch_threads, write_few_crc_prompts

BASE, POST = (str(p) for p in toy_paths())
# the toy's template with a newline, not <|end|>, after every message
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>' + "
    "message['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>' }}{% endif %}"
)


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    """The toy post model with its eos and end of turn removed from its files."""
    root = tmp_path_factory.mktemp("endless")
    model = root / "post"
    shutil.copytree(POST, model)
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((model / name).read_text())
        cfg.pop("eos_token_id", None)
        (model / name).write_text(json.dumps(cfg, indent=2))
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc["chat_template"] = PLAIN_TEMPLATE
    (model / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    return root, model, write_few_crc_prompts(root / "p.jsonl", per_category=2)


def _ends(source, tok):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EndWarning)
        return find_end_markers(tok, source)


def test_a_loaded_model_and_its_path_have_the_same_end_markers(endless):
    _, model, _ = endless
    with torch_threads(1):
        loaded, tok, _ = load_with_tokenizer(str(model))
    # the trap: transformers made up an eos for the loaded model
    assert loaded.generation_config.eos_token_id == 2 or loaded.config.eos_token_id == 2
    assert _ends(loaded, tok).ids == _ends(str(model), tok).ids == ()
    # the control: the shipped toy keeps </s> and <|end|> either way
    with torch_threads(1):
        toy, toy_tok, _ = load_with_tokenizer(POST)
    assert _ends(toy, toy_tok).ids == _ends(POST, toy_tok).ids
    assert set(_ends(POST, toy_tok).tokens) == {"</s>", "<|end|>"}


def test_crc_and_sweep_both_say_the_model_has_no_end_marker(endless, capsys):
    root, model, prompts = endless
    argv = ["--prompts", str(prompts), "--threads", "1"]
    assert main(["crc", str(model), *argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["v_end"]["definition"] == "unavailable"
    assert res["v_end"]["end_markers"]["ids"] == [] and res["v_end"]["end_markers"]["tokens"] == []

    out = root / "sweep"
    sweep_argv = ["sweep", "--base", BASE, "--post", str(model), "--out", str(out), *argv,
                  "--max-len", "1", "--starts", "0", "--quiet"]  # fmt: skip
    assert main(sweep_argv) == 0
    sw = json.loads((out / "results.json").read_text())
    assert sw["prompts"]["end_markers"] == res["v_end"]["end_markers"]
    assert sw["rule"]["name"] == "paper"  # the format rule needs an end marker
    capsys.readouterr()
    assert main([*sweep_argv[:6], str(root / "fmt"), *sweep_argv[7:], "--rule", "format"]) == 2
    err = capsys.readouterr().err
    assert "needs the model's end markers and this one has none" in err and err.count("\n") == 1
    assert not (root / "fmt").exists()
