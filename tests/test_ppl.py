"""Perplexity: the chunked definition against a hand computation, sliding windows, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from layergraft.cli import main
from layergraft.evaluate.perplexity import perplexity, windows
from layergraft.toy.tokenizer import save_tokenizer
from tiny import make_tiny, save_tiny


def _hand_ppl(model, ids, seqlen):
    """exp(mean NLL) over full non-overlapping chunks, first token of each chunk unscored."""
    nll, count = 0.0, 0
    for k in range(len(ids) // seqlen):
        chunk = torch.tensor(ids[k * seqlen : (k + 1) * seqlen])
        with torch.no_grad():
            logp = torch.log_softmax(model(chunk[None]).logits[0].double(), -1)
        for t in range(1, seqlen):
            nll -= float(logp[t - 1, chunk[t]])
            count += 1
    return math.exp(nll / count), count


def test_ppl_matches_hand_computation():
    model = make_tiny("llama", num_layers=2, seed=0)
    ids = torch.randint(3, 128, (70,), generator=torch.Generator().manual_seed(0)).tolist()
    res = perplexity(model, ids, seqlen=16)
    want, count = _hand_ppl(model, ids, 16)
    assert res["tokens_scored"] == count == 4 * 15
    assert res["ppl"] == pytest.approx(want, rel=1e-5)
    assert "non-overlapping chunks of 16 tokens" in res["definition"]


def test_sliding_windows_score_each_token_once():
    w = windows(50, 16, 8)
    scored = [t for _, e, f in w for t in range(f, e)]
    assert scored == list(range(1, 50))
    assert all(e - b <= 16 for b, e, _ in w)
    model = make_tiny("llama", num_layers=2, seed=0)
    ids = torch.randint(3, 128, (50,), generator=torch.Generator().manual_seed(1)).tolist()
    res = perplexity(model, ids, seqlen=16, stride=8)
    assert res["tokens_scored"] == 49 and "sliding windows" in res["definition"]
    assert windows(10, 16) == [(0, 10, 1)]  # shorter than one chunk: one short chunk


def test_cli_ppl(tmp_path, capsys):
    d = save_tiny("qwen2", tmp_path / "m", num_layers=2, seed=1)
    save_tokenizer(d)
    data = tmp_path / "t.txt"
    data.write_text("Some held-out text, repeated. " * 10)
    assert main(["ppl", str(d), "--data", str(data), "--seqlen", "32", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    from layergraft.models.load import load_tokenizer

    n = len(load_tokenizer(d)(data.read_text())["input_ids"])
    assert res["seqlen"] == 32 and res["tokens_scored"] == (n // 32) * 31
    assert main(["ppl", str(d), "--data", str(data), "--seqlen", "32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PPL ") and "definition: token-level perplexity" in out
    assert main(["ppl", str(d), "--data", str(tmp_path / "missing.txt")]) == 2
    assert "not found" in capsys.readouterr().err
