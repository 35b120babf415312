"""Models placed with accelerate's ``device_map``, some layers offloaded to disk.

Why these tests: an offloaded layer holds no weights (its parameters are on the ``meta``
device; a hook loads them from an offload map at each forward). Code that reads or replaces
``param.data`` is then silently wrong: the in-memory swap used to leave the offloaded post
layers as they were, so every hybrid of a sweep on an offloaded model was scored as the post
model. Disk offload is what "a model larger than memory" means on one machine, and the same
hooks serve CPU offload on a GPU machine, so this runs here, on CPU, with a real device_map.
"""

from __future__ import annotations

import pytest
import torch

from layergraft.models.load import load_model
from layergraft.models.offload import offloaded_params
from layergraft.slr.hybrid.soup import souped
from layergraft.slr.hybrid.swap import swapped_layers
from layergraft.toy import toy_paths
from tiny import save_tiny, write_few_crc_prompts

pytest.importorskip("accelerate")


def _disk_map(n_layers: int, on_disk: set[int]) -> dict[str, str]:
    dm = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu"}
    dm.update({f"model.layers.{i}": "disk" if i in on_disk else "cpu" for i in range(n_layers)})
    dm["lm_head"] = "cpu"
    return dm


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("offload")
    post = save_tiny("llama", root / "post", num_layers=4, seed=0)
    base = save_tiny("llama", root / "base", num_layers=4, seed=1)
    return base, post


def _logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_swap_and_soup_reach_offloaded_layers(pair):
    base_dir, post_dir = pair
    dm = _disk_map(4, {1, 2})
    post_off = load_model(post_dir, device_map=dm)
    assert offloaded_params(post_off), "the device_map did not offload anything"
    post_ref, base = load_model(post_dir), load_model(base_dir)
    x = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    dense = _logits(post_ref, x)
    for ranges in ([(1, 3)], [(0, 2)], [(2, 4)], [(0, 4)]):
        with swapped_layers(post_ref, base, ranges):
            want = _logits(post_ref, x)
        with swapped_layers(post_off, base, ranges):
            got = _logits(post_off, x)
        assert not torch.equal(want, dense)  # the hybrid really differs from the post model
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # base offloaded too: its layers' values come from its own offload map
    base_off = load_model(base_dir, device_map=_disk_map(4, {0, 1}))
    with swapped_layers(post_off, base_off, [(0, 3)]), swapped_layers(post_ref, base, [(0, 3)]):
        torch.testing.assert_close(_logits(post_off, x), _logits(post_ref, x), rtol=0, atol=1e-6)
    for alpha in (0.3, 1.0):
        with souped(post_ref, base, alpha):
            want = _logits(post_ref, x)
        with souped(post_off, base_off, alpha):
            got = _logits(post_off, x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # undone exactly, also after an exception inside
    with pytest.raises(RuntimeError), swapped_layers(post_off, base, [(1, 3)]):
        raise RuntimeError("boom")
    torch.testing.assert_close(_logits(post_off, x), dense, rtol=0, atol=1e-6)
    assert all(p.device.type == "meta" for n, p in post_off.named_parameters() if ".layers.1." in n)


def test_sweep_with_offloaded_layers_equals_the_plain_sweep(tmp_path):
    from layergraft.slr.sweep.run import sweep

    base, post = toy_paths()
    prompts = write_few_crc_prompts(tmp_path / "few.jsonl", per_category=2)
    kw = dict(prompts=prompts, method="both", max_len=3, progress=False)
    plain = sweep(base, post, **kw)
    off = sweep(base, post, device_map=_disk_map(8, {2, 3, 4, 5}), **kw)
    key = ("interval", "V", "H", "H_norm")
    for a, b in zip(plain["intervals"], off["intervals"], strict=True):
        assert a["interval"] == b["interval"]
        for k in key[1:]:
            assert b[k] == pytest.approx(a[k], abs=1e-5), (a["interval"], k)
    assert off["selected"]["interval"] == plain["selected"]["interval"]
    for a, b in zip(plain["soup"]["alphas"], off["soup"]["alphas"], strict=True):
        assert b["V"] == pytest.approx(a["V"], abs=1e-5)


@pytest.mark.parametrize("remove", ["1:3", "2:3"], ids=["offloaded-removed", "offloaded-kept"])
def test_prune_with_offloaded_layers_writes_the_same_model(pair, tmp_path, remove):
    """Calibration statistics gathered through offload hooks, and the kept offloaded layers'
    real weights (not meta placeholders) in the output."""
    from safetensors.torch import load_file

    import layergraft.api as lg
    from layergraft.toy.tokenizer import save_tokenizer

    _, post_dir = pair
    save_tokenizer(post_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    kw = dict(remove=remove, recover="ghost", calib=calib, calib_tokens=512, seqlen=64)
    lg.prune(post_dir, tmp_path / "plain", **kw)
    lg.prune(post_dir, tmp_path / "off", device_map=_disk_map(4, {1, 2}), **kw)
    files = sorted(p.name for p in (tmp_path / "plain").glob("*.safetensors"))
    assert files == sorted(p.name for p in (tmp_path / "off").glob("*.safetensors"))
    for f in files:
        a, b = load_file(tmp_path / "plain" / f), load_file(tmp_path / "off" / f)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_cli_device_map_json_prune_then_ppl(pair, tmp_path):
    """``--device-map`` takes a JSON map (disk offload) on prune and ppl; the ghosted output
    then loads with a device map without transformers asking to run its shipped code; a bad
    map is one line and exit 2."""
    import json
    import subprocess
    import sys

    from layergraft.toy.tokenizer import save_tokenizer

    _, post_dir = pair
    save_tokenizer(post_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    dm = tmp_path / "map.json"
    dm.write_text(json.dumps(_disk_map(4, {1, 2})))

    def run(*argv):
        return subprocess.run(
            [sys.executable, "-m", "layergraft", *map(str, argv)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    common = ["--remove", "1:2", "--calib", calib, "--calib-tokens", "512", "--seqlen", "64"]
    r = run("prune", post_dir, *common, "--out", tmp_path / "off", "--device-map", dm, "--quiet")
    assert r.returncode == 0, r.stderr
    r = run("prune", post_dir, *common, "--out", tmp_path / "plain", "--quiet")
    assert r.returncode == 0, r.stderr
    ppl = []
    for out, m in (("off", json.dumps(_disk_map(3, {1}))), ("plain", "cpu")):
        r = run("ppl", tmp_path / out, "--device-map", m, "--seqlen", "64", "--json")
        assert r.returncode == 0, r.stderr
        assert "custom code" not in r.stderr and "Traceback" not in r.stderr
        ppl.append(json.loads(r.stdout)["ppl"])
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-5)
    # folding needs the weights in memory: an offloaded fold target is refused in one line
    fold = ["--remove", "2:3", "--recover", "replaceme", *common[2:], "--out", tmp_path / "rm"]
    r = run("prune", post_dir, *fold, "--device-map", dm, "--quiet")
    assert r.returncode == 2 and "offloaded by the device map" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "rm").exists()
    for bad, word in (("{oops", "not valid JSON"), (tmp_path / "none.json", "cannot read")):
        r = run("ppl", tmp_path / "plain", "--device-map", bad)
        assert r.returncode == 2 and word in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
