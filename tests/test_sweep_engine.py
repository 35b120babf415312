"""The fast interval sweep (prefix reuse + growing base chain) equals the swap-based sweep."""

from __future__ import annotations

import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.errors import RangeError
from layergraft.models.batching import forward_logits
from layergraft.models.packing import PackItem, pack
from layergraft.models.runner import LayerRunner
from layergraft.slr.sweep.engines import (
    PostPrefix,
    Unit,
    carried_prefix_layers,
    enumerate_intervals,
    interval_key,
    plan_units,
    score_model,
    score_start,
    score_start_swap,
)
from layergraft.slr.sweep.selection import Rule, pareto_front, select
from tiny import LogitsProxy, make_tiny

FAMILIES = ["llama", "qwen2", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "phi3"]


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on one row
    mask[1, :1] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("fam", FAMILIES)
def test_runner_reproduces_the_model(fam):
    model = make_tiny(fam, num_layers=4, seed=3)
    ad = adapter_for_model(model)
    b = _batch(model.config.vocab_size)
    run = LayerRunner(model, ad, b["input_ids"], b["attention_mask"])
    # layer-by-layer replay from the embeddings reproduces the model's own forward
    h = run.run_from(0, run.hidden0, ad.layers(model))
    ref = forward_logits(model, b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(run.logits(h), ref, rtol=1e-6, atol=1e-6)
    # every position (the perplexity proxy reads them all) against a plain forward with the
    # positions written here; padded positions are not compared
    mask = b["attention_mask"]
    with torch.no_grad():
        plain = model(input_ids=b["input_ids"], attention_mask=mask, use_cache=False,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits  # fmt: skip
    every = run.logits(h, last_only=False)
    assert every.shape == plain.shape
    torch.testing.assert_close(every[mask.bool()], plain[mask.bool()], rtol=1e-5, atol=1e-5)
    # a packed batch has no "last position": it is read with log_probs at its own slots
    ((_, packed),) = pack([PackItem((5, 6, 7), ())], pad_id=0)
    with pytest.raises(ValueError, match=r"^a packed batch is read with log_probs\(\), at its"):
        LayerRunner(model, ad, packed).logits(h)


@pytest.mark.parametrize("fam", FAMILIES)
def test_fast_sweep_equals_swap_sweep(fam):
    post, base = make_tiny(fam, num_layers=4, seed=2), make_tiny(fam, num_layers=4, seed=1)
    ad = adapter_for_model(post)
    b = _batch(post.config.vocab_size)

    iv = enumerate_intervals(4)
    fast, slow = {}, {}
    for u in plan_units(4, iv, ()):
        if u.kind != "start":
            continue
        for e, row in score_start(post, base, ad, LogitsProxy(), [b], u.start, u.ends).items():
            fast[(u.start, e)] = row
        for e, row in score_start_swap(post, base, ad, LogitsProxy(), [b], u.start, u.ends).items():
            slow[(u.start, e)] = row
    assert fast.keys() == slow.keys() == set(iv)
    for r in iv:
        torch.testing.assert_close(fast[r]["logits"], slow[r]["logits"], rtol=1e-5, atol=1e-5)
    # the full-range hybrid is the base model itself (except embeddings/head from post)
    assert not torch.allclose(fast[(0, 4)]["logits"], fast[(0, 1)]["logits"])


@pytest.mark.parametrize("fam", ["llama", "gemma3_text", "gpt2"])
def test_a_post_prefix_carried_across_units_changes_no_number(fam):
    """Starts in any order, two batches, partial restores and interval soups between them:
    every row equals the swap engine's, and the post prefix runs once per batch when the
    starts ascend (a hook written here counts the post model's layer-0 calls)."""
    post, base = make_tiny(fam, num_layers=4, seed=2), make_tiny(fam, num_layers=4, seed=1)
    ad = adapter_for_model(post)
    b1 = _batch(post.config.vocab_size)
    b2 = {k: v[1:].flip(-1).contiguous() for k, v in b1.items()}
    b2["attention_mask"] = torch.ones_like(b2["input_ids"])
    order = [(2, "all", 1.0), (0, "all", 1.0), (3, "mlp", 1.0), (1, "all", 0.5), (3, "all", 1.0)]
    for budget in (1 << 30, 0):
        prefix = PostPrefix(post, ad, max_bytes=budget)
        for start, part, alpha in order:
            ends = tuple(range(start + 1, 5))
            args = (post, base, ad, LogitsProxy(), [b1, b2], start, ends, part, alpha)
            fast = score_start(*args, prefix=prefix)
            slow = score_start_swap(*args)
            for e in ends:
                torch.testing.assert_close(
                    fast[e]["logits"], slow[e]["logits"], rtol=1e-5, atol=1e-5
                )
    calls = []
    hook = ad.layers(post)[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        for prefix in (PostPrefix(post, ad), None):
            calls.clear()
            for start in (1, 2, 3):
                score_start(
                    post, base, ad, LogitsProxy(), [b1, b2], start, (start + 1,), prefix=prefix
                )
            assert len(calls) == (2 if prefix is not None else 6)  # once per batch vs per unit
    finally:
        hook.remove()


def test_the_plan_counts_the_layer_forwards_the_engine_runs():
    """Hooks written here count every decoder-layer call of both models over a whole sweep's
    start units; by hand for 4 layers: chains 4+3+2+1, post tails (3+2+1)+(2+1)+1, and the
    post prefix climbed once to start 3 (not 0+1+2+3 times)."""
    post, base = make_tiny("llama", num_layers=4, seed=2), make_tiny("llama", num_layers=4, seed=1)
    ad = adapter_for_model(post)
    units = [u for u in plan_units(4, enumerate_intervals(4), ()) if u.kind == "start"]
    assert carried_prefix_layers(units) == 3
    assert sum(u.cost(4) - u.start for u in units) + carried_prefix_layers(units) == 23
    calls = []
    hooks = [
        layer.register_forward_hook(lambda *a: calls.append(1))
        for m in (post, base)
        for layer in ad.layers(m)
    ]
    try:
        prefix = PostPrefix(post, ad)
        b = _batch(post.config.vocab_size)
        for u in units:
            score_start(post, base, ad, LogitsProxy(), [b], u.start, u.ends, prefix=prefix)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 23
    # a start below the last one climbs again from the embeddings
    back = [Unit("start", start=2, ends=(3,)), Unit("start", start=1, ends=(2,))]
    assert carried_prefix_layers(back) == 2 + 1
    again = [Unit("start", start=2, ends=(3,)), Unit("start", start=2, ends=(4,))]
    assert carried_prefix_layers(again) == 2
    # as a second part's starts do (plan_units: part by part, starts ascending in each)
    parts = plan_units(4, [(1, 2), (2, 3)], (), parts=("all", "mlp"))
    assert carried_prefix_layers(parts) == (1 + 1) + (1 + 1)


def test_enumerate_intervals_options():
    assert enumerate_intervals(3) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert enumerate_intervals(4, min_len=2, max_len=2) == [(0, 2), (1, 3), (2, 4)]
    assert enumerate_intervals(4, starts=[1], max_len=2) == [(1, 2), (1, 3)]
    assert len(enumerate_intervals(8)) == 36
    with pytest.raises(RangeError) as err:
        enumerate_intervals(4, min_len=3, max_len=2)
    assert str(err.value) == "interval lengths 3..2 are empty; need 1 <= --min-len <= --max-len"
    for bad in (9, 4, -1):  # layer 4 of a 4-layer model is one past the last
        with pytest.raises(RangeError) as err:
            enumerate_intervals(4, starts=[bad])
        assert str(err.value) == f"--starts {bad} is out of bounds: layers are 0..3"


def test_journal_keys_and_units_carry_parts_and_alpha():
    assert interval_key(1, 3) == "interval:1:3"
    assert interval_key(1, 3, "mlp") == "interval:1:3:mlp"
    assert interval_key(1, 3, alpha=0.5) == "interval:1:3@0.5"
    assert interval_key(1, 3, "attn", 0.25) == "interval:1:3:attn@0.25"
    units = plan_units(4, [(1, 2), (1, 3), (2, 3)], (0.5,), parts=("mlp", "all"), alphas=(0.5, 1.0))
    starts = [(u.parts, u.alpha, u.start, u.ends) for u in units if u.kind == "start"]
    assert starts == [
        ("mlp", 1.0, 1, (2, 3)), ("mlp", 1.0, 2, (3,)), ("mlp", 0.5, 1, (2, 3)),
        ("mlp", 0.5, 2, (3,)), ("all", 1.0, 1, (2, 3)), ("all", 1.0, 2, (3,)),
        ("all", 0.5, 1, (2, 3)), ("all", 0.5, 2, (3,)),
    ]  # fmt: skip
    assert units[-1].kind == "soup" and units[-1].alpha == 0.5
    assert units[2].keys == ["interval:1:2:mlp", "interval:1:3:mlp"]
    assert units[4].keys == ["interval:1:2:mlp@0.5", "interval:1:3:mlp@0.5"]
    # decoder-layer forwards per batch: the swap engine runs every hybrid from layer 0
    assert units[2].cost(4, prefix_reuse=False) == 8
    assert units[2].cost(4) == 1 + 2 + (2 + 1)


def test_score_model_finds_the_adapter_and_honours_a_users_function():
    post = make_tiny("llama", num_layers=3, seed=2)
    b = _batch(post.config.vocab_size)
    with_adapter = score_model(post, LogitsProxy(), [b], adapter_for_model(post))
    without = score_model(post, LogitsProxy(), [b])
    torch.testing.assert_close(with_adapter["logits"], without["logits"], rtol=0, atol=0)

    class Own:
        def score_model(self, model):
            return {"V": float(model.config.num_hidden_layers)}

    assert score_model(post, Own(), []) == {"V": 3.0}


def test_the_post_prefix_keeps_the_latest_streams_within_its_budget():
    post = make_tiny("llama", num_layers=4, seed=2)
    ad = adapter_for_model(post)
    b1 = _batch(post.config.vocab_size)
    b2 = {k: v.clone() for k, v in b1.items()}
    b3 = {k: v.clone() for k, v in b1.items()}
    size = PostPrefix(post, ad).stream(b1, 1)[1]
    one = size.numel() * size.element_size()
    for budget, kept in ((one - 1, []), (one, [3]), (2 * one, [2, 3]), (3 * one, [1, 2, 3])):
        prefix = PostPrefix(post, ad, max_bytes=budget)
        for b in (b1, b2, b3):
            prefix.stream(b, 2)
        prefix.stream(b3, 3)  # a batch seen again replaces its own entry
        held = [k for k, b in ((1, b1), (2, b2), (3, b3)) if id(b) in prefix._at]
        assert held == kept, budget


def test_selection_rule_and_pareto():
    scores = {
        (0, 1): {"V": 0.95, "H": 0.2},
        (0, 2): {"V": 0.80, "H": 0.9},  # most diverse but invalid (< 0.9 * 0.9 = 0.81)
        (1, 2): {"V": 0.85, "H": 0.5},
        (2, 4): {"V": 0.82, "H": 0.5},  # tie on H, longer: loses to (1, 2)
    }
    rows = [{"start": s, "end": e, **v} for (s, e), v in scores.items()]
    sel = select(rows, {"V": 0.9}, Rule("paper", diversity_key="H"))
    best = sel["selected"]
    assert (best["start"], best["end"]) == (1, 2) and sel["eligible"] == 3
    assert abs(sel["thresholds"]["V"] - 0.81) < 1e-12
    assert select(rows, {"V": 2.0}, Rule("paper", diversity_key="H"))["selected"] is None
    front = pareto_front({r: (s["V"], s["H"]) for r, s in scores.items()})
    assert front == [(0, 2), (1, 2), (0, 1)]


def _blend_by_hand(post, base, layers, alpha, whole=False):
    """A copy of ``post`` whose ``layers`` (or every tensor, ``whole``) are
    ``post + alpha (base - post)``, computed here with plain torch (the reference)."""
    import copy

    out = copy.deepcopy(post)
    ad = adapter_for_model(post)
    prefixes = [f"{ad.layers_path}.{i}." for i in layers]
    base_params = dict(base.named_parameters())
    with torch.no_grad():
        for name, p in out.named_parameters():
            if whole or any(name.startswith(pf) for pf in prefixes):
                p.copy_(p + alpha * (base_params[name] - p))
    return out


@pytest.mark.parametrize("fam", ["llama", "gemma2", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_interval_soups_equal_a_model_blended_by_hand(fam, alpha):
    """Both engines' interval soup [s, e) at alpha equals a plain forward of a model whose
    layers s..e-1 were blended in the test; alpha 1 is the SLR interval itself."""
    post, base = make_tiny(fam, num_layers=4, seed=2), make_tiny(fam, num_layers=4, seed=1)
    ad = adapter_for_model(post)
    b = _batch(post.config.vocab_size)
    for start, ends in ((0, (2, 4)), (1, (2, 3))):
        fast = score_start(post, base, ad, LogitsProxy(), [b], start, ends, "all", alpha)
        slow = score_start_swap(post, base, ad, LogitsProxy(), [b], start, ends, "all", alpha)
        for e in ends:
            ref = forward_logits(
                _blend_by_hand(post, base, range(start, e), alpha),
                b["input_ids"],
                b["attention_mask"],
            )
            torch.testing.assert_close(fast[e]["logits"], ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(slow[e]["logits"], ref, rtol=1e-5, atol=1e-5)
    control = forward_logits(post, b["input_ids"], b["attention_mask"])
    assert not torch.allclose(fast[3]["logits"], control, atol=1e-3)


def test_an_interval_soup_over_every_layer_is_the_whole_model_soup():
    """[0, L) blends every layer; with embeddings, final norm and head shared by the pair it
    is exactly the whole-model soup (which blends those too)."""
    from layergraft.slr.hybrid.soup import souped

    post, base = make_tiny("llama", num_layers=3, seed=2), make_tiny("llama", num_layers=3, seed=1)
    with torch.no_grad():
        for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            base.get_parameter(name).copy_(post.get_parameter(name))
    ad = adapter_for_model(post)
    b = _batch(post.config.vocab_size)
    rows = score_start(post, base, ad, LogitsProxy(), [b], 0, (3,), "all", 0.4)
    with souped(post, base, 0.4):
        whole = forward_logits(post, b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(rows[3]["logits"], whole, rtol=1e-5, atol=1e-5)
