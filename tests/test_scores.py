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
    from layergraft.prune.calibrate import run_points

    ang = block_scores(model, ad, b, block=2, metric="angular", tokens="all")
    cos = block_scores(model, ad, b, block=2, metric="cosine", tokens="all")
    assert [r for r, _ in ang.blocks] == [(0, 2), (1, 3), (2, 4), (3, 5)]
    for (r, a), (_, c) in zip(ang.blocks, cos.blocks, strict=True):
        per_sample = []
        for batch in b:  # by hand: the cosine of every real token, then the mean of the angles
            got = run_points(model, ad, batch, [("in", r[0]), ("in", r[1])])
            keep = batch.attention_mask.bool()
            x, y = (got[("in", i)][keep].double() for i in r)
            per_sample.append(torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1, 1))
        cs = torch.cat(per_sample)
        assert a == pytest.approx(float((torch.arccos(cs) / math.pi).mean()), abs=1e-9), r
        assert c == pytest.approx(float(cs.mean()), abs=1e-9), r
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


def test_angular_is_the_mean_of_per_sample_angles_and_can_disagree_with_cosine():
    """Gromov et al.'s angular distance averages arccos per sample; the arccos of the mean
    cosine ranks exactly like the cosine metric, this does not (Jensen)."""
    import math

    from layergraft.prune.importance import angle_and_cosine_sums

    def pair(cosines):
        x = torch.zeros(len(cosines), 2, dtype=torch.float64)
        x[:, 0] = 1.0
        y = torch.tensor([[c, math.sqrt(1 - c * c)] for c in cosines], dtype=torch.float64)
        return x, y

    cx, ax, n = angle_and_cosine_sums(*pair([1.0, 0.0]))  # block X: one identical, one orthogonal
    cy, ay, _ = angle_and_cosine_sums(*pair([0.55, 0.55]))  # block Y: uniformly a little turned
    assert n == 2
    mean_cos = {"X": cx / 2, "Y": cy / 2}
    angular = {"X": ax / 2, "Y": ay / 2}
    assert angular["X"] == pytest.approx(0.25) and angular["Y"] == pytest.approx(
        math.acos(0.55) / math.pi
    )
    # cosine: higher = more removable -> Y; angular: lower = more removable -> X
    assert max(mean_cos, key=mean_cos.get) == "Y"
    assert min(angular, key=angular.get) == "X"
    # the old definition, arccos of the mean cosine, agreed with cosine (picked Y)
    old = {k: math.acos(v) / math.pi for k, v in mean_cos.items()}
    assert min(old, key=old.get) == "Y"


def test_angular_defaults_to_the_last_token(tmp_path):
    model = make_tiny("llama", num_layers=4)
    ad = adapter_for_model(model)
    g = torch.Generator().manual_seed(0)
    b = Batch(torch.randint(3, 100, (3, 12), generator=g), torch.ones(3, 12, dtype=torch.long))
    sc = block_scores(model, ad, [b], block=2, metric="angular")
    assert sc.tokens == "last" and sc.n_tokens == 3
    assert block_scores(model, ad, [b], block=2, metric="cosine").n_tokens == 36
