"""Task sets, the answer canonicaliser and the final-answer extractor."""

from __future__ import annotations

import json

import pytest

from layergraft.errors import InputError
from layergraft.gen.answers import (
    canonicalize,
    extract_final_answer,
    has_final_marker,
    match_answer,
    normalize_number,
    reasoning_path,
)
from layergraft.gen.tasks import load_gsm8k, load_task


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Blue.", "blue"),
        ("  The BLUE!  ", "blue"),
        ("an apple", "apple"),
        ("New  York", "new york"),
        ("Café", "cafe"),
        ("Rhode-Island", "rhode island"),
        ("It's", "its"),
        ("", ""),
    ],
)
def test_canonicalize(text, want):
    assert canonicalize(text) == want


def test_canonicalize_aliases_and_match():
    aliases = {"USA": "United States", "U.K.": "United Kingdom"}
    valid = ["United States", "United Kingdom", "France"]
    assert match_answer("USA", valid, aliases) == "united states"
    assert match_answer("The U.K.", valid, aliases) == "united kingdom"
    assert match_answer("france.\nBecause I like it.", valid) == "france"
    assert match_answer("I would say France", valid) == "france"
    assert match_answer("France or the United States", valid) is None  # two answers
    assert match_answer("Germany", valid) is None
    assert match_answer("", valid) is None
    long = "word " * 30 + "France"
    assert match_answer(long, valid) is None  # not a short answer


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("3 + 4 = 7. #### 7", "7"),
        ("so 12 apples #### 1,234", "1234"),
        ("#### $5.50", "5.5"),
        ("#### -3", "-3"),
        ("first 2 then 9 then 10", "10"),
        ("It costs 3.0 dollars", "3"),
        ("#### 4 and later 9", "4"),
        ("no numbers here", None),
        ("#### 2 ... #### 8", "8"),
    ],
)
def test_extract_final_answer(text, want):
    assert extract_final_answer(text) == want


def test_numbers_markers_paths():
    assert normalize_number("007") == "7"
    assert normalize_number("1e3") == "1000"
    assert normalize_number("abc") is None
    assert has_final_marker("x #### 3") and not has_final_marker("the answer is 3")
    assert reasoning_path("3 + 4 = 7. #### 7") == reasoning_path("3  +  4 = 7 #### 9")
    assert reasoning_path("3 + 4 = 7") != reasoning_path("4 + 3 = 7")


def test_bundled_sets_sizes_and_kinds():
    creative, qa, reasoning = load_task("creative"), load_task("qa"), load_task("reasoning")
    assert len(creative) >= 30 and len(qa) >= 20 and len(reasoning) >= 50
    assert {p.task for p in creative} == {"creative"}
    assert all(p.valid for p in qa)
    assert all(p.answer is not None for p in reasoning)
    # every QA list holds the answer the toy post model learnt for its wording
    by_id = {p.id: p for p in qa}
    assert match_answer("Blue.", by_id["qa-color-0"].valid) == "blue"
    assert match_answer("California.", by_id["qa-state-0"].valid) == "california"
    # toy-style arithmetic is bundled, with correct answers
    toy = [p for p in reasoning if "gets" in p.prompt and "more. How many" in p.prompt]
    assert len(toy) >= 5
    for p in toy:
        nums = [int(t) for t in p.prompt.split() if t.isdigit()]
        assert int(p.answer) == sum(nums)
    assert len({p.id for p in creative + qa + reasoning}) == len(creative + qa + reasoning)
    assert len(load_task("qa", limit=3)) == 3


def test_user_file_and_gsm8k(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(
        json.dumps({"prompt": "Name a vowel.", "valid": ["a", "e"]})
        + "\n\n"
        + json.dumps({"id": "r", "prompt": "1+1?", "answer": 2})
        + "\n"
    )
    ps = load_task(f)
    assert [p.task for p in ps] == ["qa", "reasoning"] and ps[1].answer == "2"
    g = tmp_path / "gsm8k.jsonl"
    g.write_text(
        json.dumps({"question": "Q1?", "answer": "work <<2*3=6>> 6\n#### 6"})
        + "\n"
        + json.dumps({"question": "Q2?", "answer": "#### 1,000"})
        + "\n"
    )
    gs = load_gsm8k(g)
    assert [(p.task, p.answer) for p in gs] == [("reasoning", "6"), ("reasoning", "1000")]
    assert load_task(g)[1].answer == "1000"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json\n", "not valid JSON"),
        ('{"valid": ["a"]}\n', '"prompt"'),
        ('{"prompt": "x", "task": "poetry"}\n', "task 'poetry'"),
        ('{"prompt": "x", "task": "qa"}\n', "valid"),
        ('{"prompt": "x", "task": "reasoning", "answer": "none"}\n', "numeric"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "twice"),
        ("\n", "no prompts"),
        ('{"question": "q", "answer": "no marker"}\n', "####"),
    ],
)
def test_bad_task_files(tmp_path, content, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(InputError, match=needle.replace("(", r"\(")):
        load_task(f)


def test_unknown_task_names_fix():
    with pytest.raises(InputError, match="bundled set"):
        load_task("poems")
