"""The fast interval sweep (prefix reuse + growing base chain) equals the swap-based sweep."""

from __future__ import annotations

import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.errors import RangeError
from layergraft.models.batching import forward_logits
from layergraft.slr.sweep.engines import (
    enumerate_intervals,
    plan_units,
    score_start,
    score_start_swap,
)
from layergraft.models.runner import LayerRunner
from layergraft.slr.sweep.selection import pareto_front, select_interval
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


def test_enumerate_intervals_options():
    assert enumerate_intervals(3) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert enumerate_intervals(4, min_len=2, max_len=2) == [(0, 2), (1, 3), (2, 4)]
    assert enumerate_intervals(4, starts=[1], max_len=2) == [(1, 2), (1, 3)]
    assert len(enumerate_intervals(8)) == 36
    with pytest.raises(RangeError):
        enumerate_intervals(4, min_len=3, max_len=2)
    with pytest.raises(RangeError):
        enumerate_intervals(4, starts=[9])


def test_selection_rule_and_pareto():
    scores = {
        (0, 1): {"V": 0.95, "H": 0.2},
        (0, 2): {"V": 0.80, "H": 0.9},  # most diverse but invalid (< 0.9 * 0.9 = 0.81)
        (1, 2): {"V": 0.85, "H": 0.5},
        (2, 4): {"V": 0.82, "H": 0.5},  # tie on H, longer: loses to (1, 2)
    }
    sel = select_interval(scores, post_validity=0.9)
    assert sel.interval == (1, 2) and sel.candidates == 3 and abs(sel.threshold - 0.81) < 1e-12
    assert select_interval(scores, post_validity=2.0).interval is None
    front = pareto_front({r: (s["V"], s["H"]) for r, s in scores.items()})
    assert front == [(0, 2), (1, 2), (0, 1)]
