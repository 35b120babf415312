"""lm-eval on a model in memory with the bundled offline task (kept fast with --limit).

Skipped as a whole where lm-eval is not installed (it is the optional ``layergraft[eval]``).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed (layergraft[eval])")

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


def _hand_scored(model, tok, items: list[dict]) -> tuple[float, float]:
    """acc and acc_norm scored here: each choice's log-likelihood is the float64 sum of the
    log-probabilities of the tokens of ``" " + choice`` after the context (no BOS, as lm-eval's
    HFLM encodes a causal LM's requests); acc_norm divides it by the choice's length in
    characters. Every item's best choice must win clearly, so the argmax is not a rounding."""
    hits = hits_norm = 0
    for it in items:
        ctx = tok(it["context"], add_special_tokens=False)["input_ids"]
        lls = []
        for c in it["choices"]:
            ids = tok(f"{it['context']} {c}", add_special_tokens=False)["input_ids"]
            assert ids[: len(ctx)] == ctx and len(ids) <= 128
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            lls.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(ctx), len(ids))))
        norm = [ll / len(c) for ll, c in zip(lls, it["choices"], strict=True)]
        for scores in (lls, norm):
            top = sorted(scores)
            assert top[-1] - top[-2] > 1e-4, "a near tie: pick other items"
        hits += max(range(4), key=lambda i: lls[i]) == it["label"]
        hits_norm += max(range(4), key=lambda i: norm[i]) == it["label"]
    return hits / len(items), hits_norm / len(items)


def test_lm_eval_in_memory_on_pruned_model_equals_hand_scoring(tiny_dir):
    """acc and acc_norm of a pruned (ghosted) model on 12 items, equal to the items scored by
    hand on the same model in memory (so the hooks are in both)."""
    model = make_tiny("llama", num_layers=4, seed=0)
    tok = load_tokenizer(tiny_dir)
    g = torch.Generator().manual_seed(0)
    batches = [
        Batch(torch.randint(3, 104, (4, 32), generator=g), torch.ones(4, 32, dtype=torch.long))
    ]
    p = prune_model(model, adapter_for_model(model), [(1, 2)], "ghost", batches)
    n = 12
    res = run_lm_eval(p.model, tok, "layergraft_cloze", limit=n, batch_size=6)
    r = res["results"]["layergraft_cloze"]
    assert res["n_samples"]["layergraft_cloze"]["effective"] == n
    items = [json.loads(x) for x in (TASKS_DIR / "layergraft_cloze.jsonl").read_text().splitlines()]
    acc, acc_norm = _hand_scored(p.model, tok, items[:n])
    assert (r["acc"], r["acc_norm"]) == (pytest.approx(acc), pytest.approx(acc_norm))
    assert 0 < acc < 1 or 0 < acc_norm < 1  # neither all right nor all wrong: it discriminates


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
