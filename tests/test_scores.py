"""Layer/block importance scores on a constructed case, plus CLI output and plot."""

from __future__ import annotations

import json
import math

import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.cli import main
from layergraft.prune.fold import residual_writers
from layergraft.prune.importance import block_scores
from layergraft.text import Batch
from layergraft.toy.tokenizer import save_tokenizer
from tiny import make_tiny, save_tiny


def _identity_layer_model(fam: str, layer: int):
    """A model whose ``layer`` writes nothing to the residual stream: it is the identity."""
    model = make_tiny(fam, num_layers=5, seed=9)
    ad = adapter_for_model(model)
    with torch.no_grad():
        for mod, _ in residual_writers(ad, model, layer):
            mod.weight.fill_(-1.0 if "Gemma" in type(mod).__name__ else 0.0)
            if getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
    return model, ad


def _batches():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (3, 16), generator=g)
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[2, 10:] = 0
    return [Batch(ids, mask)]


@pytest.mark.parametrize("fam", ["llama", "gemma2"])
@pytest.mark.parametrize("tokens", ["all", "last"])
def test_identity_layer_scores_best(fam, tokens):
    model, ad = _identity_layer_model(fam, 2)
    b = _batches()
    ang = block_scores(model, ad, b, block=1, metric="angular", tokens=tokens)
    assert ang.best == (2, 3)
    assert dict(ang.blocks)[(2, 3)] == pytest.approx(0.0, abs=1e-3)
    bi = block_scores(model, ad, b, block=1, metric="bi", tokens=tokens)
    assert bi.per_layer[2] == pytest.approx(0.0, abs=1e-6) and bi.best == (2, 3)
    assert bi.lowest_layers(1) == [2]
    cos = block_scores(model, ad, b, block=1, metric="cosine", tokens=tokens)
    assert cos.best == (2, 3) and dict(cos.blocks)[(2, 3)] == pytest.approx(1.0, abs=1e-6)


def test_block_scores_are_consistent():
    model, ad = _identity_layer_model("qwen2", 1)
    b = _batches()
    ang = block_scores(model, ad, b, block=2, metric="angular")
    cos = block_scores(model, ad, b, block=2, metric="cosine")
    assert [r for r, _ in ang.blocks] == [(0, 2), (1, 3), (2, 4), (3, 5)]
    for (r, a), (_, c) in zip(ang.blocks, cos.blocks, strict=True):
        assert a == pytest.approx(math.acos(min(1.0, c)) / math.pi, abs=1e-9), r
    bi1 = block_scores(model, ad, b, block=1, metric="bi")
    bi2 = block_scores(model, ad, b, block=2, metric="bi")
    assert dict(bi2.blocks)[(1, 3)] == pytest.approx(bi1.per_layer[1] + bi1.per_layer[2])
    assert bi2.n_tokens == 3 * 16 - 6


def test_cli_scores_json_table_plot(tmp_path, capsys):
    d = save_tiny("llama", tmp_path / "m", num_layers=4, seed=1)
    save_tokenizer(d)
    data = tmp_path / "t.txt"
    data.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    png = tmp_path / "s.png"
    args = ["scores", str(d), "--data", str(data), "--seqlen", "64", "--block", "2"]
    assert main([*args, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "best block to remove:" in out and "0:2" in out and png.stat().st_size > 1000
    assert main([*args, "--json", "--metric", "bi"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["metric"] == "bi" and len(res["per_layer"]) == 4 and len(res["blocks"]) == 3
    assert main(["scores", str(d), "--data", str(data), "--block", "4"]) == 2
    assert "--block 4 must be between 1 and 3" in capsys.readouterr().err
