"""Every pruning repair operator applied in a forward pass, against a reference written here.

The reference is always a plain transformers model cut by this file (its own ModuleList
surgery) with the operator applied by a hook written in this file, or numpy on activations
captured by hooks written in this file. No layergraft function serves as its own reference:
layergraft only produces the thing under test (a pruned model, a folded weight, a fit).

Why each check has a control: a tolerance means nothing unless the wrong answer lies outside
it, so every test also shows that the obvious wrong answer (``Δᵀ`` for ``Δ``, ``T`` applied
transposed, no fold at all) misses the reference by far more than the tolerance.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from layergraft.arch import adapter_for_model
from layergraft.prune import recover as R
from layergraft.prune.calibrate import collect_gap_stats
from layergraft.prune.fold import fold_replaceme
from layergraft.prune.model import prune_model
from layergraft.text import Batch
from tiny import make_tiny

#: where each family keeps its decoder layers, its final norm, and its MLP output projection
LAYERS = {"llama": "model.layers", "gemma2": "model.layers", "gpt2": "transformer.h"}
NORM = {"llama": "model.norm", "gemma2": "model.norm", "gpt2": "transformer.ln_f"}
DOWN = {"llama": "mlp.down_proj", "gpt2": "mlp.c_proj"}


# ---- the reference side: plain transformers plus hooks written here ------------------------
def _batches(seed: int = 0, n: int = 3, rows: int = 4, width: int = 24) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [
        Batch(torch.randint(3, 128, (rows, width), generator=g), torch.ones(rows, width).long())
        for _ in range(n)
    ]


def _layers(model: nn.Module, fam: str) -> nn.ModuleList:
    return model.get_submodule(LAYERS[fam])


def _cut(model: nn.Module, fam: str, gaps: list[tuple[int, int]]) -> nn.Module:
    """A deep copy of ``model`` without the layers in ``gaps``: plain ModuleList surgery."""
    ref = copy.deepcopy(model)
    parent_name, attr = LAYERS[fam].rsplit(".", 1)
    parent = ref.get_submodule(parent_name)
    old = getattr(parent, attr)
    drop = {i for s, e in gaps for i in range(s, e)}
    setattr(parent, attr, nn.ModuleList([m for i, m in enumerate(old) if i not in drop]))
    n = len(old) - len(drop)
    if fam == "gpt2":
        ref.config.n_layer = n
    else:
        ref.config.num_hidden_layers = n
    types = getattr(ref.config, "layer_types", None)
    if types:
        ref.config.layer_types = [t for i, t in enumerate(types) if i not in drop]
    return ref


def _on_stream(module: nn.Module, fn) -> torch.utils.hooks.RemovableHandle:
    """Replace the hidden states ``module`` receives by ``fn(hidden_states)``."""

    def hook(_m, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs, hidden_states=fn(kwargs["hidden_states"]))
        return args, kwargs

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def _entering(model: nn.Module, fam: str, pos: int) -> nn.Module:
    """The module that reads the residual stream at boundary ``pos`` (a layer, or the norm)."""
    layers = _layers(model, fam)
    return layers[pos] if pos < len(layers) else model.get_submodule(NORM[fam])


def _activations(model: nn.Module, fam: str, batches: list[Batch], points: list) -> dict:
    """``{point: [n, d] float64 numpy}`` over all tokens; a point is ``("in", b)`` (stream
    entering boundary ``b``) or ``("mlp", i)`` (layer ``i``'s MLP output projection output)."""
    got: dict = {p: [] for p in points}
    handles = []
    for kind, i in points:
        if kind == "in":

            def pre(_m, args, kwargs, p=(kind, i)):
                h = args[0] if args else kwargs["hidden_states"]
                got[p].append(h.detach().double().reshape(-1, h.shape[-1]).numpy())

            handles.append(
                _entering(model, fam, i).register_forward_pre_hook(pre, with_kwargs=True)
            )
        else:

            def post(_m, _a, out, p=(kind, i)):
                got[p].append(out.detach().double().reshape(-1, out.shape[-1]).numpy())

            handles.append(
                _layers(model, fam)[i].get_submodule(DOWN[fam]).register_forward_hook(post)
            )
    try:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {p: np.concatenate(v) for p, v in got.items()}


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _ghost_ref(delta: torch.Tensor, bias: torch.Tensor | None):
    """``h -> h + h·Δ + b`` in float64, back to the stream's dtype."""
    d64 = delta.detach().double()
    b64 = None if bias is None else bias.detach().double()

    def fn(h: torch.Tensor) -> torch.Tensor:
        x = h.double()
        y = x + x @ d64
        return (y if b64 is None else y + b64).to(h.dtype)

    return fn


def _louder(model: nn.Module, fam: str, layers: list[int], k: float = 8.0) -> nn.Module:
    """Multiply the MLP output of ``layers`` by ``k``, and give zero biases random values: a
    random GPT-2's blocks barely change the stream's magnitude (α ≈ 1.00), and a zero bias
    scaled is still zero, so a magnitude repair would have nothing to show."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i in layers:
            down = _layers(model, fam)[i].get_submodule(DOWN[fam])
            down.weight.mul_(k)
        for name, b in model.named_parameters():
            if name.endswith(".bias") and not b.any():
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)
    return model


def _asymmetry(m: torch.Tensor) -> float:
    return float((m - m.T).norm() / m.norm())


# ---- ghost: h + h·Δ + b at the gap ---------------------------------------------------------
GHOST_CASES = [
    ("llama", (2, 4)),
    ("llama", (4, 6)),  # a gap at the end: the ghost sits before the final norm
    ("gpt2", (2, 4)),  # learned absolute positions, Conv1D weights
    ("gemma2", (1, 3)),  # post-norm layers, sliding/full layer types
]


@pytest.mark.parametrize("fam, gap", GHOST_CASES)
@pytest.mark.parametrize("operator", ["fitted", "random"])
def test_ghost_in_a_pruned_model_is_h_plus_h_delta_plus_b(fam, gap, operator):
    """The pruned, ghosted model in memory computes ``layer_s(h + h·Δ + b)`` at the gap, with
    the fitted operator and with a random, non-symmetric one put in its place."""
    model = make_tiny(fam, num_layers=6, seed=11)
    ref_base = _cut(model, fam, [gap])
    ids = _batches(5, n=1)[0].input_ids
    p = prune_model(model, adapter_for_model(model), [gap], "ghost", _batches(), bias=True)
    ghost = p.model.layergraft_ghosts[str(gap[0])]
    if operator == "random":
        g = torch.Generator().manual_seed(1)
        d = ghost.delta.shape[0]
        with torch.no_grad():
            ghost.delta.copy_(torch.randn(d, d, generator=g) * (1.5 / d**0.5))
            ghost.bias.copy_(torch.randn(d, generator=g) * 0.05)
        delta, bias = ghost.delta, ghost.bias
    else:
        delta, bias = p.ops[0].delta, p.ops[0].bias
    assert _asymmetry(delta) > 0.3  # Δ and Δᵀ really differ
    got = _logits(p.model, ids)

    want_at = _entering(ref_base, fam, gap[0])
    h = _on_stream(want_at, _ghost_ref(delta, bias))
    want = _logits(ref_base, ids)
    h.remove()
    h = _on_stream(want_at, _ghost_ref(delta.T, bias))
    transposed = _logits(ref_base, ids)
    h.remove()
    no_ghost = _logits(ref_base, ids)

    tol = 1e-5 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    assert float((transposed - want).abs().max()) > 50 * tol  # Δᵀ would be caught
    assert float((no_ghost - want).abs().max()) > 50 * tol  # so would no ghost at all


def _saved_ghost(tmp_path, fam: str, remove: str) -> tuple:
    from layergraft.prune.pipeline import prune
    from layergraft.text import DEFAULT_CALIB
    from layergraft.toy.tokenizer import save_tokenizer
    from tiny import save_tiny

    src = save_tiny(fam, tmp_path / "dense", num_layers=6, seed=4)
    save_tokenizer(src)
    calib = tmp_path / "calib.txt"
    calib.write_text(DEFAULT_CALIB.read_text()[:4000])
    out = tmp_path / "pruned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.FewTokensWarning)
        prune(src, out, remove=remove, recover="ghost", bias=True, calib=calib,
              calib_tokens=1024, seqlen=128, progress=False)  # fmt: skip
    return src, out


@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_reloaded_ghost_directory_is_the_dense_model_cut_plus_h_delta(tmp_path, fam):
    """The output directory, loaded both ways (layergraft's loader and transformers' remote
    code), computes the *input* model without layers 2:4 plus ``h + h·Δ + b`` at the gap, with
    Δ and b read from ``ghost.safetensors`` as plain arrays."""
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from layergraft.models.load import load_model

    src, out = _saved_ghost(tmp_path, fam, "2:4")
    cfg = json.loads((out / "config.json").read_text())
    assert list(cfg["layergraft_ghost"]["positions"]) == ["2"]
    arrays = load_file(str(out / "ghost.safetensors"))
    assert set(arrays) == {"layergraft_ghosts.2.delta", "layergraft_ghosts.2.bias"}
    delta = torch.from_numpy(arrays["layergraft_ghosts.2.delta"])
    bias = torch.from_numpy(arrays["layergraft_ghosts.2.bias"])
    assert _asymmetry(delta) > 0.3

    dense = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ref = _cut(dense, fam, [(2, 4)])
    ids = torch.randint(3, 104, (2, 20), generator=torch.Generator().manual_seed(0))
    h = _on_stream(_entering(ref, fam, 2), _ghost_ref(delta, bias))
    want = _logits(ref, ids)
    h.remove()
    h = _on_stream(_entering(ref, fam, 2), _ghost_ref(delta.T, bias))
    transposed = _logits(ref, ids)
    h.remove()
    tol = 1e-5 * float(want.abs().max())
    assert float((transposed - want).abs().max()) > 50 * tol
    for loaded in (
        load_model(out),
        AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32),
    ):
        torch.testing.assert_close(_logits(loaded.eval(), ids), want, rtol=0, atol=tol)


# ---- diag (LinearPatch-D): h ⊙ r at the gap, r = Σ|x_post| / Σ|x| --------------------------
@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_diag_fit_and_forward_against_numpy(fam):
    model = make_tiny(fam, num_layers=6, seed=12)
    batches = _batches(2)
    acts = _activations(model, fam, batches, [("in", 1), ("in", 3)])
    x, post = acts[("in", 1)], acts[("in", 3)]
    r = np.abs(post).sum(0) / np.abs(x).sum(0)
    rms = np.sqrt((post**2).sum(0) / (x**2).sum(0))  # the old RMS ratio: a different operator
    assert np.abs(rms / r - 1).max() > 1e-3
    ref = _cut(model, fam, [(1, 3)])
    p = prune_model(model, adapter_for_model(model), [(1, 3)], "diag", batches)
    np.testing.assert_allclose(p.ops[0].scale.numpy(), r, rtol=1e-9)
    assert np.ptp(r) > 0.05  # per channel, not one scalar in disguise
    ids = _batches(5, n=1)[0].input_ids
    rt = torch.from_numpy(r)
    h = _on_stream(_entering(ref, fam, 1), lambda t: (t.double() * rt).to(t.dtype))
    want = _logits(ref, ids)
    h.remove()
    tol = 1e-5 * float(want.abs().max())
    torch.testing.assert_close(_logits(p.model, ids), want, rtol=0, atol=tol)
    assert float((_logits(ref, ids) - want).abs().max()) > 50 * tol


# ---- ReplaceMe: down_proj_new(x) == down_proj_old(x) @ T -----------------------------------
@pytest.mark.parametrize(
    "fam, overrides", [("llama", {}), ("llama", {"mlp_bias": True}), ("gpt2", {})]
)
def test_replaceme_fold_is_the_old_projection_times_t(fam, overrides):
    """A random non-symmetric ``T`` folded into layer 2's MLP output projection (Linear with
    and without a bias, random here since transformers initialises biases to zero; GPT-2's
    transposed Conv1D): the new projection maps x to old(x)·T, and the fold returns every
    parameter it changed (the writer copies the others from the input checkpoint)."""
    model = make_tiny(fam, num_layers=4, seed=13, **overrides)
    new = _layers(model, fam)[2].get_submodule(DOWN[fam])
    if new.bias is not None:
        with torch.no_grad():
            new.bias.copy_(torch.randn(new.bias.shape, generator=torch.Generator().manual_seed(4)))
    old = copy.deepcopy(new)
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(2)
    t = (
        torch.eye(d, dtype=torch.float64)
        + torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3
    )
    assert _asymmetry(t - torch.eye(d, dtype=torch.float64)) > 0.5
    changed = fold_replaceme(
        adapter_for_model(model), model, R.Operator("replaceme", 3, 4, "replaceme", delta=t), 2
    )
    bias = [new.bias] if new.bias is not None else []
    assert [id(p) for p in changed] == [id(p) for p in [new.weight, *bias]]
    n_in = old.weight.shape[0] if fam == "gpt2" else old.weight.shape[1]
    x = torch.randn(5, 7, n_in, generator=g)
    with torch.no_grad():
        want = old(x).double().numpy() @ t.numpy()
        got = new(x).double().numpy()
        transposed = old(x).double().numpy() @ t.numpy().T
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    assert np.abs(transposed - want).max() > 1e-2 * scale


def test_replaceme_in_a_pruned_model_is_the_mlp_output_times_t():
    """Through a real pruned model: the dense model cut at 2:4, layer 1's MLP output right-
    multiplied by the fitted ``T`` (a forward hook written here)."""
    fam = "llama"
    model = make_tiny(fam, num_layers=6, seed=14)
    ref = _cut(model, fam, [(2, 4)])
    p = prune_model(model, adapter_for_model(model), [(2, 4)], "replaceme", _batches())
    t = p.ops[0].delta
    assert _asymmetry(t - torch.eye(t.shape[0], dtype=t.dtype)) > 0.3
    ids = _batches(5, n=1)[0].input_ids
    down = _layers(ref, fam)[1].get_submodule(DOWN[fam])
    outs = []
    for m in (t, t.T):
        h = down.register_forward_hook(lambda _m, _a, out, m=m: (out.double() @ m).to(out.dtype))
        outs.append(_logits(ref, ids))
        h.remove()
    want, transposed = outs
    tol = 1e-5 * float(want.abs().max())
    torch.testing.assert_close(_logits(p.model, ids), want, rtol=0, atol=tol)
    assert float((transposed - want).abs().max()) > 50 * tol


# ---- damped fits against augmented least squares -------------------------------------------
def _ridge(a: np.ndarray, y: np.ndarray, lam: float, prior: np.ndarray) -> np.ndarray:
    """``argmin ‖A X − Y‖² + λ‖X − P‖²`` as ordinary least squares on augmented rows."""
    k = a.shape[1]
    aug_a = np.vstack([a, np.sqrt(lam) * np.eye(k)])
    aug_y = np.vstack([y, np.sqrt(lam) * prior])
    return np.linalg.lstsq(aug_a, aug_y, rcond=None)[0]


@pytest.mark.parametrize("damp", [0.0, 1e-2, 0.3])
def test_replaceme_damped_fit_is_augmented_least_squares(damp):
    """``T = argmin ‖M T − (Δ + M)‖² + λ‖T − I‖²`` with ``λ = damp·tr(MᵀM)/d``: damping pulls
    towards the identity, checked on activations captured by this file's hooks."""
    fam = "llama"
    model = make_tiny(fam, num_layers=5, seed=6)
    batches = _batches(2)
    acts = _activations(model, fam, batches, [("in", 2), ("in", 4), ("mlp", 1)])
    m = acts[("mlp", 1)]
    y = acts[("in", 4)] - acts[("in", 2)] + m
    d = m.shape[1]
    lam = damp * np.trace(m.T @ m) / d
    want = _ridge(m, y, lam, np.eye(d))
    st = collect_gap_stats(model, adapter_for_model(model), batches, [(2, 4)], mlp=True)[0]
    got = R.fit_replaceme(st, damp=damp).delta.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8 * np.abs(want).max())
    if damp:
        undamped = _ridge(m, y, 0.0, np.eye(d))
        toward_zero = _ridge(m, y, lam, np.zeros((d, d)))
        assert np.abs(undamped - want).max() > 1e-4 * np.abs(want).max()  # damping matters here
        assert np.abs(toward_zero - want).max() > 1e-4 * np.abs(want).max()  # prior is I, not 0


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("damp", [1e-2, 0.3])
def test_ghost_damped_fit_is_augmented_least_squares(damp, bias):
    """``M = argmin ‖X M (+ 1 bᵀ) − Δ‖² + λ‖M‖²``, ``λ = damp·tr(XᵀX)/d``, bias not damped."""
    fam = "gpt2"
    model = make_tiny(fam, num_layers=5, seed=2)
    batches = _batches(3)
    acts = _activations(model, fam, batches, [("in", 1), ("in", 3)])
    x, delta = acts[("in", 1)], acts[("in", 3)] - acts[("in", 1)]
    n, d = x.shape
    lam = damp * np.trace(x.T @ x) / d
    a = np.hstack([x, np.ones((n, 1))]) if bias else x
    reg = np.sqrt(lam) * np.eye(d, a.shape[1])  # the bias column gets no damping row
    want = np.linalg.lstsq(np.vstack([a, reg]), np.vstack([delta, np.zeros((d, d))]), rcond=None)[0]
    st = collect_gap_stats(model, adapter_for_model(model), batches, [(1, 3)])[0]
    op = R.fit_ghost(st, damp=damp, bias=bias)
    scale = np.abs(want).max()
    np.testing.assert_allclose(op.delta.numpy(), want[:d], rtol=1e-6, atol=1e-8 * scale)
    if bias:
        np.testing.assert_allclose(op.bias.numpy(), want[d], rtol=1e-6, atol=1e-8 * scale)
    else:
        assert op.bias is None


# ---- scale: the folded weights are c·W, and c is not 1 -------------------------------------
@pytest.mark.parametrize("fam", ["llama", "gpt2", "gemma2"])
def test_scale_fold_multiplies_the_residual_writers_by_c(fam):
    """Two gaps 1:3 and 4:5 of six layers (kept: 0, 3, 5). ``α_g = sqrt(Σ‖x_post‖²/Σ‖x‖²)``
    from this file's hooks; every residual writer of kept layer 3 is ``W/α₁``, of kept layer 5
    ``W/(α₁α₂)`` (Gemma's ``(1 + w)`` norms: ``1 + w`` scaled), layer 0 and all else unchanged."""
    model = make_tiny(fam, num_layers=6, seed=7)
    if fam != "gemma2":  # (Gemma-2 normalises the MLP output: its α is far from 1 anyway)
        _louder(model, fam, [1, 2, 4])
    batches = _batches(3)
    gaps = [(1, 3), (4, 5)]
    acts = _activations(model, fam, batches, [("in", 1), ("in", 3), ("in", 4), ("in", 5)])
    alpha = [np.sqrt((acts[("in", e)] ** 2).sum() / (acts[("in", s)] ** 2).sum()) for s, e in gaps]
    factor = {0: 1.0, 3: 1 / alpha[0], 5: 1 / (alpha[0] * alpha[1])}
    assert all(abs(a - 1) > 0.02 for a in alpha)  # the fold has something to do
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    p = prune_model(model, adapter_for_model(model), gaps, "scale", batches)
    assert [op.scale for op in p.ops] == pytest.approx(alpha, rel=1e-9)
    assert not hasattr(p.model, "layergraft_ghosts")
    after = p.model.state_dict()
    params = dict(p.model.named_parameters())
    changed = {id(x) for x in p.changed}  # written from memory; the rest is copied from disk
    prefix = LAYERS[fam] + "."
    writers = {
        "llama": ("self_attn.o_proj.weight", "mlp.down_proj.weight"),
        "gpt2": ("attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"),
        "gemma2": ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight"),
    }[fam]
    for new, old in enumerate([0, 3, 5]):
        c = factor[old]
        for name in (
            n[len(prefix + f"{old}.") :] for n in dense if n.startswith(prefix + f"{old}.")
        ):
            w_old = dense[f"{prefix}{old}.{name}"].double().numpy()
            w_new = after[f"{prefix}{new}.{name}"].double().numpy()
            if name in writers and c != 1.0:
                assert id(params[f"{prefix}{new}.{name}"]) in changed, name
            if name not in writers or c == 1.0:
                np.testing.assert_array_equal(w_new, w_old, err_msg=name)
            elif fam == "gemma2":  # Gemma's norm computes x·(1 + w): 1 + w scales by c
                np.testing.assert_allclose(1 + w_new, c * (1 + w_old), rtol=1e-6, err_msg=name)
                assert np.abs(w_new - w_old).max() > 1e-3  # not the unfolded weight
            else:
                np.testing.assert_allclose(w_new, c * w_old, rtol=1e-6, atol=0, err_msg=name)
                assert np.abs(w_new - w_old).max() > 1e-2 * np.abs(w_old).max()
    for k in dense:  # embeddings, final norm, head: untouched
        if not k.startswith(prefix):
            torch.testing.assert_close(after[k], dense[k], rtol=0, atol=0)


@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_scale_fold_logits_follow_the_scalar_hook_not_plain_removal(fam):
    """The folded model against the dense model cut, with ``h·α`` at each gap (hooks written
    here): closer to it than 0.1% of the distance between that reference and plain removal."""
    # the fold is exact up to the norms' eps: an eps far below the stream's energy (random
    # tiny models have a small stream) leaves only rounding
    eps = {"llama": {"rms_norm_eps": 1e-12}, "gpt2": {"layer_norm_epsilon": 1e-12}}[fam]
    model = _louder(make_tiny(fam, num_layers=6, seed=7, **eps), fam, [1, 2, 4])
    batches = _batches(3)
    gaps = [(1, 3), (4, 5)]
    ref = _cut(model, fam, gaps)
    p = prune_model(model, adapter_for_model(model), gaps, "scale", batches)
    ids = _batches(5, n=1)[0].input_ids
    none = _logits(ref, ids)
    handles = [
        _on_stream(_entering(ref, fam, pos), lambda h, a=op.scale: h * a)
        for pos, op in zip((1, 2), p.ops, strict=True)
    ]
    want = _logits(ref, ids)
    for h in handles:
        h.remove()
    effect = float((none - want).abs().max())
    assert effect > 1e-3
    assert float((_logits(p.model, ids) - want).abs().max()) < 1e-3 * effect


# ---- what the fits record (mutation testing found these unchecked) -------------------------
def test_every_fit_records_what_it_fitted_and_names_itself_when_refusing():
    from layergraft.errors import InputError
    from layergraft.text import MIN_TOKENS

    model = make_tiny("llama", num_layers=5, seed=6)
    st = collect_gap_stats(model, adapter_for_model(model), _batches(2), [(2, 4)], mlp=True)[0]
    fits = {
        "ghost": R.fit_ghost(st, damp=1e-3, bias=True),
        "replaceme": R.fit_replaceme(st, damp=1e-3),
        "diag": R.fit_diag(st),
        "scale": R.fit_scale(st),
    }
    kinds = {"ghost": "full", "replaceme": "replaceme", "diag": "diag", "scale": "scale"}
    for method, op in fits.items():
        assert (op.method, op.start, op.end, op.kind) == (method, 2, 4, kinds[method])
        assert op.n_tokens == st.n == 3 * 4 * 24
        assert R.fit(method, st, damp=1e-3, bias=True).kind == op.kind
    assert fits["ghost"].damp == fits["replaceme"].damp == R.Damp(1e-3)
    assert fits["replaceme"].bias is None and fits["diag"].delta is None
    assert isinstance(fits["scale"].scale, float)
    few = collect_gap_stats(
        model, adapter_for_model(model), [Batch(torch.ones(1, MIN_TOKENS - 1).long() * 7,
                                                torch.ones(1, MIN_TOKENS - 1).long())],
        [(2, 4)], mlp=True,
    )[0]  # fmt: skip
    for method in fits:
        with pytest.raises(InputError, match=f"{method} needs at least {MIN_TOKENS}"):
            R.fit(method, few)
    # more tokens than the minimum but fewer than the 32 channels: damp 0 is refused
    under = collect_gap_stats(
        model, adapter_for_model(model), [Batch(torch.arange(3, 23)[None], torch.ones(1, 20).long())],
        [(2, 4)], mlp=True,
    )[0]  # fmt: skip
    for method in ("ghost", "replaceme"):
        with pytest.raises(InputError, match=f"--damp 0: the {method} fit is underdetermined"):
            R.fit(method, under, damp=0.0)


def test_fold_refusals_name_the_fix():
    from layergraft.errors import ArchitectureError, InputError

    gemma = make_tiny("gemma2", num_layers=4, seed=1)
    op = R.Operator("replaceme", 3, 4, "replaceme", delta=torch.eye(32, dtype=torch.float64))
    with pytest.raises(
        ArchitectureError, match="cannot be folded into its down projection; use --recover ghost"
    ):
        fold_replaceme(adapter_for_model(gemma), gemma, op, 2)
    llama = make_tiny("llama", num_layers=4, seed=1)
    down = _layers(llama, "llama")[2].mlp.down_proj
    down.weight = nn.Parameter(torch.empty(down.weight.shape, device="meta"), requires_grad=False)
    with pytest.raises(InputError, match="^the MLP output projection of layer 2 is offloaded"):
        fold_replaceme(adapter_for_model(llama), llama, op, 2)
    st = collect_gap_stats(llama, adapter_for_model(llama), _batches(1, n=1), [(0, 2)], mlp=True)[0]
    with pytest.raises(
        ArchitectureError,
        match="^replaceme folds into the MLP of the layer before the gap, and gap 0:2 has none",
    ):
        R.fit_replaceme(st)


def test_ghost_keeps_the_layers_other_positional_arguments():
    """GPT-2 hands its blocks the cache, the attention mask and the encoder states as
    positional arguments after the hidden states; the ghost hook must replace only the first.
    With left padding the mask is a real tensor, so dropping or shifting it shows."""
    fam = "gpt2"
    model = make_tiny(fam, num_layers=6, seed=11)
    ref = _cut(model, fam, [(2, 4)])
    p = prune_model(model, adapter_for_model(model), [(2, 4)], "ghost", _batches(), bias=True)
    op = p.ops[0]
    ids = _batches(5, n=1)[0].input_ids
    mask = torch.ones_like(ids)
    mask[0, :9] = 0  # left padding in the first row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    def run(m):
        with torch.no_grad():
            out = m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        return out[mask.bool()]

    h = _on_stream(_entering(ref, fam, 2), _ghost_ref(op.delta, op.bias))
    want = run(ref)
    h.remove()
    torch.testing.assert_close(run(p.model), want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_ghost_hook_replaces_hidden_states_given_by_keyword():
    """No family calls its layers with ``hidden_states=`` today, but the hook must handle it."""
    from layergraft.models.ghost import remote

    mod = remote()
    g = torch.Generator().manual_seed(8)
    op = mod.GhostOperator(4, "full", bias=True)
    with torch.no_grad():
        op.delta.copy_(torch.randn(4, 4, generator=g))
        op.bias.copy_(torch.randn(4, generator=g))
    h = torch.randn(2, 3, 4, generator=g)
    args, kwargs = mod._apply_to_hidden(op, (), {"hidden_states": h, "other": 5})
    assert args == () and kwargs["other"] == 5
    want = _ghost_ref(op.delta, op.bias)(h)
    torch.testing.assert_close(kwargs["hidden_states"], want, rtol=0, atol=1e-6)
