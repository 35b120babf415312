"""Layer pruning with recovery: fits against independent solutions, exact cases, saved models
reloading with identical logits, renumbering vs the KV cache, and CLI refusals."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from layergraft.arch import adapter_for_model
from layergraft.cli import main
from layergraft.errors import ArchitectureError, InputError, RangeError
from layergraft.models.load import load_model, load_tokenizer
from layergraft.prune import recover as R
from layergraft.prune.calibrate import GapStats, collect_gap_stats, run_points
from layergraft.prune.cut import parse_removal
from layergraft.prune.fold import residual_writers
from layergraft.prune.model import prune_model
from layergraft.prune.pipeline import prune
from layergraft.text import Batch
from layergraft.toy.tokenizer import save_tokenizer
from tiny import make_tiny, save_tiny

FAMILIES = ["llama", "qwen2", "gemma2"]


def _batches(seed: int = 0, n: int = 3, rows: int = 4, width: int = 24) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 128, (rows, width), generator=g)
        mask = torch.ones(rows, width, dtype=torch.long)
        mask[-1, width // 2 :] = 0  # one padded row per batch
        out.append(Batch(ids, mask))
    return out


def _stacked(model, batches, s, e):
    ad = adapter_for_model(model)
    xs, ds = [], []
    for b in batches:
        got = run_points(model, ad, b, [("in", s), ("in", e)])
        m = b.attention_mask.bool()
        xs.append(got[("in", s)][m].double())
        ds.append(got[("in", e)][m].double() - xs[-1])
    return torch.cat(xs).numpy(), torch.cat(ds).numpy()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-models")
    out = {}
    for fam in FAMILIES:
        d = save_tiny(fam, root / fam, num_layers=6, seed=4)
        save_tokenizer(d)
        out[fam] = d
    return out


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    from layergraft.text import DEFAULT_CALIB

    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(DEFAULT_CALIB.read_text()[:4000])
    return p


# ---- the fit against an independent solution -------------------------------------------------
@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("bias", [False, True])
def test_ghost_equals_numpy_lstsq(fam, bias):
    model = make_tiny(fam, num_layers=5, seed=2)
    batches = _batches()
    s, e, damp = 1, 3, 1e-3
    st = collect_gap_stats(model, adapter_for_model(model), batches, [(s, e)])[0]
    op = R.fit_ghost(st, damp=damp, bias=bias)
    X, D = _stacked(model, batches, s, e)
    n, d = X.shape
    lam = damp * np.trace(X.T @ X) / d
    # ridge as ordinary least squares on rows augmented with sqrt(lam)·I (bias not damped)
    A = np.hstack([X, np.ones((n, 1))]) if bias else X
    reg = np.sqrt(lam) * np.eye(d, A.shape[1])
    sol = np.linalg.lstsq(np.vstack([A, reg]), np.vstack([D, np.zeros((d, d))]), rcond=None)[0]
    np.testing.assert_allclose(op.delta.numpy(), sol[:d], rtol=1e-6, atol=1e-8)
    if bias:
        np.testing.assert_allclose(op.bias.numpy(), sol[d], rtol=1e-6, atol=1e-8)


def test_ghost_recovers_an_exact_linear_map():
    """Hidden states built so that Δ = X·A + b exactly: the fit returns A and b."""
    g = torch.Generator().manual_seed(0)
    d = 16
    A = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3
    b = torch.randn(d, generator=g, dtype=torch.float64)
    st = GapStats(2, 4)
    for _ in range(3):
        x = torch.randn(2, 40, d, generator=g, dtype=torch.float64)
        mask = torch.ones(2, 40, dtype=torch.long)
        mask[1, 30:] = 0
        st.update(x, x + x @ A + b, mask)
    op = R.fit_ghost(st, damp=0.0, bias=True)
    torch.testing.assert_close(op.delta, A, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(op.bias, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fam", FAMILIES)
def test_identity_block_is_recovered_exactly(fam):
    """Zeroed attention output and MLP output make layers 2,3 the identity: after ghost
    recovery the pruned model reproduces the dense model's logits."""
    model = make_tiny(fam, num_layers=6, seed=5)
    ad = adapter_for_model(model)
    with torch.no_grad():
        for i in (2, 3):
            for mod, _ in residual_writers(ad, model, i):
                if hasattr(mod, "bias") and mod.bias is not None:
                    mod.bias.zero_()
                # post-norm families (Gemma-2): the (1 + w) norm weight -1 zeroes the output
                mod.weight.fill_(-1.0 if "Gemma" in type(mod).__name__ else 0.0)
    batches = _batches(1)
    x = batches[0].input_ids
    with torch.no_grad():
        ref = model(x).logits
    p = prune_model(model, ad, [(2, 4)], "ghost", batches, damp=1e-8)
    assert float(p.ops[0].delta.abs().max()) < 1e-6
    with torch.no_grad():
        torch.testing.assert_close(p.model(x).logits, ref, rtol=1e-4, atol=1e-4)


def test_replaceme_equals_lstsq_on_mlp_output():
    model = make_tiny("llama", num_layers=5, seed=6)
    ad = adapter_for_model(model)
    batches = _batches(2)
    st = collect_gap_stats(model, ad, batches, [(2, 4)], mlp=True)[0]
    op = R.fit_replaceme(st, damp=0.0)
    Ms, Ts = [], []
    for b in batches:
        got = run_points(model, ad, b, [("in", 2), ("in", 4), ("mlp", 1)])
        m = b.attention_mask.bool()
        M = got[("mlp", 1)][m].double()
        Ms.append(M)
        Ts.append(got[("in", 4)][m].double() - got[("in", 2)][m].double() + M)
    sol = np.linalg.lstsq(torch.cat(Ms).numpy(), torch.cat(Ts).numpy(), rcond=None)[0]
    np.testing.assert_allclose(op.delta.numpy(), sol, rtol=1e-5, atol=1e-7)


# ---- in memory ---------------------------------------------------------------------------
@pytest.mark.parametrize("fam", ["llama", "gemma2", "gpt2"])
def test_scale_fold_matches_the_scalar_hook(fam):
    batches = _batches(3)
    x = batches[0].input_ids
    outs = []
    for fold in (False, True):
        model = make_tiny(fam, num_layers=6, seed=7)
        p = prune_model(
            model, adapter_for_model(model), [(1, 3), (4, 5)], "scale", batches, fold=fold
        )
        with torch.no_grad():
            outs.append(p.model(x).logits)
        if fold:
            assert not hasattr(p.model, "layergraft_ghosts")
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-3, atol=2e-3)  # equal up to norm eps


def test_parse_removal():
    assert parse_removal("3:5", 8) == [(3, 5)]
    assert parse_removal("3,7,4", 8) == [(3, 5), (7, 8)]
    assert parse_removal("1:3,5", 8) == [(1, 3), (5, 6)]
    with pytest.raises(RangeError, match="all 4 layers"):
        parse_removal("0:4", 4)
    with pytest.raises(RangeError, match="reversed"):
        parse_removal("3:1", 4)
    with pytest.raises(RangeError, match="out of bounds"):
        parse_removal("2:9", 4)


def test_sequential_first_gap_equals_dense_and_runs():
    batches = _batches(4)
    dense = make_tiny("qwen2", num_layers=6, seed=8)
    seq = make_tiny("qwen2", num_layers=6, seed=8)
    a = prune_model(dense, adapter_for_model(dense), [(1, 2), (3, 5)], "ghost", batches)
    b = prune_model(
        seq, adapter_for_model(seq), [(1, 2), (3, 5)], "ghost", batches, sequential=True
    )
    torch.testing.assert_close(a.ops[0].delta, b.ops[0].delta)
    assert not torch.allclose(a.ops[1].delta, b.ops[1].delta)
    assert len(b.model.model.layers) == 3 and b.model.config.num_hidden_layers == 3


def test_few_tokens_warn_and_no_tokens_refused():
    st = GapStats(0, 1)
    x = torch.randn(1, 20, 32)
    st.update(x, x * 2, torch.ones(1, 20, dtype=torch.long))
    with pytest.warns(R.FewTokensWarning, match="< hidden size 32"):
        R.fit_ghost(st)
    st2 = GapStats(0, 1)
    st2.update(x[:, :5], x[:, :5], torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(InputError, match="only 5 calibration tokens"):
        R.fit_ghost(st2)


# ---- saved models --------------------------------------------------------------------------
def _in_memory(model_dir, method, remove, calib_file):
    from layergraft.models.load import load_tokenizer
    from layergraft.prune.job import calibration_batches

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = load_tokenizer(model_dir)
    batches = calibration_batches(tok, calib_file, n_tokens=1024, seqlen=128, batch_size=4)
    ad = adapter_for_model(model)
    return prune_model(model, ad, parse_removal(remove, 6), method, batches)


_CORE = {("llama", m) for m in ("ghost", "diag", "replaceme", "scale", "none")} | {
    ("qwen2", "ghost"),
    ("qwen2", "replaceme"),
    ("gemma2", "ghost"),
    ("gemma2", "scale"),
    ("gemma2", "replaceme"),
}
_SAVED_CASES = [
    pytest.param(f, m, marks=() if (f, m) in _CORE else pytest.mark.slow)
    for f in FAMILIES
    for m in ("ghost", "diag", "replaceme", "scale", "none")
]


@pytest.mark.parametrize("fam, method", _SAVED_CASES)
def test_saved_model_reloads_with_identical_logits(model_dirs, calib_file, tmp_path, fam, method):
    remove = "2:4" if method in ("ghost", "none") else "1,3:5"
    out = tmp_path / "pruned"
    if fam == "gemma2" and method == "replaceme":  # post-norm MLP: no fold possible, refused
        with pytest.raises(ArchitectureError, match="cannot be folded"):
            prune(model_dirs[fam], out, remove=remove, recover=method, calib=calib_file)
        assert not out.exists()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.FewTokensWarning)
        prov = prune(
            model_dirs[fam], out, remove=remove, recover=method, calib=calib_file,
            calib_tokens=1024, seqlen=128,
        )  # fmt: skip
        ref = _in_memory(model_dirs[fam], method, remove, calib_file).model
    ghosted = method in ("ghost", "diag")
    assert prov["details"]["needs_remote_code"] == ghosted
    cfg = json.loads((out / "config.json").read_text())
    kept = 4 if remove == "2:4" else 3
    assert cfg["num_hidden_layers"] == kept
    if fam == "gemma2":
        dense_types = ["sliding_attention", "full_attention"] * 3
        keep = [0, 1, 4, 5] if remove == "2:4" else [0, 2, 5]
        assert cfg["layer_types"] == [dense_types[i] for i in keep]
    for f in ("README.md", "layergraft.json", "layergraft_recipe.yaml"):
        assert (out / f).is_file()
    x = torch.randint(3, 104, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(x).logits
        loaded = [load_model(out)]
        loaded.append(
            AutoModelForCausalLM.from_pretrained(
                out, trust_remote_code=ghosted, dtype=torch.float32
            )
        )
        for m in loaded:
            torch.testing.assert_close(m.eval()(x).logits, want, rtol=0, atol=0)
    if ghosted:  # without remote code transformers must refuse, not silently drop the ghosts
        with pytest.raises(ValueError):
            AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)


@pytest.mark.parametrize("fam", ["llama", "gemma2"])
def test_cached_and_uncached_generation_agree_after_pruning(model_dirs, calib_file, tmp_path, fam):
    out = tmp_path / "pruned"
    prune(
        model_dirs[fam],
        out,
        remove="1,3",
        recover="ghost",
        calib=calib_file,
        calib_tokens=1024,
        seqlen=128,
    )
    x = torch.randint(3, 104, (1, 6), generator=torch.Generator().manual_seed(1))
    for m in (load_model(out), AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)):
        kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
        a = m.generate(x, use_cache=True, **kw)
        b = m.generate(x, use_cache=False, **kw)
        assert torch.equal(a, b)
        idx = [layer.self_attn.layer_idx for layer in m.model.layers]
        assert idx == list(range(len(idx)))


# ---- CLI -----------------------------------------------------------------------------------
def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "error:" in err
    return err


def test_cli_prune_writes_and_refuses(model_dirs, calib_file, tmp_path, capsys):
    m = str(model_dirs["llama"])
    out = tmp_path / "o"
    assert main(["prune", m, "--remove", "2:4", "--calib", str(calib_file), "--calib-tokens", "512", "--seqlen", "128", "--out", str(out)]) == 0  # fmt: skip
    assert "removed 2:4 (6 -> 4 layers)" in capsys.readouterr().out
    base = ["prune", m, "--calib", str(calib_file), "--out", str(tmp_path / "x")]
    assert "reversed" in _one_line_error(capsys, [*base, "--remove", "4:2"])
    assert "all 6 layers" in _one_line_error(capsys, [*base, "--remove", "0:6"])
    assert "out of bounds" in _one_line_error(capsys, [*base, "--remove", "2:9"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty" in _one_line_error(capsys, ["prune", m, "--remove", "1:2", "--calib", str(empty), "--out", str(tmp_path / "y")])  # fmt: skip
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\x00\x01" * 100)
    assert "binary" in _one_line_error(capsys, ["prune", m, "--remove", "1:2", "--calib", str(binary), "--out", str(tmp_path / "y")])  # fmt: skip
    short = tmp_path / "s.txt"
    short.write_text("hi there")
    assert "tokens" in _one_line_error(capsys, ["prune", m, "--remove", "1:2", "--calib", str(short), "--out", str(tmp_path / "y")])  # fmt: skip
    assert "already exists" in _one_line_error(capsys, [*base[:-1], str(out), "--remove", "1:2"])
    assert "replaceme" in _one_line_error(
        capsys, [*base, "--remove", "0:2", "--recover", "replaceme"]
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_compare_recovery_table(model_dirs, calib_file, tmp_path, capsys):
    held = tmp_path / "held.txt"
    held.write_text(calib_file.read_text()[-1500:])
    args = [
        "compare-recovery",
        str(model_dirs["llama"]),
        "--remove",
        "2:4",
        "--calib",
        str(calib_file),
    ]
    args += ["--calib-tokens", "512", "--seqlen", "128", "--heldout", str(held)]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["dense", "ghost", "replaceme", "rotate", "diag", "scale", "none"]
    assert rows["ghost"]["params"] == rows["rotate"]["params"] == rows["none"]["params"] + 32 * 32
    assert rows["diag"]["params"] == rows["none"]["params"] + 32
    assert rows["replaceme"]["params"] == rows["scale"]["params"] == rows["none"]["params"]
    assert rows["dense"]["params"] > rows["none"]["params"]
    assert "non-overlapping chunks" in res["ppl_definition"]
    assert main(["prune", *args[1:], "--compare"]) == 0
    out = capsys.readouterr().out
    assert "method" in out and "ghost" in out and "PPL:" in out


def test_gap_at_the_end_ghost_sits_before_the_final_norm(model_dirs, calib_file, tmp_path):
    out = tmp_path / "end"
    prune(model_dirs["qwen2"], out, remove="4:6", calib=calib_file, calib_tokens=1024, seqlen=128)
    cfg = json.loads((out / "config.json").read_text())
    assert list(cfg["layergraft_ghost"]["positions"]) == ["4"]  # = the layer count: final norm
    ref = _in_memory(model_dirs["qwen2"], "ghost", "4:6", calib_file).model
    x = torch.randint(3, 104, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(x).logits
        for m in (
            load_model(out),
            AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True),
        ):
            torch.testing.assert_close(m(x).logits, want, rtol=0, atol=0)


@pytest.mark.parametrize("fam", ["llama", "gemma2"])
def test_compare_recovery_uses_one_model_and_puts_it_back(model_dirs, calib_file, monkeypatch, fam):
    """No deep copy of the dense model per method; after the comparison the in-memory model is
    the dense one again, bit for bit, and each method's PPL equals that of a model pruned
    from scratch (scale: up to the norms' eps, as it stays an unfolded scalar here)."""
    import copy

    from layergraft.prune.compare import compare_recovery

    dense = load_model(model_dirs[fam])
    tok = load_tokenizer(model_dirs[fam])
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    n_layers = len(adapter_for_model(dense).layers(dense))
    real_deepcopy = copy.deepcopy

    def no_model_copies(obj, *a, **k):
        assert not isinstance(obj, torch.nn.Module), "compare-recovery deep-copied a model"
        return real_deepcopy(obj, *a, **k)

    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    kw = dict(remove="1:3", calib=calib_file, calib_tokens=512, seqlen=128, ppl_max_tokens=512)
    res = compare_recovery((dense, tok), **kw)
    monkeypatch.setattr(copy, "deepcopy", real_deepcopy)
    after = dense.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert len(adapter_for_model(dense).layers(dense)) == n_layers
    assert dense.config.num_hidden_layers == n_layers and not hasattr(dense, "layergraft_ghosts")
    from layergraft.evaluate.perplexity import perplexity
    from layergraft.prune.job import calibration_batches
    from layergraft.text import DEFAULT_HELDOUT, read_text, tokenize

    batches = calibration_batches(tok, calib_file, n_tokens=512, seqlen=128, batch_size=4)
    ids = tokenize(tok, read_text(DEFAULT_HELDOUT))[:512]
    rows = {r["method"]: r for r in res["rows"]}
    for method in [m for m in R.METHODS if m in rows]:
        fresh = load_model(model_dirs[fam])
        p = prune_model(fresh, adapter_for_model(fresh), [(1, 3)], method, batches)
        want = perplexity(p.model, ids, seqlen=512)["ppl"]
        assert rows[method]["ppl"] == pytest.approx(want, rel=1e-5), method
        assert rows[method]["params"] == sum(x.numel() for x in p.model.parameters()), method
