"""Selective Layer Restoration on disk and in memory, on tiny random models of real families."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from layergraft.api import restore
from layergraft.checkpoint.reader import open_checkpoint
from layergraft.cli import main
from layergraft.errors import MismatchError, OutputError, RangeError
from layergraft.slr.hybrid.swap import swapped_layers
from tiny import make_tiny, save_tiny

FAMILIES = ["llama", "qwen2", "gemma2"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A base/post pair per family: same config, different random weights (seeds)."""
    root = tmp_path_factory.mktemp("pairs")
    out = {}
    for fam in FAMILIES:
        # sharded post (tiny shard size) exercises the index path; unsharded base
        base = save_tiny(fam, root / f"{fam}-base", num_layers=4, seed=1)
        post = save_tiny(fam, root / f"{fam}-post", num_layers=4, seed=2, max_shard_size="20KB")
        out[fam] = (base, post)
    return out


def _all_tensors(path):
    ck = open_checkpoint(path)
    out = {}
    for name, e in ck.tensors.items():
        with safe_open(str(e.file), framework="pt") as f:
            out[name] = f.get_tensor(name)
    return out


def _tree_digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("fam", FAMILIES)
def test_restore_bit_identical_and_loads(pairs, tmp_path, fam):
    base, post = pairs[fam]
    before = (_tree_digest(base), _tree_digest(post))
    out = tmp_path / "hybrid"
    prov = restore(base, post, "1:3", out, progress=False)
    assert before == (_tree_digest(base), _tree_digest(post))  # inputs untouched
    tb, tp, th = _all_tensors(base), _all_tensors(post), _all_tensors(out)
    ad = open_checkpoint(post).adapter
    assert th.keys() == tp.keys()
    for name, t in th.items():
        part = ad.classify(name)
        src = tb if part.section == "layer" and part.layer in (1, 2) else tp
        assert t.dtype == src[name].dtype and torch.equal(t, src[name]), name
    # sharded like the post model, and provenance / recipe / card written
    assert (out / "model.safetensors.index.json").exists()
    meta = json.loads((out / "layergraft.json").read_text())
    assert meta["details"]["layers"] == "1:3" and meta["details"]["layers_from_base"] == [1, 2]
    for f in meta["outputs"]["weight_files"]:
        assert hashlib.sha256((out / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    assert set(meta["inputs"]) == {"base", "post"}
    recipe = yaml.safe_load((out / "layergraft_recipe.yaml").read_text())
    assert recipe["layers"] == "1:3" and recipe["operation"] == "restore"
    assert "1:3" in (out / "README.md").read_text()
    assert prov["details"]["tensors_from"]["base"] > 0

    # plain transformers loads it, and its logits equal the in-memory swap's
    hybrid = AutoModelForCausalLM.from_pretrained(out).eval()
    mb = AutoModelForCausalLM.from_pretrained(base).eval()
    mp = AutoModelForCausalLM.from_pretrained(post).eval()
    ids = torch.randint(
        0, hybrid.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad(), swapped_layers(mp, mb, [(1, 3)]):
        swapped = mp(ids).logits
    with torch.no_grad():
        saved = hybrid(ids).logits
        plain_post = mp(ids).logits
    assert torch.equal(saved, swapped)
    assert not torch.allclose(saved, plain_post)


@pytest.mark.parametrize("fam", FAMILIES)
def test_swap_is_undone_exactly_even_after_exception(fam):
    post, base = make_tiny(fam, seed=2), make_tiny(fam, seed=1)
    before = {k: v.clone() for k, v in post.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in post.state_dict().items()}
    with pytest.raises(ZeroDivisionError), swapped_layers(post, base, [(0, 1), (2, 4)]):
        assert torch.equal(
            post.state_dict()[next(k for k in before if ".0." in k)],
            base.state_dict()[next(k for k in before if ".0." in k)],
        )
        raise ZeroDivisionError
    after = post.state_dict()
    assert all(torch.equal(after[k], before[k]) and after[k].data_ptr() == ptrs[k] for k in before)
    with swapped_layers(post, base, [(1, 2)]), swapped_layers(post, base, [(1, 2)]):
        pass  # nested swap of the same layer is also undone
    assert all(torch.equal(post.state_dict()[k], before[k]) for k in before)


def test_restore_refusals_write_nothing(pairs, tmp_path):
    base, post = pairs["llama"]
    q_base, _ = pairs["qwen2"]
    out = tmp_path / "o"
    for layers in ["5:2", "3:3", "-1:2", "a:b", "0:99", "0:2,1:3", ""]:
        with pytest.raises(RangeError):
            restore(base, post, layers, out, progress=False)
    with pytest.raises(MismatchError):
        restore(q_base, post, "0:1", out, progress=False)
    with pytest.raises(OutputError):
        restore(base, post, "0:1", post / "inside", progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    with pytest.raises(OutputError, match="--force"):
        restore(base, post, "0:1", out, progress=False)


def test_restore_layer_count_mismatch(tmp_path):
    a = save_tiny("llama", tmp_path / "a", num_layers=4, seed=1)
    b = save_tiny("llama", tmp_path / "b", num_layers=3, seed=1)
    with pytest.raises(MismatchError, match="layers"):
        restore(a, b, "0:1", tmp_path / "o", progress=False)


def test_restore_cli_recipe_and_mergekit(pairs, tmp_path, capsys):
    base, post = pairs["llama"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"operation: restore\nbase: {base}\npost: {post}\nlayers: 0:2,3:4\n")
    mk = tmp_path / "mk.yaml"
    rc = main(
        [
            "restore",
            "--recipe",
            str(recipe),
            "--out",
            str(tmp_path / "h"),
            "--export-mergekit",
            str(mk),
            "--quiet",
        ]
    )
    assert rc == 0
    meta = json.loads((tmp_path / "h" / "layergraft.json").read_text())
    assert meta["details"]["layers_from_base"] == [0, 1, 3]
    m = yaml.safe_load(mk.read_text())
    assert [s["sources"][0]["layer_range"] for s in m["slices"]] == [[0, 2], [2, 3], [3, 4]]
    assert m["merge_method"] == "passthrough"
    # misspelled recipe key: one line, exit 2, suggestion
    recipe.write_text(f"base: {base}\npost: {post}\nlayers: 0:2\nembed_form: base\n")
    rc = main(["restore", "--recipe", str(recipe), "--out", str(tmp_path / "h2"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "embed_from" in err and err.count("\n") == 1
    assert not (tmp_path / "h2").exists()


def test_tied_embeddings_stay_tied(tmp_path):
    base = save_tiny("gemma", tmp_path / "b", seed=1)
    post = save_tiny("gemma", tmp_path / "p", seed=2)
    ck = open_checkpoint(post)
    assert ck.adapter.tied_embeddings
    with pytest.raises(Exception, match="ties"):
        restore(base, post, "0:1", tmp_path / "o", embed_from="base", progress=False)
    restore(base, post, "0:1", tmp_path / "o", embed_from="base", head_from="base", progress=False)
    out = open_checkpoint(tmp_path / "o")
    assert out.tensors.keys() == ck.tensors.keys()
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()


def test_soup_on_disk_and_in_memory(pairs, tmp_path):
    from layergraft.api import soup
    from layergraft.slr.hybrid.soup import souped

    base, post = pairs["qwen2"]
    tb, tp = _all_tensors(base), _all_tensors(post)
    soup(base, post, 0.25, tmp_path / "s", progress=False)
    ts = _all_tensors(tmp_path / "s")
    for name, t in ts.items():
        expect = (0.75 * tp[name].float() + 0.25 * tb[name].float()).to(tp[name].dtype)
        torch.testing.assert_close(t, expect, rtol=1e-6, atol=1e-7)
    # alpha 0 and 1 are exact copies
    soup(base, post, 1.0, tmp_path / "s1", progress=False)
    assert all(torch.equal(t, tb[n]) for n, t in _all_tensors(tmp_path / "s1").items())
    # the in-memory soup gives the same logits and is undone exactly
    mb = AutoModelForCausalLM.from_pretrained(base).eval()
    mp = AutoModelForCausalLM.from_pretrained(post).eval()
    ms = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    before = {k: v.clone() for k, v in mp.state_dict().items()}
    ids = torch.arange(2, 12).reshape(1, 10)
    with torch.no_grad(), souped(mp, mb, 0.25):
        torch.testing.assert_close(mp(ids).logits, ms(ids).logits, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(mp.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(Exception, match="alpha"):
        soup(base, post, 1.5, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
