"""``residual-greedy`` where a candidate lies downstream of a second, separate gap (issue 34).

A candidate's residual is fitted on the stream the model pruned so far gives it. Upstream of
it, every earlier gap is repaired by a ghost that a *sequential* fit installed: each gap's
operator fitted on the stream of the model already pruned of the gaps before it. A greedy
that refitted the earlier gaps on the dense model's streams instead gives the same numbers
for the first gap and for candidates beside a gap; it differs only for a candidate behind a
second gap it does not touch. So the cases here have one (chosen layers 1 and 3 of 6: layer 5
is behind gap 3:4), and the reference is written out by hand in plain torch: ghosts are
``x -> x (I + M)`` modules put in place of the gaps' layers, ``M`` solved from masked
activations caught by hooks, the greedy choice recomputed from those residuals. No part of
:mod:`layergraft.prune` is used for the reference.
"""

from __future__ import annotations

import copy

import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.prune.greedy import greedy_residual, score_step
from layergraft.text import Batch
from tiny import make_tiny

N_LAYERS, DAMP = 6, 1e-3


def _batches() -> list[Batch]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(2):
        ids = torch.randint(3, 128, (8, 16), generator=g)
        mask = torch.ones(8, 16, dtype=torch.long)
        mask[-1, 8:] = 0  # right padding: never a sample
        out.append(Batch(ids, mask))
    return out


class HandGhost(torch.nn.Module):
    """``x -> x + x M`` in place of a gap's layers (the decoder loop passes it the stream)."""

    def __init__(self, m: torch.Tensor) -> None:
        super().__init__()
        self.m = m

    def forward(self, hidden_states, *args, **kwargs):
        x = hidden_states.double()
        return (x + x @ self.m).to(hidden_states.dtype)


def _merged(layers: list[int]) -> list[tuple[int, int]]:
    gaps: list[list[int]] = []
    for i in sorted(layers):
        if gaps and gaps[-1][1] == i:
            gaps[-1][1] = i + 1
        else:
            gaps.append([i, i + 1])
    return [(a, b) for a, b in gaps]


def _entering(model, modules, batches) -> dict[int, torch.Tensor]:
    """The masked float64 stream entering each of ``modules`` (index -> module), and with
    index ``len(layers)`` the stream after the last layer: ``[tokens, d]``."""
    got: dict[int, list] = {}
    hooks = [
        mod.register_forward_pre_hook(
            lambda _m, a, kw, i=i: got.setdefault(i, []).append(
                (a[0] if a else kw["hidden_states"]).detach()
            ),
            with_kwargs=True,
        )
        for i, mod in modules.items()
    ]
    layers = model.model.layers
    hooks.append(layers[-1].register_forward_hook(
        lambda _m, _a, out: got.setdefault(-1, []).append(
            (out[0] if isinstance(out, tuple) else out).detach()
        )
    ))  # fmt: skip
    with torch.no_grad():
        for b in batches:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    for h in hooks:
        h.remove()
    masks = [b.attention_mask.bool() for b in batches]
    return {
        i: torch.cat([x[m] for x, m in zip(xs, masks, strict=True)]).double()
        for i, xs in got.items()
    }


def _dense_boundaries(dense, batches) -> dict[int, torch.Tensor]:
    layers = dense.model.layers
    s = _entering(dense, dict(enumerate(layers)), batches)
    s[len(layers)] = s.pop(-1)
    return s


def _with_ghosts(dense, ghosts: dict[tuple[int, int], torch.Tensor]):
    """``dense`` with each gap's layers replaced by one :class:`HandGhost`; the returned map
    gives the module now standing where each original layer index starts."""
    model = copy.deepcopy(dense)
    new, where = [], {}
    i = 0
    while i < N_LAYERS:
        gap = next(((a, b) for (a, b) in ghosts if a == i), None)
        where[i] = len(new)
        if gap is None:
            new.append(model.model.layers[i])
            i += 1
        else:
            new.append(HandGhost(ghosts[gap]))
            i = gap[1]
    model.model.layers = torch.nn.ModuleList(new)
    return model, {i: new[p] for i, p in where.items()}


def _solve(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``argmin ||X M - (Y - X)||^2 + lam ||M||^2``, ``lam = damp * tr(X^T X) / d``."""
    xtx = x.T @ x
    lam = DAMP * float(xtx.diagonal().sum()) / xtx.shape[0]
    return torch.linalg.solve(xtx + lam * torch.eye(xtx.shape[0], dtype=xtx.dtype), x.T @ (y - x))


def _hand_residual(dense, dense_y, batches, chosen: list[int], o: int) -> float:
    """The residual of removing ``o`` from the model pruned of ``chosen``: every gap before
    ``o``'s (merged) gap fitted sequentially, by hand, then ``o``'s gap fitted on the stream
    entering it and scored against the dense stream at its end."""
    gaps = _merged([*chosen, o])
    a, b = next(g for g in gaps if g[0] <= o < g[1])
    ghosts: dict[tuple[int, int], torch.Tensor] = {}
    for g in [g for g in gaps if g[1] <= a] + [(a, b)]:
        model, at = _with_ghosts(dense, ghosts)  # the gaps fitted so far, the rest dense
        x = _entering(model, {g[0]: at[g[0]]}, batches)[g[0]]
        m = _solve(x, dense_y[g[1]])
        ghosts[g] = m
    delta = dense_y[b] - x
    return float(((x @ m - delta) ** 2).sum() / (delta**2).sum())


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    dense = make_tiny("llama", num_layers=N_LAYERS, seed=23)
    batches = _batches()
    return dense, adapter_for_model(dense), batches, _dense_boundaries(dense, batches)


@pytest.mark.parametrize("chosen", [[1, 3], [0, 2]])
def test_candidates_behind_a_second_gap_see_the_sequential_fit(setup, chosen):
    dense, ad, batches, dense_y = setup
    got = {c["layer"]: c["residual"] for c in score_step(dense, ad, batches, chosen, damp=DAMP)}
    assert set(got) == set(range(N_LAYERS)) - set(chosen)
    behind = [o for o in got if o > max(chosen) + 1]  # behind the second gap, not touching it
    assert behind
    for o in got:
        ref = _hand_residual(dense, dense_y, batches, chosen, o)
        assert got[o] == pytest.approx(ref, rel=1e-4, abs=1e-8), (chosen, o)


def test_greedy_choice_matches_a_hand_greedy(setup):
    dense, ad, batches, dense_y = setup
    gaps, steps = greedy_residual(dense, ad, batches, 3, damp=DAMP)
    chosen: list[int] = []
    for st in steps:
        ref = {
            o: _hand_residual(dense, dense_y, batches, chosen, o)
            for o in range(N_LAYERS)
            if o not in chosen
        }
        got = {c["layer"]: c["residual"] for c in st["candidates"]}
        assert got == pytest.approx(ref, rel=1e-4, abs=1e-8), st["step"]
        assert st["layer"] == min(ref, key=lambda o: (ref[o], o))
        chosen.append(st["layer"])
    assert gaps == _merged(chosen)
