"""One definition of a model's end markers for ``crc``, ``sweep`` and generation (issue 34, class 5).

A Llama checkpoint whose files name no eos and whose chat template closes a turn with plain
text has no end marker. transformers fills in Llama's default ``eos_token_id=2`` (``</s>``)
when it loads such a model, so ``crc`` (which loads the model) used to report ``</s>`` and
V_end 0.000 while ``sweep`` (which reads the path) said "no end marker". Both must now say
what the files say; the control (the toy post as shipped) must keep its markers.

Generation (``gen``, ``compare``, a sweep's validation) stops on the same ids: the union of the
generation config's eos, the tokenizer's eos and the chat template's end of turn
(:mod:`layergraft.gen.ends`). It used to stop on the first two only, so a reply that ended
with a template end of turn missing from the generation config ran on to the token limit,
while V_end counted it as ended.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from layergraft.cli import main
from layergraft.gen.ends import stop_token_ids
from layergraft.gen.engine import run_generation
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.tasks import load_task
from layergraft.models.load import load_with_tokenizer
from layergraft.slr.proxy.crc import crc
from layergraft.slr.proxy.ends import EndWarning, find_end_markers
from layergraft.slr.sweep.engines import Unit
from layergraft.slr.sweep.validate import VALIDATION_SET
from layergraft.slr.sweep.worker import SweepWorker
from layergraft.toy import toy_paths
from layergraft.toy.tokenizer import build_tokenizer
from tiny import make_tiny, save_tiny, torch_threads, write_few_crc_prompts

BASE, POST = (str(p) for p in toy_paths())
# the toy's template with a newline, not <|end|>, after every message
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>' + "
    "message['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>' }}{% endif %}"
)


def _without_eos(root, keep_tokenizer_eos=False):
    """The toy post model with its eos (generation config, config and, unless kept, the
    tokenizer's) and its end of turn removed from its files."""
    model = root / "post"
    shutil.copytree(POST, model)
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((model / name).read_text())
        cfg.pop("eos_token_id", None)
        (model / name).write_text(json.dumps(cfg, indent=2))
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc["chat_template"] = PLAIN_TEMPLATE
    if not keep_tokenizer_eos:
        tc.pop("eos_token")
    (model / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    return root, model, write_few_crc_prompts(root / "p.jsonl", per_category=2)


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    """No end marker anywhere in the files: the case of issue 34."""
    return _without_eos(tmp_path_factory.mktemp("endless"))


@pytest.fixture(scope="module")
def tokenizer_eos_only(tmp_path_factory):
    """The same, but the tokenizer still names ``</s>`` its eos."""
    return _without_eos(tmp_path_factory.mktemp("tok-eos"), keep_tokenizer_eos=True)


@pytest.fixture(scope="module")
def turn_end(tmp_path_factory):
    """A tiny Llama pair on disk whose generation config's eos is ``</s>`` only, with the toy
    tokenizer, whose chat template ends a turn with ``<|end|>``: an end of turn that is not in
    the eos list."""
    root = tmp_path_factory.mktemp("turn-end")
    base = save_tiny("llama", root / "base", num_layers=2, seed=0)
    post = save_tiny("llama", root / "post", num_layers=2, seed=1)
    build_tokenizer().save_pretrained(post)
    return root, base, post, write_few_crc_prompts(root / "p.jsonl", per_category=2)


def _force(model, token):
    """Make ``model`` emit ``token`` at every step: an lm_head of zeros with a one-hot bias."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[token] = 10.0
    model.lm_head = head
    return model


def _spy_stops(model):
    """The eos ids each ``model.generate`` call is given (filled as generation runs)."""
    seen = []
    generate = model.generate

    def spy(*args, **kwargs):
        seen.append(sorted(kwargs["generation_config"].eos_token_id))
        return generate(*args, **kwargs)

    model.generate = spy
    return seen


def _validate(model, tok, max_new_tokens=6):
    """The post model's validation generations, as a sweep worker makes them."""
    worker = SweepWorker(model, model, tok, None)
    worker.validation = {"task": VALIDATION_SET, "n": 1, "max_new_tokens": max_new_tokens,
                         "seed": 0, "batch_size": 16}  # fmt: skip
    with torch_threads(1):
        return worker.run(Unit("validate", name="post"))[0]["records"]


def _crc_and_sweep_ends(root, base, post, prompts, capsys):
    """The end markers ``crc`` and ``sweep`` report for ``post``."""
    argv = ["--prompts", str(prompts), "--threads", "1"]
    assert main(["crc", str(post), *argv, "--json"]) == 0
    crc_ends = json.loads(capsys.readouterr().out)["v_end"]["end_markers"]
    out = root / "agree"
    assert main(["sweep", "--base", str(base), "--post", str(post), "--out", str(out), *argv,
                 "--max-len", "1", "--starts", "0", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    return crc_ends, json.loads((out / "results.json").read_text())["prompts"]["end_markers"]


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


def test_generation_stops_where_crc_and_sweep_say_a_reply_ends(turn_end, capsys):
    root, base, post, prompts = turn_end
    tok = build_tokenizer()
    # the reference, read by hand: the generation config's eos, the tokenizer's, and the
    # token the template writes after an assistant message
    gen_eos = json.loads((post / "generation_config.json").read_text())["eos_token_id"]
    end_of_turn = tok.convert_tokens_to_ids("<|end|>")
    assert gen_eos == 2 and end_of_turn == 7  # the case: the end of turn is not an eos
    assert tok.apply_chat_template(
        [{"role": "assistant", "content": "k"}], tokenize=False
    ).endswith("k<|end|>")
    want = sorted({gen_eos, tok.eos_token_id, end_of_turn})

    crc_ends, sweep_ends = _crc_and_sweep_ends(root, base, post, prompts, capsys)
    assert sorted(crc_ends["ids"]) == want and crc_ends["from"]["chat_template"] == [7]
    assert sweep_ends == crc_ends
    # generation, as validation runs it: the same ids, and a reply that is the end of turn
    # ends there (it ran to the token limit when only the eos ids stopped it)
    with torch_threads(1):
        model, post_tok, _ = load_with_tokenizer(str(post))
    stops = _spy_stops(_force(model, end_of_turn))
    records = _validate(model, post_tok)
    assert stops and all(s == want for s in stops)
    assert all(r["finished"] and r["num_tokens"] == 1 and r["text"] == "" for r in records)
    # a model built in memory (no checkpoint directory) answers from its generation config
    mem = make_tiny("llama", num_layers=2, seed=1)
    assert sorted(stop_token_ids(mem, tok)) == want
    ends = crc(mem, tokenizer=tok, prompts=prompts)["v_end"]["end_markers"]
    assert ends["ids"] == stop_token_ids(mem, tok)


@pytest.mark.parametrize("kept", [False, True], ids=["no-eos", "tokenizer-eos"])
def test_crc_sweep_and_validation_agree_without_a_generation_eos(
    kept, endless, tokenizer_eos_only, capsys
):
    """Issue 34's model (no eos, no end of turn): ``crc`` and ``sweep`` say it has no end
    marker and validation's replies run to the token limit, even through ``</s>``, the eos
    transformers makes up for a loaded Llama. With the tokenizer's eos kept, all three end
    at ``</s>``."""
    root, model, prompts = tokenizer_eos_only if kept else endless
    want = [2] if kept else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EndWarning)
        crc_ends, sweep_ends = _crc_and_sweep_ends(root, BASE, model, prompts, capsys)
        assert crc_ends["ids"] == want and crc_ends["from"]["tokenizer"] == want
        assert sweep_ends == crc_ends
        with torch_threads(1):
            loaded, tok, _ = load_with_tokenizer(str(model))
        assert loaded.config.eos_token_id == 2  # the trap
        stops = _spy_stops(_force(loaded, 2))
        records = _validate(loaded, tok, max_new_tokens=5)
    assert stops and all(s == want for s in stops)
    if kept:
        assert all(r["finished"] and r["num_tokens"] == 1 for r in records)
    else:
        assert not any(r["finished"] for r in records)
        assert all(r["num_tokens"] == 5 for r in records)


def test_the_vllm_backend_stops_on_the_same_ids(turn_end):
    """vLLM is given the model's path: the markers come from its files (it was given only the
    tokenizer's eos before)."""
    _, _, post, _ = turn_end
    seen = []

    class Engine:  # stands in for VllmEngine: records the stop ids it is given
        def generate(self, tokenizer, jobs, settings, eos):
            seen.append(sorted(eos))
            return [("", 1, True) for _ in jobs]

    tok = build_tokenizer()
    run_generation(str(post), tok, load_task(VALIDATION_SET)[:2], n=1, backend="vllm",
                   settings=SamplingSettings(max_new_tokens=4), vllm_engine=Engine(),
                   progress=False)  # fmt: skip
    assert seen == [[2, 7]]
