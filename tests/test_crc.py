"""CRC scoring: V, H and V_end against hand-computed distributions, and the prompt loader."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from layergraft.errors import InputError
from layergraft.slr.proxy.crc import crc_exact
from layergraft.slr.proxy.crc_prompts import CrcPrompt, bundled_crc_sets, load_crc_prompts
from layergraft.slr.proxy.crc_scoring import CrcBatch, in_order, result_of, score_items


def _batch(prompts, char_ids, ends=(), closers=()):
    """A CRC batch for the scoring arithmetic alone: slots are names, no model."""
    answer = [("answer", k) for k in range(len(prompts))]
    branch = [
        {(t,): ("after", k, t) for c in p.valid for t in char_ids[c]}
        | {(t, q): ("after", k, t, q) for c in p.valid for t in char_ids[c] for q in closers}
        for k, p in enumerate(prompts)
    ]
    packed = SimpleNamespace(answer=answer, branch=branch)
    return CrcBatch(list(prompts), packed, char_ids, tuple(ends), tuple(closers))


def _reader(batch, table):
    """``read`` of score_items from a table slot -> {token id: probability}; counts reads."""
    seen = []

    def read(slots, ids):
        if slots is None:
            slots = batch.packed.answer
            ids = [batch.answer_tokens(p) for p in batch.prompts]
        seen.extend(slots)
        probs = [table[s].get(i, 1e-300) for s, want in zip(slots, ids, strict=True) for i in want]
        return torch.tensor(probs, dtype=torch.float64).log()

    read.seen = seen
    return read


def test_scores_match_a_hand_computation() -> None:
    # k: token 4 (0.2) + token 5, " k" (0.1) -> 0.3; d 0.3; q: token 9 (0.05); x invalid
    chars = {"k": [4, 5], "d": [6], "q": [9], "x": [8]}
    a = CrcPrompt("a", "letters", "pick k d q", ("k", "d", "q"))
    b = CrcPrompt("b", "short", "k or x", ("k", "x"))
    batch = _batch([a, b], chars)
    table = {
        ("answer", 0): {4: 0.2, 5: 0.1, 6: 0.3, 9: 0.05},
        ("answer", 1): {4: 0.2, 5: 0.1, 8: 0.35},
    }
    res = result_of(score_items(batch, _reader(batch, table)))
    ia, ib = res.items
    assert ia.validity == pytest.approx(0.65)
    assert ia.probs == pytest.approx({"k": 0.3, "d": 0.3, "q": 0.05})
    qs = [0.3 / 0.65, 0.3 / 0.65, 0.05 / 0.65]
    h = -sum(q * math.log(q) for q in qs)
    assert ia.entropy == pytest.approx(h)
    assert ia.entropy_norm == pytest.approx(h / math.log(3))
    assert ib.validity == pytest.approx(0.65)
    hb = -(0.3 / 0.65) * math.log(0.3 / 0.65) - (0.35 / 0.65) * math.log(0.35 / 0.65)
    assert ib.entropy_norm == pytest.approx(hb / math.log(2))
    assert res.mean["V"] == pytest.approx(0.65)
    assert res.mean["V_end"] is None and ia.validity_end is None
    assert res.by_category["short"]["H_norm"] == pytest.approx(hb / math.log(2))
    json.dumps(res.to_dict())  # results are data


def test_v_end_matches_a_hand_computation() -> None:
    """V_end = sum_t p(t|x) [p(end|x,t) + sum_q p(q|x,t) p(end|x,t,q)], over two end ids;
    a token below MIN_READ is not followed (its share is below MIN_READ)."""
    from layergraft.slr.proxy.crc_scoring import MIN_READ

    chars = {"k": [4, 5], "d": [6, 11]}
    p = CrcPrompt("a", "letters", "pick k or d", ("k", "d"))
    ends, closers = (7, 2), (10,)
    first = {4: 0.4, 5: 0.1, 6: 0.3, 11: MIN_READ / 2}
    after = {4: {7: 0.5, 2: 0.1, 10: 0.2}, 5: {2: 0.3, 10: 0.5}, 6: {7: 0.9}}
    deeper = {4: {7: 0.6, 2: 0.2}, 5: {7: 1.0}, 6: {7: 0.5, 2: 0.5}}
    table = {("answer", 0): first}
    table |= {("after", 0, t): v for t, v in after.items()}
    table |= {("after", 0, t, 10): v for t, v in deeper.items()}
    batch = _batch([p], chars, ends)
    (item,) = score_items(batch, _reader(batch, table))
    assert item.validity_end == pytest.approx(0.4 * 0.6 + 0.1 * 0.3 + 0.3 * 0.9)
    assert item.end_probs == pytest.approx({"k": 0.4 * 0.6 + 0.1 * 0.3, "d": 0.3 * 0.9})
    batch = _batch([p], chars, ends, closers)
    read = _reader(batch, table)
    (item,) = score_items(batch, read)
    expect = 0.4 * (0.6 + 0.2 * 0.8) + 0.1 * (0.3 + 0.5 * 1.0) + 0.3 * 0.9
    assert item.validity_end == pytest.approx(expect)
    assert item.validity == pytest.approx(0.8 + MIN_READ / 2)
    # token 11 is not followed, nor is token 6's closer (p(10 | 6) ~ 0): 1 + 3 + 2 slots read
    assert ("after", 0, 11) not in read.seen and ("after", 0, 6, 10) not in read.seen
    assert len(read.seen) == 6
    # min_read=0 (the plan's upper bound of the head's cost) follows every token and closer
    table |= {("after", 0, 11): {7: 1.0}, ("after", 0, 11, 10): {}}
    read = _reader(batch, table)
    (every,) = score_items(batch, read, min_read=0.0)
    assert ("after", 0, 11) in read.seen and ("after", 0, 6, 10) in read.seen
    assert len(read.seen) == 9
    assert every.validity_end == pytest.approx(expect + MIN_READ / 2, abs=1e-15)


def test_a_closer_exactly_at_the_read_threshold_is_followed() -> None:
    """The read threshold is inclusive: p(t) p(q | t) == min_read (0.5 x 0.25 = 0.125, exact
    in binary through log and exp) reads the position after "t q"."""
    chars = {"k": [4], "d": [6]}
    p = CrcPrompt("a", "letters", "pick k or d", ("k", "d"))
    table = {("answer", 0): {4: 0.5, 6: 0.5}, ("after", 0, 4): {10: 0.25},
             ("after", 0, 6): {}, ("after", 0, 4, 10): {7: 1.0}, ("after", 0, 6, 10): {}}  # fmt: skip
    batch = _batch([p], chars, (7,), (10,))
    read = _reader(batch, table)
    (item,) = score_items(batch, read, min_read=0.125)
    assert ("after", 0, 4, 10) in read.seen and ("after", 0, 6, 10) not in read.seen
    assert item.validity_end == 0.125


def test_scores_of_packed_batches_come_back_in_prompt_order() -> None:
    """Packing groups prompts by their tokens, so batches hold them out of order; each
    batch's items must return to the place its index names, and a batch whose items do not
    match its prompts is an error, not a silent shift."""
    b1, b2 = SimpleNamespace(index=[2, 0]), SimpleNamespace(index=[3, 1])
    assert in_order([(b1, ["c", "a"]), (b2, ["d", "b"])]) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError):
        in_order([(b1, ["c"]), (b2, ["d", "b"])])


def test_crc_exact_batches_agree_and_accept_dicts() -> None:
    from layergraft.toy.tokenizer import build_tokenizer
    from tiny import make_tiny

    tok = build_tokenizer()
    model = make_tiny("llama", num_layers=2, seed=1, vocab_size=len(tok))
    prompts = [{"prompt": "k " * n, "valid": ["k", "d"], "category": "c"} for n in range(1, 6)]
    one = crc_exact(model, tok, prompts, batch_size=1)
    many = crc_exact(model, tok, prompts, batch_size=4)
    assert [i.validity for i in one.items] == pytest.approx([i.validity for i in many.items])
    assert [i.validity_end for i in one.items] == pytest.approx(
        [i.validity_end for i in many.items]
    )


def test_prepare_batches_defaults_and_settings_reach_the_packing() -> None:
    """Defaults: 64 prompts per batch, V_end strict (the end markers' branches are built),
    shared prefixes; ``v_end="off"`` drops the markers even when given, and ``layout`` is
    passed on (``padded``: one row per prompt)."""
    from layergraft.slr.proxy.crc_scoring import prepare_batches
    from layergraft.toy.tokenizer import build_tokenizer

    tok = build_tokenizer()
    eos = tok.eos_token_id
    prompts = [{"prompt": "k " * (1 + n % 5), "valid": ["k", "d"], "category": "c"}
               for n in range(65)]  # fmt: skip
    batches = prepare_batches(tok, prompts, ends=(eos,))
    assert [b.index for b in batches if 64 in b.index] == [[64]]  # the 65th is a batch alone
    assert all(b.ends == (eos,) and all(b.packed.branch) for b in batches)
    rows = sum(b.packed.input_ids.shape[0] for b in batches)
    assert rows < 65  # shared: several prompts' trees in a row
    off = prepare_batches(tok, prompts, ends=(eos,), v_end="off")
    assert all(b.ends == () and not any(b.packed.branch) for b in off)
    padded = prepare_batches(tok, prompts, ends=(eos,), layout="padded")
    assert all(b.packed.input_ids.shape[0] == len(b.prompts) for b in padded)


def test_bundled_sets() -> None:
    names = bundled_crc_sets()
    assert {"letters", "digits"} <= set(names)
    prompts = load_crc_prompts("all")
    ids = [p.id for p in prompts]
    assert len(ids) == len(set(ids))
    for name in names:
        ps = load_crc_prompts(name)
        assert len(ps) >= 20
        assert {len(p.valid) for p in ps} == set(range(3, 11))
        for p in ps:
            assert all(len(c) == 1 and c in p.prompt for c in p.valid)
    assert len({p.prompt.split(":")[0] for p in prompts}) > 5  # varied wording


def test_crc_prompts_are_not_sft_prompts() -> None:
    from layergraft.toy.sft_data import sft_examples

    train = {c[0]["content"] for c in sft_examples(1, 20_000)}
    assert not train & {p.prompt for p in load_crc_prompts("all")}


def test_loader_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_crc_prompts(tmp_path / "missing.jsonl")
    f = tmp_path / "x.jsonl"
    f.write_text('{"prompt": "pick one", "valid": []}\n')
    with pytest.raises(InputError, match="no valid set"):
        load_crc_prompts(f)
    f.write_text('{"prompt": "pick one"}\n')
    with pytest.raises(InputError, match="no valid set"):
        load_crc_prompts(f)
    f.write_text("{not json\n")
    with pytest.raises(InputError, match="not valid JSON"):
        load_crc_prompts(f)
    f.write_text("\n")
    with pytest.raises(InputError, match="no CRC prompts"):
        load_crc_prompts(f)
    f.write_text('{"prompt": "a or b", "valid": ["a", "b", "a"]}\n')
    (p,) = load_crc_prompts(f)
    assert p.valid == ("a", "b") and p.category == "x"


@pytest.mark.parametrize("which", ["toy", "wordpiece"])
def test_only_short_tokens_need_decoding_for_character_ids(which):
    """The CRC character lookup decodes only tokens whose raw form can be one character
    (a 262k vocabulary is mostly longer tokens) and finds exactly what decoding all finds."""
    import string
    import warnings

    from layergraft.gen.metrics.diversity import default_embedder_path
    from layergraft.models.load import load_tokenizer
    from layergraft.slr.proxy.crc_scoring import _candidates, _char_token_ids
    from layergraft.toy.tokenizer import build_tokenizer

    tok = build_tokenizer() if which == "toy" else load_tokenizer(default_embedder_path())
    chars = set(string.ascii_letters + string.digits + "é!?☃")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _char_token_ids(tok, chars) == _char_token_ids(tok, chars, exhaustive=True)
    if which == "wordpiece":
        assert len(_candidates(tok)) < len(tok) / 3
