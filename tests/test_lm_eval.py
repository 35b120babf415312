"""lm-eval on a model in memory with the bundled offline task (kept fast with --limit)."""

from __future__ import annotations

import json

import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.cli import main
from layergraft.errors import InputError
from layergraft.evaluate.harness import TASKS_DIR, build_cloze_items, local_tasks, run_lm_eval
from layergraft.models.load import load_tokenizer
from layergraft.prune.model import prune_model
from layergraft.text import DEFAULT_HELDOUT, Batch
from layergraft.toy.tokenizer import save_tokenizer
from tiny import make_tiny, save_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = save_tiny("llama", tmp_path_factory.mktemp("lme") / "m", num_layers=4, seed=0)
    save_tokenizer(d)
    return d


def test_bundled_items_are_honest():
    """The shipped JSONL is what the builder makes from the held-out text, and every item's
    labelled choice really is the word that follows its context there."""
    lines = (TASKS_DIR / "layergraft_cloze.jsonl").read_text().splitlines()
    items = [json.loads(x) for x in lines]
    text = DEFAULT_HELDOUT.read_text()
    assert items == build_cloze_items(text, n=40, seed=0)
    flat = " ".join(text.split())
    for it in items:
        assert len(set(it["choices"])) == 4
        assert f"{it['context']} {it['choices'][it['label']]}" in flat
    assert local_tasks() == ["layergraft_cloze"]


def test_lm_eval_in_memory_on_pruned_model(tiny_dir):
    model = make_tiny("llama", num_layers=4, seed=0)
    tok = load_tokenizer(tiny_dir)
    g = torch.Generator().manual_seed(0)
    batches = [
        Batch(torch.randint(3, 104, (4, 32), generator=g), torch.ones(4, 32, dtype=torch.long))
    ]
    p = prune_model(model, adapter_for_model(model), [(1, 2)], "ghost", batches)
    res = run_lm_eval(p.model, tok, "layergraft_cloze", limit=6, batch_size=6)
    r = res["results"]["layergraft_cloze"]
    assert 0.0 <= r["acc"] <= 1.0 and res["n_samples"]["layergraft_cloze"]["effective"] == 6


def test_cli_lm_eval_json(tiny_dir, capsys):
    assert (
        main(["lm-eval", str(tiny_dir), "--tasks", "layergraft_cloze", "--limit", "4", "--json"])
        == 0
    )
    out = capsys.readouterr().out
    res = json.loads(out[out.index("\n{") + 1 :] if not out.startswith("{") else out)
    assert set(res["results"]["layergraft_cloze"]) >= {"acc", "acc_norm"}
    with pytest.raises(InputError, match="no lm-eval tasks"):
        run_lm_eval(make_tiny("llama", num_layers=2), load_tokenizer(tiny_dir), " , ")


@pytest.mark.slow  # an unknown name makes lm-eval index its thousands of built-in tasks
def test_cli_lm_eval_unknown_task(tiny_dir, capsys):
    assert main(["lm-eval", str(tiny_dir), "--tasks", "no_such_task"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown lm-eval task 'no_such_task'" in err[-1]
