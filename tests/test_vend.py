"""The format score V_end and packed CRC batches, against plain transformers forwards.

The reference here is written in the test: one ordinary forward of each chat-encoded prompt
(p(t | x) for every token t of a valid character) and one of each prompt + t (p(end | x, t)),
and with closers one of prompt + t + q. The packed estimator — every prompt of a batch in a
few token-tree rows, the continuations as branches, per-layer masks cut to sliding windows —
must give the same V, H_norm and V_end on the tiny model of every family.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from layergraft.slr.proxy.crc import crc_exact
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.slr.proxy.crc_scoring import closer_ids, encode_chat
from layergraft.toy.tokenizer import build_tokenizer
from tiny import FAMILIES, make_tiny

ENDS = (7, 2)  # the toy tokenizer's <|end|> and </s>


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _prompts(n: int = 3):
    items = load_crc_prompts("all")
    return items[:n] + items[-n:]


def _model(family: str, vocab: int, **over):
    extra = {"n_positions": 256} if family == "gpt2" else {"max_position_embeddings": 256}
    return make_tiny(family, num_layers=3, seed=4, vocab_size=vocab, **extra, **over)


def _probs(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].double().softmax(-1)


def _reference(model, tok, prompts, closers=()):
    """Per prompt: V, H_norm, V_end from one plain forward per sequence."""
    rows = []
    for p in prompts:
        ids = encode_chat(tok, p.prompt)
        first = _probs(model, ids)
        mass, end_mass = {}, {}
        for c in p.valid:
            toks = [
                t
                for t in range(len(tok))
                if tok.decode([t]).lstrip() == c and t not in tok.all_special_ids
            ]
            mass[c] = sum(first[t].item() for t in toks)
            em = 0.0
            for t in toks:
                after = _probs(model, ids + [t])
                stop = sum(after[e].item() for e in ENDS)
                for q in closers:
                    stop += after[q].item() * sum(
                        _probs(model, ids + [t, q])[e].item() for e in ENDS
                    )
                em += first[t].item() * stop
            end_mass[c] = em
        v = sum(mass.values())
        h = -sum(m / v * math.log(m / v) for m in mass.values() if m > 0)
        rows.append((v, h / math.log(len(p.valid)), sum(end_mass.values())))
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_v_end_equals_plain_forwards(family, tok):
    model = _model(family, len(tok))
    prompts = _prompts()
    got = crc_exact(model, tok, prompts, ends=ENDS, v_end="strict")
    ref = _reference(model, tok, prompts)
    for item, (v, h, ve) in zip(got.items, ref, strict=True):
        assert item.validity == pytest.approx(v, abs=1e-6)
        assert item.entropy_norm == pytest.approx(h, abs=1e-6)
        assert item.validity_end == pytest.approx(ve, abs=1e-7)
        assert 0 < item.validity_end < item.validity  # both nonzero: the comparison means something


@pytest.mark.parametrize(
    "family,over",
    [
        ("mistral", {"sliding_window": 4}),
        ("phi3", {"sliding_window": 4}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
    ],
)
def test_sliding_windows_count_positions_from_the_prompt_start(family, over, tok):
    """Windows of 4 positions on prompts of 30+: a mask without the window would differ."""
    model = _model(family, len(tok), **over)
    prompts = _prompts(2)
    got = crc_exact(model, tok, prompts, ends=ENDS)
    ref = _reference(model, tok, prompts)
    for item, (v, _, ve) in zip(got.items, ref, strict=True):
        assert item.validity == pytest.approx(v, abs=1e-6)
        assert item.validity_end == pytest.approx(ve, abs=1e-7)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_closers_count_a_closing_mark_before_the_end(family, tok):
    model = _model(family, len(tok))
    prompts = _prompts(2)
    closers = closer_ids(tok)
    assert [tok.decode([q]) for q in closers] == ["\n", "!", "."]
    got = crc_exact(model, tok, prompts, ends=ENDS, v_end="closers")
    strict = crc_exact(model, tok, prompts, ends=ENDS, v_end="strict")
    ref = _reference(model, tok, prompts, closers)
    for item, s, (_, _, ve) in zip(got.items, strict.items, ref, strict=True):
        assert item.validity_end == pytest.approx(ve, abs=1e-7)
        assert item.validity_end > s.validity_end


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_a_prompt_scores_the_same_alone_and_in_any_batch(family, tok):
    model = _model(family, len(tok))
    prompts = _prompts(4)
    together = crc_exact(model, tok, prompts, ends=ENDS).items
    alone = [crc_exact(model, tok, [p], ends=ENDS).items[0] for p in prompts]
    pairs = crc_exact(model, tok, prompts[::-1], batch_size=3, ends=ENDS).items[::-1]
    unshared = crc_exact(model, tok, prompts, ends=ENDS, layout="unshared").items
    padded = crc_exact(model, tok, prompts, ends=ENDS, layout="padded").items
    for a, b, c, d, e in zip(together, alone, pairs, unshared, padded, strict=True):
        for x in (b, c, d, e):
            assert a.validity == pytest.approx(x.validity, abs=1e-6)
            assert a.validity_end == pytest.approx(x.validity_end, abs=1e-7)
            assert a.entropy_norm == pytest.approx(x.entropy_norm, abs=1e-6)


def test_end_markers_come_from_the_generation_config_and_the_template(tok, tmp_path):
    from layergraft.slr.proxy.ends import EndWarning, find_end_markers
    from layergraft.toy import toy_paths

    _, post = toy_paths()
    ends = find_end_markers(tok, post)
    assert ends.ids == (2, 7)
    assert ends.tokens == ("</s>", "<|end|>")
    assert ends.sources == {"generation_config": [2, 7], "tokenizer": [2], "chat_template": [7]}
    # a template that does not close turns, a tokenizer without eos and no generation
    # config: no marker, one warning
    bare = build_tokenizer()
    bare.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    bare.eos_token = None
    with pytest.warns(EndWarning, match="V_end, the format score, is unavailable"):
        none = find_end_markers(bare, tmp_path)
    assert none.ids == ()
    model = _model("llama", len(tok))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EndWarning)
        res = crc_exact(model, bare, _prompts(1), ends=none)
    assert res.mean["V_end"] is None and res.items[0].validity_end is None


def test_the_sampled_estimator_agrees_with_the_exact_one(tok):
    """V and V_end sampled from the toy post model land within 4 sigma of the exact values
    (n = 4 prompts x 300 samples per estimate)."""
    from layergraft.models.load import load_model
    from layergraft.slr.proxy.crc_sampled import crc_sampled
    from layergraft.toy import toy_paths

    _, post = toy_paths()
    model = load_model(post, device="cpu")
    prompts = _prompts(2)
    exact = crc_exact(model, tok, prompts, ends=ENDS).mean
    n = len(prompts) * 300
    sampled = crc_sampled(
        model, tok, prompts, samples=300, temperature=1.0, min_p=0.0, seed=1, ends=ENDS
    ).mean
    for key in ("V", "V_end"):
        p = exact[key]
        sigma = math.sqrt(max(p * (1 - p), 1e-4) / n)
        assert abs(sampled[key] - p) < 4 * sigma, (key, sampled[key], p)
    assert exact["V_end"] > 0.5  # the toy post model answers with a character and stops
