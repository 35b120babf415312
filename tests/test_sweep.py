"""The SLR sweep end to end on the shipped toy pair (small prompt subset, so it stays fast)."""

from __future__ import annotations

import json
import math

import pytest

from layergraft.cli import main
from layergraft.errors import InputError, OutputError
from layergraft.models.load import load_model, load_with_tokenizer
from layergraft.slr.hybrid.swap import swapped_layers
from layergraft.slr.proxy import crc as crcmod
from layergraft.slr.proxy.crc import crc
from layergraft.slr.sweep.run import sweep
from layergraft.toy import toy_paths
from tiny import write_few_crc_prompts


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_few_crc_prompts(tmp_path_factory.mktemp("crc") / "few.jsonl")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, prompts_file):
    base, post = toy_paths()
    out = tmp_path_factory.mktemp("sweep") / "res"
    best = out.parent / "best"
    res = sweep(
        base, post, out, prompts=prompts_file, method="both", restore_best=best, progress=False
    )
    return res, out, best


def test_results_files_and_rule(swept):
    res, out, _ = swept
    assert {p.name for p in out.iterdir()} >= {
        "results.json",
        "results.csv",
        "heatmaps.png",
        "pareto.png",
        "summary.md",
    }
    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(res))
    assert len(data["intervals"]) == 36  # every [s, e) of 8 layers
    post = data["references"]["post"]
    thr = data["selection"]["validity_threshold"]
    assert thr == pytest.approx(0.9 * post["V"])
    # each rule's choice, recomputed here from the rows: the most diverse eligible interval
    paper = [r for r in data["intervals"] if r["V"] >= 0.9 * post["V"]]
    fmt = [r for r in paper if r["V_end"] >= 0.9 * post["V_end"]]
    for name, pool in (("paper", paper), ("format", fmt)):
        best = max(pool, key=lambda r: r["H_norm"])
        assert data["selections"][name]["interval"] == best["interval"]
    assert data["rule"]["name"] == "format"  # the default where the model has end markers
    assert data["selected"]["interval"] == data["selections"]["format"]["interval"]
    assert data["selection"]["end_threshold"] == pytest.approx(0.9 * post["V_end"])
    # the pair shows why the rule exists: the paper rule's pick loses end of turn here
    assert data["selections"]["paper"]["interval"] != data["selections"]["format"]["interval"]
    assert len(data["soup"]["alphas"]) == 21 and data["soup"]["alphas"][0]["alpha"] == 0.0
    # alpha 0 is the post model itself
    assert data["soup"]["alphas"][0]["V"] == pytest.approx(
        data["references"]["post"]["V"], abs=1e-9
    )
    # every Pareto point is an interval and none dominates another
    pts = {r["interval"]: (r["V"], r["H_norm"]) for r in data["intervals"]}
    for a in data["pareto"]:
        assert not any(
            pts[b][0] >= pts[a][0] and pts[b][1] >= pts[a][1] and pts[b] != pts[a] for b in pts
        )


def test_fast_engine_matches_swapped_model(swept, prompts_file):
    res, _, _ = swept
    base, post = toy_paths()
    mp, tok, _ = load_with_tokenizer(post, device="cpu")
    mb = load_model(base, device="cpu")
    items = crcmod.load_crc_prompts(prompts_file)
    row = {r["interval"]: r for r in res["intervals"]}
    for s, e in ((0, 8), (3, 5), (7, 8)):
        with swapped_layers(mp, mb, [(s, e)]):
            direct = crcmod.crc_exact(mp, tok, items).mean
        assert direct["V"] == pytest.approx(row[f"{s}:{e}"]["V"], abs=1e-5)
        assert direct["H"] == pytest.approx(row[f"{s}:{e}"]["H"], abs=1e-5)


def test_restore_best_is_the_chosen_hybrid(swept, prompts_file):
    """--restore-best writes the active rule's best over every family swept (here the
    intervals and the whole-model soups), and the model on disk scores what the sweep said."""
    res, _, best = swept
    chosen = res["best"]["format"]
    pool = res["candidates"]["format"]
    assert chosen["H_norm"] == max(rows[0]["H_norm"] for rows in pool.values() if rows)
    model, tok, _ = load_with_tokenizer(best, device="cpu")
    meta = json.loads((best / "layergraft.json").read_text())
    if chosen["family"] == "soup":
        assert meta["operation"] == "soup" and meta["details"]["alpha"] == chosen["alpha"]
    else:
        assert meta["details"]["layers"] == chosen["interval"]
    got = crcmod.crc_exact(model, tok, crcmod.load_crc_prompts(prompts_file)).mean
    assert got["V"] == pytest.approx(chosen["V"], abs=1e-5)
    assert got["V_end"] == pytest.approx(chosen["V_end"], abs=1e-5)


def test_crc_cli_and_determinism(prompts_file, capsys):
    _, post = toy_paths()
    assert main(["crc", str(post), "--prompts", str(prompts_file), "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert set(a["by_category"]) == {"letters", "digits"} and 0 < a["mean"]["V"] <= 1
    s1 = crc(post, prompts=prompts_file, estimator="sample", samples=8, seed=3)
    s2 = crc(post, prompts=prompts_file, estimator="sample", samples=8, seed=3)
    assert s1["mean"] == s2["mean"]
    # the sampled estimator agrees with the exact one on a collapsed model, roughly
    assert abs(s1["mean"]["V"] - a["mean"]["V"]) < 0.35


def test_parse_answer():
    from layergraft.slr.proxy.crc_sampled import parse_answer

    assert parse_answer(" k", ["k", "q"]) == "k"
    assert parse_answer("k.", ["k", "q"]) == "k"
    assert parse_answer("Sure: q", ["k", "q"]) == "q"
    assert parse_answer("kq", ["k", "q"]) is None
    assert parse_answer("", ["k"]) is None


def test_sweep_bad_input(tmp_path, capsys):
    base, post = toy_paths()
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputError):
        sweep(base, post, tmp_path / "exists", progress=False)
    with pytest.raises(InputError):
        sweep(base, post, None, method="nope", progress=False)
    assert (
        main(
            ["sweep", "--base", str(base), "--post", str(post), "--min-len", "3", "--max-len", "2"]
        )
        == 2
    )
    assert main(["crc", str(post), "--prompts", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


def test_ppl_proxy_sweep(tmp_path, capsys):
    import torch

    from layergraft.slr.proxy.ppl import nll_of, ppl_batches
    from layergraft.slr.sweep.run import sweep_ppl

    base, post = toy_paths()
    text = tmp_path / "t.txt"
    text.write_text(
        "The Congress shall have power to lay and collect taxes, duties, imposts and excises. " * 30
    )
    res = sweep_ppl(base, post, text, tmp_path / "out", seqlen=64, max_tokens=512, progress=False)
    assert len(res["intervals"]) == 36 and (tmp_path / "out" / "heatmap.png").is_file()
    assert res["selected"]["ppl"] == min(r["ppl"] for r in res["intervals"])
    # the fast engine's PPL of an interval equals the swapped model's full-forward PPL
    mp, tok, _ = load_with_tokenizer(post, device="cpu")
    mb = load_model(base, device="cpu")
    nll, n = 0.0, 0
    with torch.no_grad(), swapped_layers(mp, mb, [(2, 5)]):
        for b in ppl_batches(tok, text, seqlen=64, max_tokens=512):
            s, k = nll_of(b, mp(**b).logits)
            nll, n = nll + s, n + k
    direct = math.exp(nll / n)
    row = next(r for r in res["intervals"] if r["interval"] == "2:5")
    assert direct == pytest.approx(row["ppl"], rel=1e-5)
    assert main(["sweep", "--base", str(base), "--post", str(post), "--proxy", "ppl"]) == 2
    assert "--data" in capsys.readouterr().err
