"""A prompt scores the same alone and in any batch, on every family.

Left padding shifts positions unless position ids come from the attention mask. RoPE models
hide the shift (relative positions); GPT-2's learned absolute positions do not — before the
fix, a GPT-2 prompt's V moved from 0.00 to 0.84 when it shared a batch with a longer prompt.
"""

from __future__ import annotations

import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.slr.proxy.crc import CrcProxy, crc_exact
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.slr.sweep.engines import score_start
from layergraft.toy.tokenizer import build_tokenizer
from tiny import FAMILIES, make_tiny


def _prompts():
    """Bundled CRC prompts of different lengths (so batches are left-padded)."""
    items = load_crc_prompts("all")
    by_len: dict[int, object] = {}
    tok = build_tokenizer()
    for p in items:
        by_len.setdefault(len(tok(p.prompt)["input_ids"]), p)
    chosen = list(by_len.values())[:5]
    assert len(chosen) >= 3, "need prompts of several lengths"
    return chosen


@pytest.mark.parametrize("fam", FAMILIES)
def test_crc_scores_do_not_depend_on_the_batch(fam):
    model = make_tiny(fam, num_layers=2, seed=5)
    tok, prompts = build_tokenizer(), _prompts()
    together = crc_exact(model, tok, prompts, batch_size=len(prompts)).items
    alone = [crc_exact(model, tok, [p]).items[0] for p in prompts]
    pairs = crc_exact(model, tok, prompts[::-1], batch_size=2).items[::-1]
    for a, b, c in zip(together, alone, pairs, strict=True):
        assert a.validity == pytest.approx(b.validity, abs=1e-5)
        assert a.entropy == pytest.approx(b.entropy, abs=1e-5)
        assert c.validity == pytest.approx(b.validity, abs=1e-5)


@pytest.mark.parametrize("fam", ["gpt2", "llama", "gemma2"])
def test_sweep_rows_do_not_depend_on_the_batch(fam):
    post, base = make_tiny(fam, num_layers=3, seed=2), make_tiny(fam, num_layers=3, seed=1)
    ad, tok, prompts = adapter_for_model(post), build_tokenizer(), _prompts()
    px = CrcProxy(prompts, batch_size=len(prompts))
    together = score_start(post, base, ad, px, px.batches(tok, None), 1, (2, 3))
    for p in prompts:  # each prompt alone gives the per-prompt value it had in the batch
        one = CrcProxy([p])
        alone = score_start(post, base, ad, one, one.batches(tok, None), 1, (2, 3))
        for e in (2, 3):
            got = together[e]["by_category"][p.category]
            assert alone[e]["by_category"][p.category]["n"] == 1
            assert alone[e]["V"] == pytest.approx(
                _item_v(post, base, ad, tok, prompts, p, e), abs=1e-5
            )
            assert got["n"] >= 1


def test_a_character_with_no_single_token_is_reported():
    from layergraft.slr.proxy.crc_prompts import CrcPrompt
    from layergraft.slr.proxy.crc_scoring import CrcWarning

    model = make_tiny("llama", num_layers=1)
    p = CrcPrompt("x", "emoji", "pick one: a or ☃", ("a", "☃"))
    with pytest.warns(CrcWarning, match="'☃'"):
        res = crc_exact(model, build_tokenizer(), [p])
    assert res.items[0].probs["☃"] == 0.0


def test_crc_batches_hold_one_batch_of_prompts():
    """batch_size prompts are packed together; the rows of one pack go into forwards that
    pad at most 5% of what they compute, and every prompt lands in exactly one of them."""
    prompts = load_crc_prompts("all")
    batches = CrcProxy(prompts, batch_size=10).batches(build_tokenizer(), None)
    chunks = [sorted(i // 10 for i in b.index) for b in batches]
    assert all(len(set(c)) == 1 for c in chunks)  # a forward never mixes two chunks
    assert sorted(i for b in batches for i in b.index) == list(range(len(prompts)))
    assert all(len(b.packed.answer) == len(b.prompts) == len(b.index) for b in batches)
    assert all(isinstance(b.packed.input_ids, torch.Tensor) for b in batches)
    for b in batches:
        st = b.packed.stats
        assert st.real == int(b.packed.real.sum()) and st.computed == st.rows * st.width
        assert st.padded <= 0.05 * st.computed


def _item_v(post, base, ad, tok, prompts, p, e):
    """V of prompt ``p`` inside the full batch, read from the swapped hybrid's items."""
    from layergraft.slr.hybrid.swap import swapped_layers

    with swapped_layers(post, base, [(1, e)]):
        items = crc_exact(post, tok, prompts, batch_size=len(prompts)).items
    return next(i.validity for i in items if i.id == p.id)
