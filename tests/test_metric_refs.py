"""Perplexity and the generation metrics against references written here: brute force over
subsets and pairs, an SVD instead of an eigensolver, per-token loops instead of chunked sums.

These complement the hand-computed values of test_diversity.py and test_ppl.py with the cases
mutation testing showed unchecked (boundaries, the sliding-window definition, zero and
opposite vectors, the leave-one-out of self-BLEU); see tests/MUTANTS.md.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from layergraft.errors import InputError
from layergraft.evaluate.perplexity import perplexity, windows
from layergraft.gen.metrics import diversity as D
from layergraft.gen.metrics import quality as Q
from tiny import make_tiny


# ---- perplexity ----------------------------------------------------------------------------
def _ref_windows(n: int, seqlen: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(begin, end, first scored) written out: chunks, or HF's sliding windows."""
    if stride is None or stride >= seqlen:
        full = n // seqlen
        return [(k * seqlen, (k + 1) * seqlen, k * seqlen + 1) for k in range(full)] or [(0, n, 1)]
    out, prev_end, begin = [], 0, 0
    while begin < n:
        end = min(begin + seqlen, n)
        if max(prev_end, begin + 1) < end:
            out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
        begin += stride
    return out


def _ref_ppl(model, ids: list[int], seqlen: int, stride: int | None) -> tuple[float, int]:
    """exp(mean NLL), each scored token one float64 log-softmax entry of its window."""
    nll, count = 0.0, 0
    for begin, end, first in _ref_windows(len(ids), seqlen, stride):
        x = torch.tensor(ids[begin:end])
        with torch.no_grad():
            logp = torch.log_softmax(model(x[None]).logits[0].double(), -1)
        for t in range(first, end):
            nll -= float(logp[t - begin - 1, ids[t]])
            count += 1
    return math.exp(nll / count), count


@pytest.mark.parametrize(
    "n, seqlen, stride",
    [(230, 100, None), (230, 100, 40), (230, 100, 100), (57, 100, None), (150, 64, 1)],
)
def test_perplexity_against_a_per_token_reference(n, seqlen, stride):
    """Chunks (remainder dropped; a text shorter than a chunk is one chunk), sliding windows
    (each token once, with the context of its window), windows longer than the 64-position
    NLL slices, and stride 1."""
    model = make_tiny("llama", num_layers=2, seed=0, max_position_embeddings=256)
    ids = torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    res = perplexity(model, ids, seqlen=seqlen, stride=stride)
    want, count = _ref_ppl(model, ids, seqlen, stride)
    assert windows(n, seqlen, stride) == _ref_windows(n, seqlen, stride)
    assert (res["tokens_scored"], res["tokens_total"]) == (count, n)
    assert res["windows"] == len(_ref_windows(n, seqlen, stride))
    assert res["ppl"] == pytest.approx(want, rel=1e-9)
    assert res["mean_nll"] == pytest.approx(math.log(want), rel=1e-9)
    assert (res["seqlen"], res["stride"]) == (seqlen, stride if stride is not None else seqlen)


def test_perplexity_limits():
    model = make_tiny("llama", num_layers=1, seed=0)
    ids = list(range(3, 40))
    assert perplexity(model, ids, seqlen=2)["tokens_scored"] == len(ids) // 2
    with pytest.raises(InputError, match="at least 2"):
        perplexity(model, ids, seqlen=1)
    assert perplexity(model, ids, seqlen=8, stride=1)["tokens_scored"] == len(ids) - 1
    with pytest.raises(InputError, match="stride must be positive"):
        perplexity(model, ids, seqlen=8, stride=0)
    assert perplexity(model, ids[:2], seqlen=8)["tokens_scored"] == 1
    with pytest.raises(InputError, match="need at least 2"):
        perplexity(model, ids[:1], seqlen=8)
    assert windows(1, 8) == [] and windows(2, 8) == [(0, 2, 1)]


def test_ppl_of_a_file_scores_the_first_max_tokens(tmp_path):
    from layergraft.evaluate.perplexity import ppl
    from layergraft.models.load import load_tokenizer
    from layergraft.toy.tokenizer import save_tokenizer
    from tiny import save_tiny

    d = save_tiny("llama", tmp_path / "m", num_layers=1, seed=2)
    save_tokenizer(d)
    text = tmp_path / "t.txt"
    text.write_text("A held-out text of some length, to be cut. " * 8)
    ids = load_tokenizer(d)(text.read_text(), add_special_tokens=False)["input_ids"]
    model = make_tiny("llama", num_layers=1, seed=2)
    res = ppl(d, text, seqlen=32, max_tokens=100)
    assert res["tokens_total"] == 100
    assert res["ppl"] == pytest.approx(_ref_ppl(model, ids[:100], 32, None)[0], rel=1e-9)
    assert ppl(d, text, seqlen=32)["tokens_total"] == len(ids) > 100


# ---- quality -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_is_the_fraction_of_k_subsets_holding_a_correct_sample(n):
    for c in range(n + 1):
        flags = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(flags, k))
            want = sum(any(s) for s in subsets) / len(subsets)
            assert Q.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
    for bad in ((n, 0, 0), (n, 0, n + 1), (n, -1, 1), (n, n + 1, 1)):
        with pytest.raises(ValueError):
            Q.pass_at_k(*bad)


def test_pass_ks_and_empty_inputs():
    assert Q.pass_ks(1) == [1]
    assert Q.pass_ks(7) == [1, 5, 7]
    assert Q.pass_ks(10) == [1, 5, 10]
    assert Q.pass_ks(100) == [1, 5, 10, 20, 50, 100]
    assert Q.pass_ks(101) == [1, 5, 10, 20, 50, 100, 101]
    for f in (Q.qa_validity, Q.accuracy):
        assert f([], ["x"]) == 0.0
    assert Q.format_validity([], "qa") == 0.0 and Q.finished_rate([]) == 0.0
    assert Q.correct_flags(["#### 3", "#### 4"], "4") == [False, True]


def test_format_rules_at_their_boundaries():
    twenty = " ".join(["w"] * 20)
    assert Q.format_valid(twenty, "qa") and not Q.format_valid(twenty + " w", "qa")
    assert not Q.format_valid("", "creative") and not Q.format_valid("  \n ", "qa")
    assert not Q.format_valid("fine", "creative", finished=False)
    assert Q.format_validity(["a", "b\nc", "d"], "qa") == pytest.approx(2 / 3)
    assert Q.format_validity(["a", "b"], "qa", [True, False]) == 0.5
    assert Q.finished_rate([True, False, True]) == pytest.approx(2 / 3)


# ---- diversity -----------------------------------------------------------------------------
def _ref_distinct(texts: list[str], n: int) -> float:
    grams = []
    for t in texts:
        w = D.words(t)
        grams += [" ".join(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def test_distinct_n_against_brute_force():
    texts = ["the cat sat on the mat", "The cat, the hat!", "on on on", "a"]
    for n in (1, 2, 3, 4, 6, 7):
        assert D.distinct_n(texts, n) == pytest.approx(_ref_distinct(texts, n)), n
    assert D.distinct_n(["a b"], 2) == 1.0
    with pytest.raises(ValueError):
        D.distinct_n(texts, 0)


def _cos(a, b) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def test_embedding_diversity_against_pairwise_loops():
    rng = np.random.default_rng(5)
    e = rng.standard_normal((6, 9))
    e[2] = -e[0]  # opposite directions: distance 2
    e[4] = 0.0  # a zero vector: cosine 0 with everything, distance 1
    pairs = list(itertools.combinations(range(len(e)), 2))
    want = sum(1 - _cos(e[i], e[j]) for i, j in pairs) / len(pairs)
    assert D.embedding_diversity(e) == pytest.approx(want, rel=1e-12)
    assert D.embedding_diversity(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(2.0)
    assert D.embedding_diversity(np.array([[1.0, 0.0], [0.0, 0.0]])) == pytest.approx(1.0)


def test_vendi_against_singular_values():
    """The eigenvalues of K/k are the squared singular values of the unit rows / sqrt(k)."""
    rng = np.random.default_rng(6)
    for k, d in ((5, 9), (7, 3), (2, 4)):
        e = rng.standard_normal((k, d))
        u = e / np.linalg.norm(e, axis=1, keepdims=True)
        lam = np.linalg.svd(u / math.sqrt(k), compute_uv=False) ** 2
        lam = lam[lam > 1e-15]
        assert D.vendi_score(e) == pytest.approx(math.exp(-(lam * np.log(lam)).sum()), rel=1e-9)
    assert D.vendi_score(np.zeros((0, 3))) == 0.0
    # a zero row is a sample that is no direction at all: it adds no eigenvalue mass
    z = np.vstack([np.eye(2), np.zeros((1, 2))])
    lam = np.array([1 / 3, 1 / 3])
    assert D.vendi_score(z) == pytest.approx(math.exp(-(lam * np.log(lam)).sum()))


def test_self_bleu_is_the_mean_leave_one_out_sentence_bleu():
    from sacrebleu.metrics import BLEU

    texts = ["the cat sat on the mat", "the dog sat on the rug", "a cat on a mat", "the cat"]
    bleu = BLEU(effective_order=True)
    want = [
        bleu.sentence_score(h, [t for j, t in enumerate(texts) if j != i]).score / 100
        for i, h in enumerate(texts)
    ]
    assert len(set(want)) == len(want)  # each sample scores differently
    assert D.self_bleu(texts) == pytest.approx(sum(want) / len(want), rel=1e-12)
    assert D.self_bleu(texts[:2]) == pytest.approx(
        (bleu.sentence_score(texts[0], [texts[1]]).score
         + bleu.sentence_score(texts[1], [texts[0]]).score) / 200, rel=1e-12,
    )  # fmt: skip


# ---- what mutation testing found unchecked -------------------------------------------------
def test_aliases_count_as_their_answer():
    """ "NYC" is "new york city" when the prompt's reference says so (and only then)."""
    valid, aliases = ["new york city", "boston"], {"nyc": "new york city"}
    texts = ["NYC", "Boston.", "nyc!", "Paris"]
    assert Q.qa_validity(texts, valid, aliases) == 0.75
    assert Q.qa_validity(texts, valid) == 0.25
    assert D.distinct_valid_answers(texts, valid, aliases) == 2
    assert D.distinct_valid_answers(texts, valid) == 1


def test_mismatched_finished_flags_are_an_error_not_a_truncation():
    with pytest.raises(ValueError):
        Q.format_validity(["a", "b", "c"], "qa", [True, True])


def test_error_messages_name_the_rule():
    with pytest.raises(ValueError, match=r"^n must be >= 1$"):
        D.distinct_n(["a"], 0)
    with pytest.raises(ValueError, match=r"^pass@k needs 0 < k <= n \(k=4, n=3\)$"):
        Q.pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match=r"^c must be in \[0, n\] \(c=5, n=3\)$"):
        Q.pass_at_k(3, 5, 1)


def test_perplexity_default_length_and_the_context_clamp():
    """The default chunk is the papers' 2048 tokens; a chunk longer than the model's context is
    cut to it, with a warning naming the flag."""
    from layergraft.models.batching import ContextWarning

    long = make_tiny("llama", num_layers=1, seed=0, max_position_embeddings=4096)
    ids = torch.randint(3, 128, (2100,), generator=torch.Generator().manual_seed(3)).tolist()
    res = perplexity(long, ids)
    assert (res["seqlen"], res["windows"], res["tokens_scored"]) == (2048, 1, 2047)
    short = make_tiny("llama", num_layers=1, seed=0)  # a context of 128 positions
    with pytest.warns(ContextWarning, match=r"^--ppl-seqlen 1000 is longer than the model's"):
        res = perplexity(short, ids[:300], seqlen=1000)
    assert (res["seqlen"], res["tokens_scored"]) == (128, 2 * 127)


def test_embedding_metrics_compute_in_float64_whatever_the_input():
    """sentence-transformers returns float32: the metrics still compute in float64."""
    rng = np.random.default_rng(7)
    e32 = rng.standard_normal((6, 384)).astype(np.float32)
    e64 = e32.astype(np.float64)
    pairs = list(itertools.combinations(range(len(e64)), 2))
    want = sum(1 - _cos(e64[i], e64[j]) for i, j in pairs) / len(pairs)
    assert D.embedding_diversity(e32) == pytest.approx(want, rel=1e-13)
    assert D.vendi_score(e32) == pytest.approx(D.vendi_score(e64), rel=1e-13)
