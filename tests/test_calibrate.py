"""Calibration statistics: masking, streaming equivalence, early stop, input validation."""

from __future__ import annotations

import pytest
import torch

from layergraft.arch import adapter_for_model
from layergraft.errors import InputError
from layergraft.prune.calibrate import (
    GapStats,
    capture,
    collect_gap_stats,
    forward_until,
    run_points,
)
from layergraft.text import Batch, read_text, text_batches
from layergraft.toy.tokenizer import build_tokenizer
from tiny import make_tiny

FAMILIES = ["llama", "qwen2", "gemma2"]


def _rows(seed: int, lengths: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in lengths]


def _pad(rows: list[list[int]], width: int, left: bool, extra_rows: int = 0) -> Batch:
    b = len(rows) + extra_rows
    ids = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for k, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[k, sl] = torch.tensor(r)
        mask[k, sl] = 1
    return Batch(ids, mask)


@pytest.mark.parametrize("fam", FAMILIES)
def test_padding_never_changes_statistics(fam):
    model = make_tiny(fam, num_layers=4, seed=3)
    ad = adapter_for_model(model)
    rows = _rows(0, [12, 7, 10])
    gaps = [(1, 3)]
    tight = collect_gap_stats(model, ad, [_pad(rows, 12, left=False)], gaps, mlp=True)[0]
    for batch in (
        _pad(rows, 20, left=False, extra_rows=2),  # extra padding columns and all-padding rows
        _pad(rows, 16, left=True),  # left padding
    ):
        other = collect_gap_stats(model, ad, [batch], gaps, mlp=True)[0]
        assert other.n == tight.n == 29
        for name in ("xtx", "xtd", "sx", "sd", "dd", "mtm", "mtt"):
            a, b = getattr(tight, name), getattr(other, name)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_streaming_equals_stacked_float64():
    model = make_tiny("llama", num_layers=4, seed=1)
    ad = adapter_for_model(model)
    batches = [_pad(_rows(s, [9, 5]), 9, left=False) for s in range(3)]
    st = collect_gap_stats(model, ad, batches, [(1, 2)])[0]
    xs, ds = [], []
    for b in batches:
        got = run_points(model, ad, b, [("in", 1), ("in", 2)])
        m = b.attention_mask.bool()
        x = got[("in", 1)][m].double()
        xs.append(x)
        ds.append(got[("in", 2)][m].double() - x)
    X, D = torch.cat(xs), torch.cat(ds)
    assert st.n == X.shape[0] == 42
    assert st.xtx.dtype == torch.float64
    torch.testing.assert_close(st.xtx, X.T @ X)
    torch.testing.assert_close(st.xtd, X.T @ D)
    torch.testing.assert_close(st.sd, D.sum(0))


def test_forward_stops_after_last_boundary():
    model = make_tiny("llama", num_layers=4, seed=0)
    ad = adapter_for_model(model)
    called = []
    hooks = [
        layer.register_forward_hook(lambda m, a, o, i=i: called.append(i))
        for i, layer in enumerate(ad.layers(model))
    ]
    hooks.append(model.lm_head.register_forward_pre_hook(lambda m, a: called.append("head")))
    got = []
    batch = _pad(_rows(0, [6]), 6, left=False)
    with capture(model, ad, [("in", 1), ("in", 2)], lambda p, t: got.append(p)):
        forward_until(model, batch)
    for h in hooks:
        h.remove()
    assert got == [("in", 1), ("in", 2)]
    assert called == [0, 1]  # layer 2 never ran: the pass stopped at its input; no head


def test_gapstats_update_masks_rows():
    st = GapStats(0, 1)
    x = torch.randn(2, 3, 4)
    post = x + 1
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    st.update(x, post, mask)
    assert st.n == 4
    torch.testing.assert_close(st.sd, torch.full((4,), 4.0, dtype=torch.float64))


def test_text_batches_pad_last_row_and_validate(tmp_path):
    tok = build_tokenizer()
    text = "abcdefghij" * 5
    batches = text_batches(tok, text, n_tokens=45, seqlen=20, batch_size=2)
    assert [b.input_ids.shape for b in batches] == [(2, 20), (1, 5)]
    assert sum(b.n_tokens for b in batches) == 45
    with pytest.raises(InputError, match="only 3 tokens"):
        text_batches(tok, "abc", n_tokens=100, seqlen=8, batch_size=1)


@pytest.mark.parametrize(
    "content, suffix, match",
    [
        (None, ".txt", "not found"),
        (b"", ".txt", "empty"),
        (b"   \n\n", ".txt", "empty"),
        (b"\x00\x01\x02binary", ".txt", "binary"),
        (b"\xff\xfe\xfa", ".txt", "UTF-8"),
        (b'{"text": "ok"}\nnot json\n', ".jsonl", "not valid JSON"),
        (b'{"txt": "ok"}\n', ".jsonl", "'text' field"),
    ],
)
def test_read_text_refuses_bad_files(tmp_path, content, suffix, match):
    p = tmp_path / f"data{suffix}"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_text(p)


def test_read_text_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert read_text(p) == "one\n\ntwo"


def test_hf_dataset_source_offline_is_a_clear_error(monkeypatch, tmp_path):
    from layergraft.errors import InputError
    from layergraft.text import read_text

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError, match="local .txt or .jsonl"):
        read_text("hf:some-org/not-cached-corpus@train")
