"""Every metric against hand-computed values on fixed texts (and on fixed embeddings)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layergraft.gen.metrics import diversity as D
from layergraft.gen.metrics import quality as Q


def test_distinct_n_hand_computed():
    same = ["a b c", "a b c"]
    assert D.distinct_n(same, 1) == pytest.approx(3 / 6)
    assert D.distinct_n(same, 2) == pytest.approx(2 / 4)
    assert D.distinct_n(same, 3) == pytest.approx(1 / 2)
    assert D.distinct_n(same, 4) == 0.0  # no 4-grams at all
    assert D.distinct_n(["a b", "c d"], 1) == 1.0
    assert D.distinct_n(["a a a"], 1) == pytest.approx(1 / 3)
    # punctuation is a word, case is not
    assert D.words("Hi, there!") == ["hi", ",", "there", "!"]
    assert D.distinct_n(["Blue.", "blue."], 1) == pytest.approx(2 / 4)
    assert D.distinct_n([], 1) == 0.0


def test_self_bleu_extremes():
    same = ["the cat sat on the mat"] * 3
    assert D.self_bleu(same) == pytest.approx(1.0)
    assert D.self_bleu(["a b c d", "e f g h", "i j k l"]) == 0.0
    mid = D.self_bleu(["the cat sat on the mat", "the dog sat on the rug"])
    assert 0.0 < mid < 1.0
    assert D.self_bleu(["only one"]) is None


def test_embedding_diversity_and_vendi_hand_computed():
    same = np.ones((4, 3))
    assert D.embedding_diversity(same) == pytest.approx(0.0, abs=1e-12)
    assert D.vendi_score(same) == pytest.approx(1.0)
    eye = np.eye(3)
    assert D.embedding_diversity(eye) == pytest.approx(1.0)
    assert D.vendi_score(eye) == pytest.approx(3.0)
    # two vectors at cosine 0.5: eigenvalues of K/2 are 0.75 and 0.25
    two = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert D.embedding_diversity(two) == pytest.approx(0.5)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert D.vendi_score(two) == pytest.approx(math.exp(h))
    # scale does not matter (cosine kernel)
    assert D.vendi_score(two * 7.0) == pytest.approx(math.exp(h))
    assert D.embedding_diversity(eye[:1]) is None
    # identical float32 unit vectors: cos rounds a hair above 1, the distance must not go below 0
    v = np.random.default_rng(0).standard_normal((1, 384)).astype(np.float32)
    assert D.embedding_diversity(np.repeat(v, 8, axis=0)) == 0.0


def test_answer_counts():
    valid = ["red", "blue", "green"]
    texts = ["Blue.", "blue", "The red!", "purple", "Green is nice"]
    assert D.distinct_valid_answers(texts, valid) == 3
    assert D.distinct_answers(["Blue.", "blue", "Red"]) == 2
    sols = ["2 + 3 = 5. #### 5", "2+3 = 5 #### 5", "3 + 2 = 5. #### 5", "2 + 2 = 4 #### 4", "no"]
    assert D.distinct_final_answers(sols) == 2  # 5, 4 ("no" has no answer)
    assert D.distinct_reasoning_paths(sols[:2]) == 2  # "2 + 3" vs "2+3" differ in spacing of ops
    assert D.distinct_reasoning_paths(["2 + 3 = 5. #### 5", "2 + 3 = 5 #### 5"]) == 1
    assert D.distinct_reasoning_paths(sols) == 5


def test_quality_hand_computed():
    assert Q.qa_validity(["Blue.", "purple", "red"], ["red", "blue"]) == pytest.approx(2 / 3)
    assert Q.accuracy(["#### 5", "so 5", "#### 4", ""], "5") == pytest.approx(2 / 4)
    assert Q.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert Q.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert Q.pass_at_k(5, 0, 3) == 0.0
    assert Q.pass_at_k(5, 4, 2) == 1.0
    assert Q.pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    with pytest.raises(ValueError):
        Q.pass_at_k(3, 1, 4)
    assert Q.pass_ks(32) == [1, 5, 10, 20, 32]
    assert Q.pass_ks(5) == [1, 5]


def test_format_validity():
    assert Q.format_valid("2 + 3 = 5. #### 5", "reasoning")
    assert not Q.format_valid("the answer is 5", "reasoning")
    assert not Q.format_valid("2 + 3 = 5. #### 5", "reasoning", finished=False)
    assert Q.format_valid("Blue.", "qa") and not Q.format_valid("Blue.\nRed.", "qa")
    assert Q.format_valid("A poem", "creative") and not Q.format_valid("   ", "creative")
    assert Q.format_validity(["#### 1", "x"], "reasoning", [True, True]) == 0.5


@pytest.fixture(scope="module")
def embedder():
    return D.Embedder()  # the packaged all-MiniLM-L6-v2, offline


def test_real_embedder_extremes_and_determinism(embedder):
    same = embedder.encode(["The sea is calm tonight."] * 4)
    assert D.embedding_diversity(same) == pytest.approx(0.0, abs=1e-5)
    assert D.vendi_score(same) == pytest.approx(1.0, abs=1e-4)
    texts = ["The sea is calm tonight.", "Quarterly tax filings are due.", "I love pizza.", "Run!"]
    e1, e2 = embedder.encode(texts), embedder.encode(texts)
    assert np.array_equal(e1, e2)
    assert D.embedding_diversity(e1) > 0.5
    assert 3.0 < D.vendi_score(e1) <= 4.0 + 1e-9


def test_embedder_bad_path(tmp_path):
    from layergraft.errors import InputError

    with pytest.raises(InputError, match="not a directory"):
        D.Embedder(tmp_path / "nope")


@pytest.mark.parametrize("kind", ["chat", "reward"])
def test_judge_scores_in_unit_interval_and_deterministic(kind, tmp_path):
    import torch
    from transformers import LlamaForSequenceClassification

    from layergraft.gen.metrics.judge import HFJudge
    from layergraft.toy.tokenizer import build_tokenizer
    from tiny import save_tiny, tiny_config

    d = tmp_path / kind
    if kind == "chat":
        save_tiny("llama", d, num_layers=1, seed=0)
    else:
        torch.manual_seed(0)
        LlamaForSequenceClassification(tiny_config("llama", 1, num_labels=1)).save_pretrained(d)
    build_tokenizer().save_pretrained(str(d))
    j = HFJudge(d)
    assert j.kind == kind
    s1 = j.score(["Name a color."] * 2, ["Blue.", "zzz"])
    assert s1 == j.score(["Name a color."] * 2, ["Blue.", "zzz"])
    assert all(0.0 <= s <= 1.0 for s in s1)


def test_judge_bad_path(tmp_path):
    from layergraft.errors import InputError
    from layergraft.gen.metrics.judge import HFJudge

    with pytest.raises(InputError, match="config.json"):
        HFJudge(tmp_path)


def test_truncation_is_its_own_metric_and_creative_has_no_format_rule():
    """Creative writing's only "format" check was "finished within --max-new-tokens": that is
    truncation, reported as finished_rate for every task; format_validity is for the tasks
    with a format (a cut-off reply is not a complete reply in format)."""
    from layergraft.gen.score import score_records

    recs = [
        {"prompt_id": "p", "sample": i, "task": "creative", "prompt": "a poem", "text": t,
         "finished": f, "num_tokens": 9}
        for i, (t, f) in enumerate([("Roses are red", True), ("Violets are", False)])
    ]  # fmt: skip
    m = score_records(recs, bootstrap=10, embedder=None)["per_prompt"]["p"]
    assert m["finished_rate"] == 0.5 and "format_validity" not in m
    assert Q.finished_rate([True, False, False, True]) == 0.5


def test_cut_off_or_out_of_format_runs_carry_a_caveat():
    from layergraft.gen.score import score_records

    def recs(task, finished, text="1 + 1 = 2. #### 2"):
        return [
            {"prompt_id": "p", "sample": i, "task": task, "prompt": "q", "text": text,
             "finished": f, "num_tokens": 9, "reference": {"answer": "2"}}
            for i, f in enumerate(finished)
        ]  # fmt: skip

    ok = score_records(recs("reasoning", [True] * 4), bootstrap=10, embedder=None)
    assert ok["caveats"] == []
    cut = score_records(recs("reasoning", [True, False, False, False]), bootstrap=10, embedder=None)
    assert any("ended within the token budget" in c for c in cut["caveats"])
    assert any("in the task's format" in c for c in cut["caveats"])
    loop = score_records(recs("qa", [True] * 4, text="a\nb\nc"), bootstrap=10, embedder=None)
    assert len(loop["caveats"]) == 1 and "format" in loop["caveats"][0]
