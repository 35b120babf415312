"""CRC exact estimator: V/H against a hand-computed distribution, and the prompt loader."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from layergraft.errors import InputError
from layergraft.slr.proxy.crc import crc_exact
from layergraft.slr.proxy.crc_prompts import CrcPrompt, bundled_crc_sets, load_crc_prompts

VOCAB = ["<pad>", "<unk>", "<s>", "<|go|>", "k", " k", "d", "q", "x", "\tq"]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
        additional_special_tokens=["<|go|>"], padding_side="left",
    )  # fmt: skip
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|go|>{% endif %}"
    )
    return fast


class _Stub(torch.nn.Module):
    """Fixed next-token probabilities after ``<|go|>``; NaN anywhere else (catches bad padding)."""

    def __init__(self, probs: dict[str, float]) -> None:
        super().__init__()
        p = torch.full((len(VOCAB),), 1e-30, dtype=torch.float64)
        for t, v in probs.items():
            p[VOCAB.index(t)] = v
        self.logits = torch.nn.Parameter(p.log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **kwargs):  # position_ids, use_cache, ...
        b, t = input_ids.shape
        out = torch.full((b, t, len(VOCAB)), float("nan"), dtype=torch.float64)
        last = input_ids[:, -1] == VOCAB.index("<|go|>")
        out[last, -1] = self.logits
        return SimpleNamespace(logits=out)


def test_crc_exact_matches_hand_computation() -> None:
    # k: 0.2 + " k" 0.1 -> 0.3; d 0.3; q 0 (only "\tq": whitespace-led, counts) 0.05; x invalid
    model = _Stub({"k": 0.2, " k": 0.1, "d": 0.3, "\tq": 0.05, "x": 0.35})
    prompts = [
        CrcPrompt("a", "letters", "pick k d q", ("k", "d", "q")),
        CrcPrompt("b", "short", "k or x please and more words", ("k", "x")),
    ]
    res = crc_exact(model, _tokenizer(), prompts, batch_size=2)
    a, b = res.items
    assert a.validity == pytest.approx(0.65)
    assert a.probs == pytest.approx({"k": 0.3, "d": 0.3, "q": 0.05})
    qs = [0.3 / 0.65, 0.3 / 0.65, 0.05 / 0.65]
    h = -sum(q * math.log(q) for q in qs)
    assert a.entropy == pytest.approx(h)
    assert a.entropy_norm == pytest.approx(h / math.log(3))
    assert b.validity == pytest.approx(0.65)
    hb = -(0.3 / 0.65) * math.log(0.3 / 0.65) - (0.35 / 0.65) * math.log(0.35 / 0.65)
    assert b.entropy_norm == pytest.approx(hb / math.log(2))
    assert res.mean["V"] == pytest.approx(0.65)
    assert res.by_category["short"]["H_norm"] == pytest.approx(hb / math.log(2))
    json.dumps(res.to_dict())  # results are data


def test_crc_exact_batches_agree_and_accept_dicts() -> None:
    model = _Stub({"k": 0.5, "d": 0.5})
    prompts = [{"prompt": "k " * n, "valid": ["k", "d"], "category": "c"} for n in range(1, 6)]
    one = crc_exact(model, _tokenizer(), prompts, batch_size=1)
    many = crc_exact(model, _tokenizer(), prompts, batch_size=4)
    assert [i.validity for i in one.items] == pytest.approx([i.validity for i in many.items])
    assert one.mean["H_norm"] == pytest.approx(1.0)


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
