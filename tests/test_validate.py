"""Validation by generation (``sweep --validate``): the gate, the choice, and its journal.

The gate is recomputed here from the candidates' generation metrics; the choice must be the
most diverse candidate that passes it; a validation killed between candidates resumes to the
very same results, and a malformed validation journal is refused before anything changes.
"""

from __future__ import annotations

import json

import pytest

from layergraft.cli import main
from layergraft.toy import toy_paths
from tiny import torch_threads, write_few_crc_prompts

BASE, POST = (str(p) for p in toy_paths())


def _argv(out, prompts, *extra):
    return ["sweep", "--base", BASE, "--post", POST, "--out", str(out), "--prompts", str(prompts),
            "--max-len", "2", "--alphas", "0.5,1", "--validate", "1", "--validate-samples", "1",
            "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    prompts = write_few_crc_prompts(root / "p.jsonl", per_category=4)
    with torch_threads(1):
        assert main(_argv(root / "full", prompts)) == 0
    return root, prompts, json.loads((root / "full" / "results.json").read_text())


def test_the_choice_is_the_most_diverse_candidate_that_passes_the_gate(validated):
    _, _, res = validated
    val = res["validation"]
    post = val["post"]
    assert [c["family"] for c in val["candidates"]] == ["interval", "interval_soup"]
    for c in val["candidates"]:
        ok = all((c[k] or 0) >= 0.9 * (post[k] or 0) for k in ("finished_rate", "valid_rate"))
        assert c["passes"] == ok and (c["fails"] == []) == ok
        want = res["candidates"]["format"][c["family"]][0]
        assert c["label"] == want["label"] and c["H_norm"] == want["H_norm"]
    passing = [c for c in val["candidates"] if c["passes"]]
    if passing:
        best = max(passing, key=lambda c: c["H_norm"])
        assert val["chosen"]["label"] == best["label"] and best["label"] in val["verdict"]
    else:
        assert val["chosen"] is None and val["verdict"].startswith("no candidate passed")
    assert val["samples"] == 1 and val["prompts"] == 12 and val["rule"] == "format"


def test_a_killed_validation_resumes_to_the_same_results(validated, tmp_path):
    root, prompts, res = validated
    out = tmp_path / "cut"
    out.mkdir()
    (out / "intervals.jsonl").write_bytes((root / "full" / "intervals.jsonl").read_bytes())
    lines = (root / "full" / "validation.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 3  # header, post, two candidates
    (out / "validation.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][:50])  # mid-line
    with torch_threads(1):
        assert main(_argv(out, prompts, "--resume")) == 0
    assert json.loads((out / "results.json").read_text()) == res
    assert (out / "validation.jsonl").read_bytes() == b"".join(lines)


def test_a_malformed_validation_journal_is_refused_before_anything_changes(
    validated, tmp_path, capsys
):
    """(Another generation setting no longer refuses: it validates again, see
    test_resume_selection.py.) A line that is not a candidate's generations is refused."""
    root, prompts, _ = validated
    out = tmp_path / "cut"
    out.mkdir()
    for name in ("intervals.jsonl", "validation.jsonl"):
        (out / name).write_bytes((root / "full" / name).read_bytes())
    with open(out / "validation.jsonl", "ab") as f:
        f.write(b'{"kind": "unit", "rows": [{"records": []}]}\n')
    before = (out / "validation.jsonl").read_bytes()
    with torch_threads(1):
        assert main([*_argv(out, prompts, "--resume"), "--validate-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert "line 5: a row is not a candidate's generations" in err and err.count("\n") == 1
    assert (out / "validation.jsonl").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["intervals.jsonl", "validation.jsonl"]
