"""Sublayer restoration (issue 14): restore, swap, soup and recipes by part — attention, MLP,
norms — on every family, exact to the bit."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from layergraft.arch import adapter_for_model
from layergraft.checkpoint.reader import open_checkpoint
from layergraft.cli import main
from layergraft.models.load import load_model
from layergraft.slr.hybrid.restore import restore
from layergraft.slr.hybrid.restored import parse_restored
from layergraft.slr.hybrid.soup import soup, souped
from layergraft.slr.hybrid.swap import swapped_layers
from tiny import FAMILIES, LogitsProxy, make_tiny, save_tiny

PARTS = ("attn", "mlp", "norms")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    return {
        fam: (
            save_tiny(fam, root / f"{fam}-b", num_layers=4, seed=1),
            save_tiny(fam, root / f"{fam}-p", num_layers=4, seed=2),
        )  # fmt: skip
        for fam in FAMILIES
    }


def _tensors(d) -> dict[str, bytes]:
    """Tensor name -> its raw bytes in the checkpoint (the bit-exact comparison)."""
    ck = open_checkpoint(d, validate_arch=False)
    out = {}
    for name, e in ck.tensors.items():
        with open(e.file, "rb") as f:
            f.seek(e.offset)
            out[name] = f.read(e.nbytes)
    return out


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("part", PARTS)
def test_restore_takes_exactly_the_parts_tensors_of_the_range(pairs, tmp_path, fam, part):
    base, post = pairs[fam]
    out = tmp_path / "h"
    restore(base, post, "1:3", out, parts=part, progress=False)
    ad = open_checkpoint(post).adapter
    got, b, p = _tensors(out), _tensors(base), _tensors(post)
    assert got.keys() == p.keys()
    taken = 0
    for name, data in got.items():
        part_of = ad.classify(name)
        from_base = (
            part_of.section == "layer" and part_of.layer in (1, 2) and ad.layer_part(name) == part
        )
        assert data == (b[name] if from_base else p[name]), name
        taken += from_base
    assert taken > 0
    prov = json.loads((out / "layergraft.json").read_text())
    assert prov["details"]["parts"] == {"1:3": [part]}
    recipe = yaml.safe_load((out / "layergraft_recipe.yaml").read_text())
    assert recipe["layers"] == [{"range": "1:3", "parts": part}]


@pytest.mark.parametrize("fam", ["llama", "gpt2", "gemma2", "phi3"])
def test_parts_all_is_the_whole_layer_restore(pairs, tmp_path, fam):
    base, post = pairs[fam]
    restore(base, post, "1:3", tmp_path / "a", parts="all", progress=False)
    restore(base, post, "1:3", tmp_path / "b", parts="attn,mlp,norms", progress=False)
    restore(base, post, "1:3", tmp_path / "c", progress=False)
    a, b, c = (_tensors(tmp_path / x) for x in "abc")
    assert a == b == c
    recipe = yaml.safe_load((tmp_path / "a" / "layergraft_recipe.yaml").read_text())
    assert recipe["layers"] == "1:3"


def test_recipe_gives_each_range_its_own_parts(pairs, tmp_path):
    base, post = pairs["qwen3"]
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"operation": "restore", "base": str(base), "post": str(post),
                                 "layers": [{"range": "0:1", "parts": "attn,norms"}, "2:4"]}))  # fmt: skip
    assert main(["restore", "--recipe", str(r), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    ad = open_checkpoint(post).adapter
    got, b, p = _tensors(tmp_path / "o"), _tensors(base), _tensors(post)
    for name, data in got.items():
        c = ad.classify(name)
        want_base = c.section == "layer" and (
            c.layer in (2, 3) or (c.layer == 0 and ad.layer_part(name) in ("attn", "norms"))
        )
        assert data == (b[name] if want_base else p[name]), name
    # the saved recipe replays to the same model
    again = tmp_path / "again"
    saved = tmp_path / "o" / "layergraft_recipe.yaml"
    assert main(["restore", "--recipe", str(saved), "--out", str(again), "--quiet"]) == 0
    assert _tensors(again) == got
    assert parse_restored([{"range": "0:1", "parts": "mlp"}], "attn")[0].parts == ("mlp",)


@pytest.mark.parametrize("fam", FAMILIES)
def test_swap_by_part_is_its_own_inverse_and_equals_the_restore(pairs, tmp_path, fam):
    base_dir, post_dir = pairs[fam]
    post, base = load_model(post_dir, device="cpu"), load_model(base_dir, device="cpu")
    ad = adapter_for_model(post)
    before = {k: v.clone() for k, v in post.state_dict().items()}
    ids = torch.arange(3, 11).reshape(1, -1)
    for part in PARTS:
        with torch.no_grad(), swapped_layers(post, base, [(1, 3)], parts=part):
            hybrid = post(ids).logits
            for i in (1, 2):
                for (n, p), (_, b) in zip(ad.layer_parameters(post, i, part),
                                          ad.layer_parameters(base, i, part), strict=True):  # fmt: skip
                    assert torch.equal(p, b), n
        after = post.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before), part
        out = tmp_path / part
        restore(base_dir, post_dir, "1:3", out, parts=part, progress=False)
        with torch.no_grad():
            on_disk = load_model(out, device="cpu")(ids).logits
        torch.testing.assert_close(hybrid, on_disk, rtol=1e-6, atol=1e-6)


def test_soup_by_part_blends_only_those_tensors(pairs, tmp_path):
    base, post = pairs["llama"]
    soup(base, post, 0.5, tmp_path / "s", parts="mlp", progress=False)
    ad = open_checkpoint(post).adapter
    got, p = _tensors(tmp_path / "s"), _tensors(post)
    changed = {n for n in got if got[n] != p[n]}
    assert changed and all(
        ad.classify(n).section == "layer" and ad.layer_part(n) == "mlp" for n in changed
    )
    m_post, m_base = load_model(post, device="cpu"), load_model(base, device="cpu")
    ids = torch.arange(3, 11).reshape(1, -1)
    with torch.no_grad(), souped(m_post, m_base, 0.5, parts="mlp"):
        mem = m_post(ids).logits
    with torch.no_grad():
        disk = load_model(tmp_path / "s", device="cpu")(ids).logits
    torch.testing.assert_close(mem, disk, rtol=1e-5, atol=1e-5)


def test_mergekit_cannot_express_parts_and_says_so(pairs, tmp_path, capsys):
    base, post = pairs["llama"]
    argv = ["restore", "--base", str(base), "--post", str(post), "--layers", "1:3", "--parts",
            "attn", "--out", str(tmp_path / "o"), "--export-mergekit", str(tmp_path / "m.yaml")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot express restoring only 1:3 (attn)" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert main([*argv[:7], "--parts", "bogus", "--out", str(tmp_path / "o")]) == 2
    assert "unknown layer part 'bogus'" in capsys.readouterr().err


def test_unknown_tensor_in_a_partly_restored_layer_is_named(tmp_path):
    from layergraft.checkpoint.writer import OutTensor, write_checkpoint
    from layergraft.errors import ArchitectureError

    model = make_tiny("llama", num_layers=2)
    state = dict(model.state_dict())
    state["model.layers.1.weird.weight"] = torch.ones(2)
    for name, seed in (("b", 1), ("p", 2)):
        d = tmp_path / name
        d.mkdir()
        model.config.save_pretrained(d)
        write_checkpoint(d, [OutTensor.from_torch(k, v * seed) for k, v in state.items()])
    with pytest.raises(ArchitectureError, match="weird"):
        restore(tmp_path / "b", tmp_path / "p", "1:2", tmp_path / "o", parts="attn", progress=False)
    restore(tmp_path / "b", tmp_path / "p", "1:2", tmp_path / "o2", progress=False)  # whole: fine


@pytest.mark.parametrize("fam", ["llama", "gemma2", "gpt2", "phi3", "gpt_neox"])
@pytest.mark.parametrize("part", ["attn", "mlp", "norms"])
def test_prefix_reuse_by_part_equals_the_swapped_hybrid(fam, part):
    from layergraft.slr.sweep.engines import score_start, score_start_swap

    post, base = make_tiny(fam, num_layers=4, seed=2), make_tiny(fam, num_layers=4, seed=1)
    ad = adapter_for_model(post)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0

    b = {"input_ids": ids, "attention_mask": mask}
    fast = score_start(post, base, ad, LogitsProxy(), [b], 1, (2, 3, 4), part)
    slow = score_start_swap(post, base, ad, LogitsProxy(), [b], 1, (2, 3, 4), part)
    whole = score_start(post, base, ad, LogitsProxy(), [b], 1, (2, 3, 4), "all")
    for e in (2, 3, 4):
        torch.testing.assert_close(fast[e]["logits"], slow[e]["logits"], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fast[e]["logits"], whole[e]["logits"])


def test_sweep_by_part_gives_one_selection_per_part(tmp_path):
    from layergraft.slr.proxy.crc import crc_exact
    from layergraft.slr.proxy.crc_prompts import load_crc_prompts
    from layergraft.slr.sweep.run import sweep
    from layergraft.toy import toy_paths
    from tiny import write_few_crc_prompts

    base, post = toy_paths()
    prompts = write_few_crc_prompts(tmp_path / "p.jsonl", per_category=3)
    res = sweep(
        base, post, tmp_path / "s", prompts=prompts, parts="attn,all", max_len=3, progress=False
    )
    whole = sweep(base, post, None, prompts=prompts, max_len=3, progress=False)
    assert res["parts"] == ["attn", "all"] and set(res["by_part"]) == {"attn", "all"}
    assert res["intervals"] == whole["intervals"] and res["selected"] == whole["selected"]
    assert (tmp_path / "s" / "heatmaps_attn.png").is_file()
    picks = {p: sub["selected"] for p, sub in res["by_part"].items() if sub["selected"]}
    best = max(picks.items(), key=lambda kv: kv[1]["H_norm"])
    assert res["best_overall"]["parts"] == best[0]
    # one row, checked against the hybrid made by the in-memory swap
    row = next(r for r in res["by_part"]["attn"]["intervals"] if r["interval"] == "2:4")
    mp, mb = load_model(post, device="cpu"), load_model(base, device="cpu")
    from layergraft.models.load import load_tokenizer

    with swapped_layers(mp, mb, [(2, 4)], parts="attn"):
        direct = crc_exact(mp, load_tokenizer(post), load_crc_prompts(prompts)).mean
    assert row["V"] == pytest.approx(direct["V"], abs=1e-6)
    assert row["H_norm"] == pytest.approx(direct["H_norm"], abs=1e-6)
    journal = (tmp_path / "s" / "intervals.jsonl").read_text()
    assert '"parts": "attn"' in journal
