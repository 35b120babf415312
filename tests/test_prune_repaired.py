"""Selection by the repaired model's calibration loss (issue 35): every candidate's loss against a
plain transformers forward of the model with the layers deleted by hand and the ghost's map
applied by a pre-hook written here (the map fitted by numpy on hand-hooked activations), the pick
against the argmin of those references, the greedy step on a pruned model, and the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layergraft.arch import adapter_for_model
from layergraft.cli import main
from layergraft.errors import InputError
from layergraft.prune.cut import merge_adjacent
from layergraft.prune.greedy import pruned_copy
from layergraft.prune.job import resolve_gaps
from layergraft.prune.repaired import greedy_loss, heldin, loss_scores, loss_step, split_rows
from layergraft.text import Batch
from layergraft.toy.tokenizer import save_tokenizer
from tiny import make_tiny, save_tiny

DAMP = 1e-3


def _batches(seed: int = 0, n: int = 3, rows: int = 8, width: int = 16) -> list[Batch]:
    """Right-padded rows (the last row of each batch half padding)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 128, (rows, width), generator=g)
        mask = torch.ones(rows, width, dtype=torch.long)
        mask[-1, width // 2 :] = 0
        out.append(Batch(ids, mask))
    return out


def _states(model, batches, points: dict[str, int]) -> dict[str, np.ndarray]:
    """The residual stream entering decoder layer ``i`` of ``model`` (before any other
    pre-hook: ``prepend``) at every real token, float64, by plain hooks: ``{name: [n, d]}``;
    ``i`` equal to the layer count: the last layer's output."""
    layers = model.model.layers
    got: dict[str, list] = {k: [] for k in points}
    hs = []
    for k, i in points.items():
        if i < len(layers):

            def pre(_m, a, kw, k=k):
                got[k].append((a[0] if a else kw["hidden_states"]).detach())

            hs.append(layers[i].register_forward_pre_hook(pre, with_kwargs=True, prepend=True))
        else:

            def post(_m, _a, out, k=k):
                got[k].append((out[0] if isinstance(out, tuple) else out).detach())

            hs.append(layers[-1].register_forward_hook(post))
    try:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    masks = [b.attention_mask.bool() for b in batches]
    return {k: torch.cat([t[m] for t, m in zip(v, masks, strict=True)]).double().numpy() for k, v in got.items()}  # fmt: skip


def _ridge(X: np.ndarray, Y: np.ndarray, damp: float) -> torch.Tensor:
    """M of the ghost fit by numpy: argmin ‖X M − (Y − X)‖² + λ‖M‖², λ = damp·tr(XᵀX)/d."""
    lam = damp * np.trace(X.T @ X) / X.shape[1]
    return torch.from_numpy(np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ (Y - X)))


def _cut(model, s: int, e: int, m: torch.Tensor, clear_hooks: bool = False):
    """A copy of ``model`` without decoder layers [s, e) (ModuleList surgery, config and
    ``layer_idx`` fixed by hand) and ``h + h·m`` on the stream entering position ``s`` (the
    final norm when the block was at the end); ``clear_hooks``: drop the pre-hooks of the layer
    that moves into position ``s`` first (a ghost the new one replaces)."""
    ref = copy.deepcopy(model)
    kept = [layer for i, layer in enumerate(ref.model.layers) if not s <= i < e]
    ref.model.layers = torch.nn.ModuleList(kept)
    ref.config.num_hidden_layers = len(kept)
    if getattr(ref.config, "layer_types", None) is not None:
        ref.config.layer_types = [t for i, t in enumerate(ref.config.layer_types) if not s <= i < e]
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    target = kept[s] if s < len(kept) else ref.model.norm
    if clear_hooks:
        target._forward_pre_hooks.clear()
    mf = m.float()

    def hook(_m, a, kw):
        h = a[0] if a else kw["hidden_states"]
        y = (h.float() + h.float() @ mf).to(h.dtype)
        return ((y, *a[1:]), kw) if a else (a, {**kw, "hidden_states": y})

    target.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    return ref


def _ce(model, rows: list[Batch]) -> float:
    """Mean next-token cross-entropy at every position whose next token is real, by F."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in rows:
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits  # fmt: skip
            keep = (b.attention_mask[:, :-1] * b.attention_mask[:, 1:]).bool()
            lp = logits[:, :-1][keep].double()
            total += float(F.cross_entropy(lp, b.input_ids[:, 1:][keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


@pytest.mark.parametrize(
    ("fam", "holdout"), [("llama", False), ("gemma3_text", False), ("llama", True)]
)
def test_block_loss_equals_a_plain_forward_of_the_cut_model(fam, holdout):
    """``holdout``: the map fitted on the rows after the scored ones only."""
    model = make_tiny(fam, num_layers=5, seed=3)
    ad = adapter_for_model(model)
    batches = _batches()
    rows, rest = split_rows(batches, 11)  # across the first batch's padded last row into the second
    assert [int(b.input_ids.shape[0]) for b in rows] == [8, 3]
    assert [int(b.input_ids.shape[0]) for b in rest] == [5, 8]
    H = _states(model, rest if holdout else batches, {str(i): i for i in range(6)})
    sc = loss_scores(model, ad, batches, block=2, damp=DAMP, rows=11, holdout=holdout)
    assert sc.metric == "loss" and [r for r, _ in sc.blocks] == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert sc.n_tokens == len(H["0"]) and sc.info["holdout"] == holdout
    ref = {}
    for s, e in (r for r, _ in sc.blocks):
        ref[(s, e)] = _ce(_cut(model, s, e, _ridge(H[str(s)], H[str(e)], DAMP)), rows)
    for r, loss in sc.blocks:
        assert loss == pytest.approx(ref[r], abs=1e-5), r
    assert sc.best == min(ref, key=ref.get)
    assert sc.info["dense_loss"] == pytest.approx(_ce(model, rows), abs=1e-5)
    assert sc.info["heldin_tokens"] == 10 * 15 + 7


@pytest.mark.parametrize(("chosen", "holdout"), [([3], False), ([1, 2], False), ([2], True)])
def test_greedy_step_equals_the_cut_pruned_model(chosen, holdout):
    """Each candidate on a pruned model: the ghost fitted on the pruned stream before any ghost
    at its position, targets from the dense model; a ghost right after it replaced."""
    dense = make_tiny("llama", num_layers=6, seed=11)
    ad = adapter_for_model(dense)
    batches = _batches(seed=2, n=2)
    gaps = merge_adjacent([(i, i + 1) for i in chosen])
    fit_on = split_rows(batches, 5)[1] if holdout else batches
    work = pruned_copy(dense, ad, gaps, fit_on, DAMP)
    got = {c["layer"]: c for c in loss_step(dense, ad, batches, chosen, damp=DAMP, rows=5, holdout=holdout)}  # fmt: skip
    assert set(got) == set(range(6)) - set(chosen)
    kept = [i for i in range(6) if i not in chosen]
    ref = {}
    for o in kept:
        p = kept.index(o)
        b = next((e for s, e in gaps if s == o + 1), o + 1)
        X = _states(work, fit_on, {"x": p})["x"]
        Y = _states(dense, fit_on, {"y": b})["y"]
        ref[o] = _ce(
            _cut(work, p, p + 1, _ridge(X, Y, DAMP), clear_hooks=b > o + 1), heldin(batches, 5)
        )
        assert got[o]["score"] == pytest.approx(ref[o], abs=1e-5), o
    assert min(got.values(), key=lambda c: (c["score"], c["layer"]))["layer"] == min(ref, key=lambda o: (ref[o], o))  # fmt: skip


def test_greedy_takes_the_best_layer_each_step():
    dense = make_tiny("gemma3_text", num_layers=5, seed=5)
    ad = adapter_for_model(dense)
    batches = _batches(seed=4, n=2)
    gaps, steps = greedy_loss(dense, ad, batches, 2, damp=DAMP, rows=8)
    assert [s["step"] for s in steps] == [1, 2]
    chosen = []
    for st in steps:
        best = min(st["candidates"], key=lambda c: (c["score"], c["layer"]))
        assert st["layer"] == best["layer"] and len(st["candidates"]) == 5 - len(chosen)
        chosen.append(st["layer"])
    assert gaps == merge_adjacent([(i, i + 1) for i in chosen])
    # the first step is the dense model's block-of-1 loss
    first = loss_scores(dense, ad, batches, block=1, damp=DAMP, rows=8)
    assert [c["score"] for c in steps[0]["candidates"]] == pytest.approx([s for _, s in first.blocks], abs=1e-9)  # fmt: skip
    # resolve_gaps (the default 8 held-in rows) records the same choice
    again, how = resolve_gaps(dense, ad, batches, None, 2, "loss-greedy", damp=DAMP)
    assert again == gaps and how["metric"] == "loss-greedy" and how["damp"] == DAMP


def test_resolve_gaps_loss_picks_the_lowest_block():
    dense = make_tiny("qwen2", num_layers=5, seed=1)
    ad = adapter_for_model(dense)
    batches = _batches(seed=6)
    gaps, how = resolve_gaps(dense, ad, batches, None, 2, "loss", damp=DAMP, max_boundaries=2)
    best = min(how["scores"], key=lambda b: b["score"])
    assert (
        gaps == [tuple(int(x) for x in best["range"].split(":"))] and how["loss"] == best["score"]
    )
    one = loss_scores(dense, ad, batches, block=2, damp=DAMP)
    assert [s for _, s in one.blocks] == pytest.approx(
        [b["score"] for b in how["scores"]], abs=1e-12
    )
    with pytest.raises(InputError, match="at least 1 calibration row"):
        heldin(batches, 0)
    with pytest.raises(InputError, match="after the first 24, and there are none"):
        loss_scores(dense, ad, batches, block=2, rows=24, holdout=True)


# ---- commands ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = save_tiny("llama", tmp_path_factory.mktemp("loss") / "m", num_layers=5, seed=2)
    save_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from layergraft.text import DEFAULT_CALIB

    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(DEFAULT_CALIB.read_text()[:3000])
    return p


def test_cli_scores_and_prune_by_loss(tiny_dir, calib, tmp_path, capsys):
    args = ["scores", str(tiny_dir), "--data", str(calib), "--calib-tokens", "512", "--seqlen", "64", "--block", "2"]  # fmt: skip
    assert main([*args, "--metric", "loss", "--json", "--damp", "1e-3"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["metric"] == "loss" and res["damp"] == 1e-3 and len(res["blocks"]) == 4
    best = min(res["blocks"], key=lambda b: b["score"])["range"]
    assert res["best"] == best and all(b["ppl"] > 1 for b in res["blocks"])
    out = tmp_path / "p"
    argv = ["prune", str(tiny_dir), "--auto", "2", "--metric", "loss", "--calib", str(calib),
            "--calib-tokens", "512", "--seqlen", "64", "--damp", "1e-3", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((out / "layergraft.json").read_text())["details"]
    assert rec["selection"]["metric"] == "loss" and rec["removed"] == best


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--auto", "2", "--metric", "loss", "--normalise", "token"], "--normalise applies to"),
        (
            ["--remove", "1:2", "--metric", "loss-greedy"],
            "--metric loss-greedy chooses the layers of --auto N",
        ),  # fmt: skip
    ],
)
def test_cli_misuse_is_one_line_exit_2(tiny_dir, calib, capsys, extra, says):
    argv = ["compare-recovery", str(tiny_dir), "--calib", str(calib), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_cli_scores_refuses_normalise_with_loss(tiny_dir, calib, capsys):
    argv = ["scores", str(tiny_dir), "--data", str(calib), "--metric", "loss", "--normalise", "token"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--normalise applies to --metric residual" in err and len(err.splitlines()) == 1
