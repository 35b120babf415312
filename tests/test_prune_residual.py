"""Selection by the ghost fit's own residual (issue 21): block scores against a numpy ridge fit on
activations hooked by hand, the greedy scattered selection against a brute-force search on
sequentially pruned models, the memory bound, and the CLI around them."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.cli import main
from layergraft.errors import InputError
from layergraft.prune.cut import merge_adjacent
from layergraft.prune.fold import residual_writers
from layergraft.prune.greedy import greedy_residual, score_step
from layergraft.prune.model import prune_model
from layergraft.prune.residual import boundary_bytes, check_memory, residual_scores
from layergraft.text import Batch
from layergraft.toy.tokenizer import save_tokenizer
from tiny import make_tiny, save_tiny

D = 32  # tiny.HIDDEN


def _batches(seed: int = 0, n: int = 3, rows: int = 16, width: int = 12) -> list[Batch]:
    """Right-padded rows (the last row of each batch half padding): enough rows that even one
    sample per row (``tokens="last"``) gives more samples than channels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 128, (rows, width), generator=g)
        mask = torch.ones(rows, width, dtype=torch.long)
        mask[-1, width // 2 :] = 0
        out.append(Batch(ids, mask))
    return out


def _hooked_states(model, batches, tokens="all"):
    """Residual stream entering every layer, and after the last, by plain forward hooks on a
    plain transformers forward: ``{boundary: [n, d] float64}`` at the sampled positions."""
    layers = model.model.layers
    got: dict[int, list] = {}
    hs = []
    for i, layer in enumerate(layers):
        hs.append(
            layer.register_forward_pre_hook(
                lambda _m, a, kw, i=i: got.setdefault(i, []).append(
                    (a[0] if a else kw["hidden_states"]).detach()
                ),
                with_kwargs=True,
            )
        )
    last = len(layers)
    hs.append(
        layers[-1].register_forward_hook(
            lambda _m, _a, out: got.setdefault(last, []).append(
                (out[0] if isinstance(out, tuple) else out).detach()
            )
        )
    )
    masks = []
    try:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
                m = b.attention_mask.bool()
                if tokens == "last":
                    keep = torch.zeros_like(m)
                    keep[torch.arange(m.shape[0]), m.sum(1) - 1] = True  # right padding
                    m = keep
                masks.append(m)
    finally:
        for h in hs:
            h.remove()
    return {
        k: torch.cat([t[m] for t, m in zip(v, masks, strict=True)]).double().numpy()
        for k, v in got.items()
    }


def _ridge_residual(X: np.ndarray, Y: np.ndarray, damp: float, norm: str = "delta") -> float:
    """For the ridge fit M, by numpy on the stacked samples: ‖X M − Δ‖² / ‖Δ‖² (``delta``) or
    the mean over samples of ‖x M − Δ‖² / ‖y‖² (``token``)."""
    Dl = Y - X
    lam = damp * np.trace(X.T @ X) / X.shape[1]
    M = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ Dl)
    err = ((X @ M - Dl) ** 2).sum(1)
    if norm == "token":
        return float((err / (Y**2).sum(1)).mean())
    return float(err.sum() / (Dl**2).sum())


# ---- contiguous blocks -----------------------------------------------------------------------
@pytest.mark.parametrize("fam", ["llama", "gemma2"])
@pytest.mark.parametrize("tokens", ["all", "last"])
@pytest.mark.parametrize("norm", ["delta", "token"])
def test_block_residual_equals_numpy_ridge(fam, tokens, norm):
    model = make_tiny(fam, num_layers=5, seed=3)
    ad = adapter_for_model(model)
    batches = _batches()
    H = _hooked_states(model, batches, tokens)
    for damp in (1e-4, 1e-2):
        sc = residual_scores(model, ad, batches, block=2, tokens=tokens, damp=damp, norm=norm)
        assert sc.metric == "residual" and sc.tokens == tokens and sc.lower_is_removable
        assert sc.n_tokens == len(H[0]) and sc.info["normalise"] == norm
        assert [r for r, _ in sc.blocks] == [(0, 2), (1, 3), (2, 4), (3, 5)]
        ref = {(s, e): _ridge_residual(H[s], H[e], damp, norm) for (s, e), _ in sc.blocks}
        for (s, e), r in sc.blocks:
            assert r == pytest.approx(ref[(s, e)], rel=1e-7, abs=1e-12)
        assert sc.best == min(ref, key=ref.get)
        if norm == "token":  # both numbers are kept, whichever ranks
            for ((s, e), _), info in zip(sc.blocks, sc.block_info, strict=True):
                assert info["residual"] == pytest.approx(_ridge_residual(H[s], H[e], damp), rel=1e-7)  # fmt: skip


def test_identity_block_has_zero_residual_and_is_chosen():
    model = make_tiny("llama", num_layers=5, seed=9)
    ad = adapter_for_model(model)
    with torch.no_grad():
        for i in (2, 3):
            for mod, _ in residual_writers(ad, model, i):
                mod.weight.zero_()
    sc = residual_scores(model, ad, _batches(), block=2)
    assert sc.best == (2, 4) and dict(sc.blocks)[(2, 4)] == 0.0
    assert all(0.0 <= r <= 1.0 for _, r in sc.blocks)


def test_max_boundaries_splits_the_pass_not_the_numbers():
    model = make_tiny("qwen2", num_layers=6, seed=1)
    ad = adapter_for_model(model)
    b = _batches()
    one = residual_scores(model, ad, b, block=1)
    split = residual_scores(model, ad, b, block=1, max_boundaries=2)
    assert one.info["passes"] == 1 and split.info["passes"] == 3
    assert split.info["stats_bytes"] == 2 * boundary_bytes(D) == 2 * 2 * 8 * D * D
    assert boundary_bytes(D, "token") == 4 * 8 * D * D
    assert [r for _, r in one.blocks] == pytest.approx([r for _, r in split.blocks], rel=1e-12)


def test_fewer_samples_than_channels_is_refused_with_the_minimum():
    model = make_tiny("llama", num_layers=4, seed=1)
    ad = adapter_for_model(model)
    few = _batches(n=1, rows=8, width=12)  # 8 rows: 8 samples with tokens="last"
    with pytest.raises(InputError, match=r"8 samples .* fewer than the hidden size 32.*at least 32 rows \(--calib-tokens 384 at --seqlen 12\)"):  # fmt: skip
        residual_scores(model, ad, few, block=1, tokens="last")
    tiny = [Batch(torch.randint(3, 100, (1, 20)), torch.ones(1, 20, dtype=torch.long))]
    with pytest.raises(InputError, match=r"20 calibration tokens, fewer than the hidden size 32.*--calib-tokens to at least 32"):  # fmt: skip
        residual_scores(model, ad, tiny, block=1)


# ---- the memory bound --------------------------------------------------------------------------
def test_memory_bound_refuses_d8192_on_a_small_machine_and_names_the_fix():
    """d = 8192, 80 layers, blocks of 4: 77 boundaries × 2 × 8192² × 8 bytes = 77 GiB."""
    gib = 2**30
    assert boundary_bytes(8192) == gib
    with pytest.raises(InputError) as e:
        check_memory({"cpu": 77}, 8192, available=lambda _d: 16 * gib)
    msg = str(e.value)
    assert "77 boundaries" in msg and "77.00 GiB" in msg and "16.00 GiB available" in msg
    assert "--max-boundaries 12" in msg and "--block" in msg  # 0.8 × 16 GiB / 1 GiB
    check_memory({"cpu": 77}, 8192, max_boundaries=12, available=lambda _d: 16 * gib)
    with pytest.raises(InputError, match=r"free memory .*one boundary alone needs 1.00 GiB"):
        check_memory({"cpu": 77}, 8192, max_boundaries=1, available=lambda _d: gib // 2)
    check_memory({"meta": 10**6}, 8192, available=lambda _d: None)  # unknown: not refused
    with pytest.raises(InputError, match="--max-boundaries must be at least 1"):
        check_memory({"cpu": 1}, 64, max_boundaries=0)


# ---- greedy scattered selection --------------------------------------------------------------
def _reference_residual(
    dense, batches, chosen: list[int], o: int, damp: float, norm: str = "delta"
) -> float:
    """The residual of the operator that a sequential ghost fit of ``chosen + [o]`` installs
    for the gap holding ``o``: its input and output caught by a hook on the ghost module
    itself, the target by a hook on the dense model."""
    ad = adapter_for_model(dense)
    n = len(ad.layers(dense))
    gaps = merge_adjacent([(i, i + 1) for i in [*chosen, o]])
    a, b = next(g for g in gaps if g[0] <= o < g[1])
    work = copy.deepcopy(dense)
    prune_model(work, ad, gaps, "ghost", batches, damp=damp, sequential=True)
    pos = a - sum(e - s for s, e in gaps if e <= a)
    ghost = work.layergraft_ghosts[str(pos)]
    seen: list = []
    h = ghost.register_forward_hook(lambda _m, a_, out: seen.append((a_[0].detach(), out.detach())))
    with torch.no_grad():
        for bt in batches:
            work(input_ids=bt.input_ids, attention_mask=bt.attention_mask, use_cache=False)
    h.remove()
    Y = _hooked_states(dense, batches)[b]
    m = [bt.attention_mask.bool() for bt in batches]
    X = torch.cat([x[k] for (x, _), k in zip(seen, m, strict=True)]).double().numpy()
    out = torch.cat([y[k] for (_, y), k in zip(seen, m, strict=True)]).double().numpy()
    assert b <= n
    err = ((out - Y) ** 2).sum(1)
    if norm == "token":
        return float((err / (Y**2).sum(1)).mean())
    return float(err.sum() / ((Y - X) ** 2).sum())


@pytest.mark.parametrize("fam", ["gemma2"])  # llama: the step tests below
def test_greedy_is_exact_on_the_pruned_model(fam):
    dense = make_tiny(fam, num_layers=6, seed=7)
    ad = adapter_for_model(dense)
    batches = _batches(seed=1, n=2, rows=8, width=16)
    damp = 1e-3
    gaps, steps = greedy_residual(dense, ad, batches, 3, damp=damp)
    chosen: list[int] = []
    for st in steps:
        ref = {o: _reference_residual(dense, batches, chosen, o, damp) for o in range(6) if o not in chosen}  # fmt: skip
        got = {c["layer"]: c["residual"] for c in st["candidates"]}
        assert set(got) == set(ref)
        for o in ref:
            assert got[o] == pytest.approx(ref[o], rel=2e-4, abs=1e-7), (st["step"], o)
        assert st["layer"] == min(ref, key=lambda o: (ref[o], o))
        chosen.append(st["layer"])
    assert gaps == merge_adjacent([(i, i + 1) for i in chosen])
    # the first step is the dense model's block-of-1 residual
    first = residual_scores(dense, ad, batches, block=1, damp=damp)
    assert [c["residual"] for c in steps[0]["candidates"]] == pytest.approx(
        [r for _, r in first.blocks], rel=1e-10
    )


@pytest.mark.parametrize(
    ("chosen", "norm"), [([2], "delta"), ([1, 2], "token"), ([2, 4], "delta"), ([0, 5], "token")]
)
def test_step_residuals_on_a_pruned_model(chosen, norm):
    """Every candidate beside a removed gap: widening it from the left (the target moves),
    from the right (the fit starts before the gap's ghost) and joining two gaps."""
    dense = make_tiny("llama", num_layers=6, seed=11)
    ad = adapter_for_model(dense)
    batches = _batches(seed=2, n=2, rows=8, width=16)
    got = {c["layer"]: c for c in score_step(dense, ad, batches, chosen, damp=1e-3, norm=norm)}
    assert set(got) == set(range(6)) - set(chosen)
    for o, c in got.items():
        assert c["score"] == pytest.approx(_reference_residual(dense, batches, chosen, o, 1e-3, norm), rel=2e-4, abs=1e-7), o  # fmt: skip


# ---- commands ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = save_tiny("llama", tmp_path_factory.mktemp("res") / "m", num_layers=5, seed=2)
    save_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from layergraft.text import DEFAULT_CALIB

    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(DEFAULT_CALIB.read_text()[:3000])
    return p


def test_cli_scores_residual_json_table_and_plot(tiny_dir, calib, tmp_path, capsys):
    png = tmp_path / "r.png"
    args = [
        "scores",
        str(tiny_dir),
        "--data",
        str(calib),
        "--seqlen",
        "64",
        "--calib-tokens",
        "512",
    ]
    assert main([*args, "--metric", "residual", "--block", "2", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "residual scores, blocks of 2 (lower = more removable)" in out
    assert png.stat().st_size > 1000
    assert main([*args, "--metric", "residual", "--json", "--max-boundaries", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["metric"] == "residual" and res["passes"] == 3 and res["damp"] == 1e-4
    assert len(res["blocks"]) == 5 and all("stream_residual" in b for b in res["blocks"])
    assert main([*args, "--metric", "residual", "--json", "--normalise", "token"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["normalise"] == "token" and res["stats_bytes"] == 5 * 4 * 8 * D * D
    assert all(b["score"] == b["token_residual"] for b in res["blocks"])


def test_cli_prune_auto_residual_records_the_selection(tiny_dir, calib, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["prune", str(tiny_dir), "--auto", "2", "--metric", "residual", "--calib", str(calib),
            "--calib-tokens", "512", "--seqlen", "64", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((out / "layergraft.json").read_text())["details"]
    sel = rec["selection"]
    assert sel["metric"] == "residual" and sel["auto"] == 2
    assert rec["removed"] == min(sel["scores"], key=lambda b: b["score"])["range"]
    assert rec["operators"][0]["residual"] == pytest.approx(sel["residual"], rel=1e-9)


def test_cli_compare_residual_greedy(tiny_dir, calib, capsys):
    argv = ["compare-recovery", str(tiny_dir), "--auto", "2", "--metric", "residual-greedy",
            "--sequential", "--calib", str(calib), "--calib-tokens", "512", "--seqlen", "64",
            "--heldout", str(calib), "--ppl-tokens", "256", "--json", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    steps = res["selection"]["steps"]
    assert len(steps) == 2 and res["fit"] == "sequential"
    chosen = sorted(s["layer"] for s in steps)
    assert res["removed"] == ",".join(f"{s}:{e}" for s, e in merge_adjacent([(i, i + 1) for i in chosen]))  # fmt: skip
    ghost = next(r for r in res["rows"] if r["method"] == "ghost")
    # the last step's residual is the residual of the operator the sequential fit installs
    last = steps[-1]
    op = next(o for o in ghost["operators"] if o["range"] == last["gap"])
    assert op["residual"] == pytest.approx(last["residual"], rel=1e-6)


# ---- generation check of pruned models ---------------------------------------------------------
def _hf_greedy(model, tok, prompt: str, budget: int) -> tuple[str, bool]:
    """A greedy chat reply by plain ``model.generate``: the text up to the first stop token,
    and whether one came within ``budget`` new tokens."""
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(ids, add_special_tokens=False, return_tensors="pt")["input_ids"]
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    eos.add(tok.eos_token_id)
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=budget, eos_token_id=sorted(eos),
                             pad_token_id=tok.pad_token_id or 0)[0, ids.shape[1]:].tolist()  # fmt: skip
    stop = next((i for i, t in enumerate(out) if t in eos), None)
    body = out if stop is None else out[:stop]
    return tok.decode(body, skip_special_tokens=True), stop is not None


def test_compare_gen_check_matches_plain_generate():
    """The toy post model (a chat template, an end-of-turn token): every row's replies equal
    greedy ``generate`` of the same model pruned on its own, and the rates are theirs."""
    from layergraft.gen.metrics.quality import qa_validity
    from layergraft.gen.tasks import load_task
    from layergraft.models.load import load_model, load_tokenizer
    from layergraft.prune.compare import compare_recovery
    from layergraft.prune.gencheck import GEN_TOKENS
    from layergraft.toy.build import toy_paths

    post = toy_paths()[1]
    model, tok = load_model(post), load_tokenizer(post)
    res = compare_recovery(
        (model, tok), remove="5:7", methods=["ghost", "none"], calib_tokens=1024, seqlen=128,
        ppl_max_tokens=256, gen_check=3,
    )  # fmt: skip
    assert [r["method"] for r in res["rows"]] == ["dense", "ghost", "none"]
    prompts = load_task("qa", limit=3)
    for row in res["rows"]:
        ref = copy.deepcopy(model)
        if row["method"] != "dense":
            ad = adapter_for_model(ref)
            prune_model(ref, ad, [(5, 7)], row["method"], _toy_batches(tok), damp=1e-4)
        gc = row["gen_check"]
        assert gc["prompts"] == 3 and len(gc["replies"]) == 3
        fin, val = [], []
        for p, got in zip(prompts, gc["replies"], strict=True):
            text, finished = _hf_greedy(ref, tok, p.prompt, GEN_TOKENS)
            assert got["text"] == text and got["finished"] == finished, (row["method"], p.id)
            fin.append(finished)
            val.append(qa_validity([text], p.valid, p.aliases))
        assert gc["finished_rate"] == sum(fin) / 3 and gc["valid_rate"] == sum(val) / 3
        assert gc["empty_rate"] == sum(not r["text"].strip() for r in gc["replies"]) / 3
    assert res["rows"][0]["gen_check"]["finished_rate"] == 1.0  # the post model ends its turn


def _toy_batches(tok):
    from layergraft.prune.job import calibration_batches
    from layergraft.text import DEFAULT_CALIB

    return calibration_batches(tok, DEFAULT_CALIB, n_tokens=1024, seqlen=128, batch_size=4)


def test_cli_compare_prints_the_generation_check(capsys):
    from layergraft.toy.build import toy_paths

    argv = ["compare-recovery", str(toy_paths()[1]), "--remove", "5:7", "--gen-check", "2",
            "--calib-tokens", "1024", "--seqlen", "128", "--ppl-tokens", "256", "--ppl-seqlen",
            "128", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[-3:] == ["finished_rate", "valid_rate", "empty_rate"]
    assert out[2].split()[0] == "dense" and len(out[2].split()) == 6
    assert out[-1] == "generation check: 2 QA prompts, greedy, at most 64 new tokens, chat template"
