"""LinearPatch-D and -R and the Ghosted Layers paper's damping, against references written here.

The references re-implement the formulas of the papers' code from scratch in numpy on
activations captured by hooks written in this file:

* Ghosted Layers (official code, ``lib/recovery.py``): ``M* = solve(XᵀX + 1e-6·I, XᵀΔ)`` in
  float64 on the residual streams entering the first removed and the first kept layer;
* LinearPatch-D: per channel ``mean|x_post| / mean|x_pre|``;
* LinearPatch-R: the same ratio after the orthonormal Hadamard rotation ``H`` (built here by
  Sylvester's doubling for the tiny hidden size 32), applied as ``x @ H D Hᵀ``.

Each comparison has a control showing that the obvious wrong answer (relative damping, the
RMS ratio, the ratio in the unrotated basis) lies far outside the tolerance.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from layergraft.arch import adapter_for_model
from layergraft.cli import main
from layergraft.errors import InputError
from layergraft.models.load import load_model, load_tokenizer
from layergraft.prune import recover as R
from layergraft.prune.cut import parse_removal
from layergraft.prune.hadamard import basis_name, factor, hadamard
from layergraft.prune.job import calibration_batches
from layergraft.prune.model import prune_model
from layergraft.prune.pipeline import prune
from layergraft.toy.tokenizer import save_tokenizer
from tiny import FAMILIES, save_tiny

D = 32  # the tiny models' hidden size


def sylvester(n: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h / np.sqrt(n)


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    from layergraft.text import DEFAULT_CALIB

    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(DEFAULT_CALIB.read_text()[:6000])
    return p


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = save_tiny("llama", tmp_path_factory.mktemp("lp") / "llama", num_layers=6, seed=21)
    save_tokenizer(d)
    return d


def _streams(model_dir, calib_file, s, e, n_tokens=1024, seqlen=128):
    """``X_pre`` and ``X_post`` (float64 numpy, real tokens only) of gap ``[s, e)`` from a plain
    transformers forward with pre-hooks written here, on the calibration rows prune uses."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batches = calibration_batches(
        load_tokenizer(model_dir), calib_file, n_tokens=n_tokens, seqlen=seqlen, batch_size=4
    )
    got: dict[int, list] = {s: [], e: []}
    hooks = []
    for i in (s, e):

        def pre(_m, args, kwargs, i=i):
            got[i].append(args[0] if args else kwargs["hidden_states"])

        hooks.append(model.model.layers[i].register_forward_pre_hook(pre, with_kwargs=True))
    xs, ps = [], []
    with torch.no_grad():
        for b in batches:
            got[s].clear(), got[e].clear()
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            keep = b.attention_mask.bool()
            xs.append(got[s][0][keep].double().numpy())
            ps.append(got[e][0][keep].double().numpy())
    for h in hooks:
        h.remove()
    return np.concatenate(xs), np.concatenate(ps)


def _saved(out, name):
    (t,) = [v for k, v in load_file(str(out / "ghost.safetensors")).items() if k.endswith(name)]
    return t.astype(np.float64)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---- Hadamard bases ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 44, 60, 96, 576, 640, 896, 960, 2304])
def test_hadamard_is_orthonormal_with_entries_of_one_magnitude(n):
    h = hadamard(n).numpy()
    np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(np.abs(h) * np.sqrt(n), np.ones((n, n)), atol=1e-12)


def test_hadamard_orders_named_and_refused():
    assert basis_name(576) == "hadamard 36x16 (paley2)"
    assert basis_name(640) == "hadamard 20x32 (paley1)"
    assert basis_name(32) == "hadamard 1x32 (sylvester)"
    np.testing.assert_array_equal(hadamard(32).numpy(), sylvester(32))
    for n in (3, 6, 52, 100):
        assert factor(n) is None
        with pytest.raises(InputError, match=f"order {n}.*use --recover diag or ghost"):
            hadamard(n)


# ---- the saved operators against the official formulas ------------------------------------
def test_paper_damping_reproduces_the_official_ghost_solve(llama_dir, calib_file, tmp_path):
    s, e = 2, 4
    X, P = _streams(llama_dir, calib_file, s, e)
    delta = P - X
    official = np.linalg.solve(X.T @ X + 1e-6 * np.eye(D), X.T @ delta)
    out = tmp_path / "ghost"
    prov = prune(llama_dir, out, remove=f"{s}:{e}", damp_abs=R.PAPER_DAMP_ABS, calib=calib_file,
                 calib_tokens=1024, seqlen=128, progress=False)  # fmt: skip
    assert _rel(_saved(out, ".delta"), official) < 1e-6
    (op,) = prov["details"]["operators"]
    assert (op["damp"], op["damp_mode"]) == (1e-6, "absolute")
    # control: the default relative ridge is a different operator at this size
    lam = 1e-4 * np.trace(X.T @ X) / D
    relative = np.linalg.solve(X.T @ X + lam * np.eye(D), X.T @ delta)
    assert _rel(relative, official) > 1e-4


def test_diag_is_linearpatch_d(llama_dir, calib_file, tmp_path):
    X, P = _streams(llama_dir, calib_file, 1, 4)
    want = np.abs(P).mean(0) / np.abs(X).mean(0)
    out = tmp_path / "diag"
    prune(llama_dir, out, remove="1:4", recover="diag", calib=calib_file, calib_tokens=1024,
          seqlen=128, progress=False)  # fmt: skip
    got = _saved(out, ".scale")
    assert _rel(got, want) < 1e-6
    rms = np.sqrt((P**2).mean(0) / (X**2).mean(0))
    assert _rel(rms, want) > 1e-3


def test_rotate_is_linearpatch_r_and_acts_as_h_d_ht(llama_dir, calib_file, tmp_path):
    X, P = _streams(llama_dir, calib_file, 2, 5)
    H = sylvester(D)
    dvec = np.abs(P @ H).mean(0) / np.abs(X @ H).mean(0)
    W = H @ np.diag(dvec) @ H.T
    out = tmp_path / "rotate"
    prov = prune(llama_dir, out, remove="2:5", recover="rotate", calib=calib_file,
                 calib_tokens=1024, seqlen=128, progress=False)  # fmt: skip
    assert _rel(_saved(out, ".delta") + np.eye(D), W) < 1e-6
    assert prov["details"]["operators"][0]["basis"] == "hadamard 1x32 (sylvester)"
    assert prov["details"]["needs_remote_code"]
    # control: the same ratio in the raw basis is another operator
    assert _rel(np.diag(np.abs(P).mean(0) / np.abs(X).mean(0)), W) > 1e-2
    # forward: the reloaded model equals a plain transformers model cut here, with x @ W
    # applied by a pre-hook written here on the first kept layer
    ref = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    layers = ref.model.layers
    ref.model.layers = torch.nn.ModuleList([m for i, m in enumerate(layers) if i not in (2, 3, 4)])
    ref.config.num_hidden_layers = 3
    w = torch.from_numpy(W)

    def patch(_m, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        h = (h.double() @ w).to(h.dtype)
        return ((h, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=h))

    ref.model.layers[2].register_forward_pre_hook(patch, with_kwargs=True)
    x = torch.randint(3, 104, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x, use_cache=False).logits
        got = load_model(out).eval()(x).logits
    tol = 1e-5 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=tol)


# ---- rotate on every family, saved and reloaded --------------------------------------------
@pytest.mark.parametrize("fam", FAMILIES)
def test_rotate_reloads_with_identical_logits_on_every_family(fam, calib_file, tmp_path):
    src = save_tiny(fam, tmp_path / "src", num_layers=5, seed=3)
    save_tokenizer(src)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.FewTokensWarning)
        prune(src, out, remove="1,3", recover="rotate", calib=calib_file, calib_tokens=512,
              seqlen=64, progress=False)  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        batches = calibration_batches(
            load_tokenizer(src), calib_file, n_tokens=512, seqlen=64, batch_size=4
        )
        ref = prune_model(model, adapter_for_model(model), parse_removal("1,3", 5), "rotate", batches).model  # fmt: skip
    x = torch.randint(3, 104, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(x).logits
        for m in (
            load_model(out),
            AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32),
        ):
            torch.testing.assert_close(m.eval()(x).logits, want, rtol=0, atol=0)
    positions = json.loads((out / "config.json").read_text())["layergraft_ghost"]["positions"]
    assert {v["kind"] for v in positions.values()} == {"full"} and len(positions) == 2


# ---- refusals, before any model loads ------------------------------------------------------
def _one_line(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_damping_flags_and_rotate_refusals(llama_dir, calib_file, tmp_path, capsys):
    base = ["prune", str(llama_dir), "--remove", "2:4", "--calib", str(calib_file), "--out", str(tmp_path / "x")]  # fmt: skip
    err = _one_line(capsys, [*base, "--damp", "1e-4", "--damp-abs", "1e-6"])
    assert "--damp-abs" in err and "--damp" in err
    err = _one_line(capsys, [*base, "--recover", "diag", "--damp-abs", "1e-6"])
    assert "--recover diag does not use it" in err
    assert "finite" in _one_line(capsys, [*base, "--damp-abs", "nan"])
    odd = save_tiny("llama", tmp_path / "odd", num_layers=4, hidden_size=100, head_dim=8)
    save_tokenizer(odd)
    err = _one_line(capsys, ["prune", str(odd), "--remove", "1:2", "--recover", "rotate", "--calib", str(calib_file), "--out", str(tmp_path / "y")])  # fmt: skip
    assert "hidden size 100" in err and "use --recover diag or ghost" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(InputError, match="give one"):
        R.check_damp(1e-4, 1e-6)
    assert R.check_damp(None, 1e-6) == R.Damp(1e-6, absolute=True)
    assert R.check_damp(None) == R.Damp(R.DEFAULT_DAMP)
