"""The repair fits' corner cases against numpy written here: the per-token weighted
statistics, the least-squares fallback of a singular Gram, each fit's recorded residual,
channels and gaps with no energy, and a scale fold on a model that already carries a ghost.
(Written for the mutants of ``make mutate`` that the main references let through.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.errors import ArchitectureError, InputError
from layergraft.prune import recover as R
from layergraft.prune.calibrate import GapStats
from layergraft.prune.model import prune_model
from layergraft.text import Batch
from tiny import make_tiny


def _data(seed: int, n: int = 90, d: int = 6, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * scale
    D = X @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=(n, d)) * 0.1 * scale
    return X, D


def _stats(X, D, *, start=3, end=5, weighted=False, mlp=None, parts=3) -> GapStats:
    """GapStats fed in ``parts`` batches, each padded with one masked-out row of junk."""
    st = GapStats(start, end, weighted=weighted)
    for idx in np.array_split(np.arange(len(X)), parts):
        x = np.concatenate([X[idx], np.full((1, X.shape[1]), 7.0)])
        post = np.concatenate([X[idx] + D[idx], np.full((1, X.shape[1]), -3.0)])
        mask = torch.ones(1, len(idx) + 1, dtype=torch.long)
        mask[0, -1] = 0
        m = None
        if mlp is not None:
            m = torch.tensor(np.concatenate([mlp[idx], np.full((1, X.shape[1]), 5.0)]))[None]
        st.update(torch.tensor(x)[None], torch.tensor(post)[None], mask, m)
    return st


def test_per_token_weighted_statistics_against_numpy():
    X, D = _data(0)
    st = _stats(X, D, weighted=True)
    w = 1.0 / ((X + D) ** 2).sum(1)  # each token weighted by 1 / ||x_post||^2
    np.testing.assert_allclose(st.wxtx.numpy(), (X * w[:, None]).T @ X, rtol=1e-12)
    np.testing.assert_allclose(st.wxtd.numpy(), (X * w[:, None]).T @ D, rtol=1e-12)
    assert st.wdd == pytest.approx(float((w * (D * D).sum(1)).sum()), rel=1e-12)
    np.testing.assert_allclose(st.xtx.numpy(), X.T @ X, rtol=1e-12)
    assert st.n == len(X)


def test_a_singular_gram_is_solved_by_minimum_norm_least_squares(caplog):
    rng = np.random.default_rng(1)
    A = rng.normal(size=(3, 6))  # 3 tokens, 6 channels: A^T A has rank 3
    a, b = A.T @ A, rng.normal(size=(6, 2))
    with caplog.at_level(logging.INFO, logger=R.log.name):
        got = R.solve_psd(torch.tensor(a), torch.tensor(b)).numpy()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Gram matrix not positive definite; solving by least squares"]
    want = np.linalg.pinv(a) @ b
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    # a definite Gram takes the Cholesky path, silently
    caplog.clear()
    spd = a + np.eye(6)
    got = R.solve_psd(torch.tensor(spd), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got, np.linalg.solve(spd, b), rtol=1e-10)
    assert "not positive definite" not in caplog.text


@pytest.mark.parametrize("bias", [False, True])
def test_the_ghost_fit_records_its_residual_on_the_calibration_samples(bias):
    X, D = _data(2)
    st = _stats(X, D)
    op = R.fit_ghost(st, damp=1e-3, bias=bias)
    M = op.delta.numpy()
    fitted = X @ M + (op.bias.numpy() if bias else 0.0)
    want = ((fitted - D) ** 2).sum() / (D**2).sum()
    assert op.residual == pytest.approx(want, rel=1e-9)
    assert op.delta_sq == pytest.approx(float((D**2).sum()), rel=1e-12)
    assert 0 < op.residual < 1
    # the paper's operator has no bias unless asked for
    assert R.fit_ghost(st).bias is None and R.fit("ghost", st).bias is None


def test_a_channel_or_a_gap_with_no_energy_keeps_its_scale_at_one():
    X, D = _data(3)
    X[:, 0] = 0.0  # a dead channel entering the gap
    op = R.fit_diag(_stats(X, D))
    want = np.abs(X + D).sum(0)[1:] / np.abs(X).sum(0)[1:]
    assert float(op.scale[0]) == 1.0
    np.testing.assert_allclose(op.scale.numpy()[1:], want, rtol=1e-12)
    # small activations (sums of squares below 1) are still scaled by the ratio
    Xs, Ds = _data(4, scale=1e-3)
    assert (Xs**2).sum() < 1
    want = np.sqrt(((Xs + Ds) ** 2).sum() / (Xs**2).sum())
    assert R.fit_scale(_stats(Xs, Ds)).scale == pytest.approx(want, rel=1e-12)
    Z = np.zeros_like(Xs)
    assert R.fit_scale(_stats(Z, Ds)).scale == 1.0


def test_replaceme_folds_into_layer_0_of_a_gap_that_starts_at_1_only():
    X, D = _data(5)
    mlp = np.random.default_rng(6).normal(size=X.shape)
    op = R.fit_replaceme(_stats(X, D, start=1, end=2, mlp=mlp), damp=1e-4)
    assert op.start == 1 and op.delta.shape == (6, 6)
    with pytest.raises(ArchitectureError, match="keep layer 0 or use --recover ghost"):
        R.fit_replaceme(_stats(X, D, start=0, end=1), damp=1e-4)


def test_a_model_carrying_ghosts_is_not_pruned_again():
    """Its ghosts are keyed by the layers they precede; a second cut would shift the layers
    under them. Refused in one line, the model left as it was."""
    model = make_tiny("llama", num_layers=6, seed=0)
    ids = torch.randint(
        3, model.config.vocab_size, (4, 40), generator=torch.Generator().manual_seed(0)
    )
    batches = [Batch(ids, torch.ones_like(ids))]
    first = prune_model(model, adapter_for_model(model), [(3, 4)], "ghost", batches)
    ad = adapter_for_model(first.model)
    with torch.no_grad():
        before = first.model(input_ids=ids).logits
    for method in ("scale", "ghost", "none"):
        with pytest.raises(InputError, match="carries ghost operators already.*every gap"):
            prune_model(first.model, ad, [(1, 2)], method, batches)
    assert len(ad.layers(first.model)) == 5
    with torch.no_grad():
        assert torch.equal(first.model(input_ids=ids).logits, before)


def test_the_fold_itself_refuses_a_normalised_mlp_output():
    """fold_replaceme is public API: called directly on Gemma-2 (whose MLP output is
    normalised before the residual add) it refuses with the fix, not a wrong fold."""
    from layergraft.prune.fold import fold_replaceme

    model = make_tiny("gemma2", num_layers=4, seed=0)
    ad = adapter_for_model(model)
    op = R.Operator(
        "replaceme", 2, 3, "replaceme", delta=torch.eye(ad.hidden_size, dtype=torch.float64)
    )
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ArchitectureError) as err:
        fold_replaceme(ad, model, op, 1)
    assert str(err.value).endswith(
        "normalises the MLP output before adding it to the residual, so ReplaceMe cannot be "
        "folded into its down projection; use --recover ghost"
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
