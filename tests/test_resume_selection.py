"""``sweep --resume`` with other selection or validation settings (issue 34, class 4).

The docs say the rule, the ratios and ``--validate`` may change on resume. A candidate's
generations depend on the hybrid and the generation settings only, so a resume with another
rule or a larger K keeps the journaled candidates and generates only the new ones, and a
resume with other generation settings (``--validate-samples``) validates again from scratch.
Generations are counted by wrapping the worker's ``generate``; the expected candidates are
recomputed here from results.json's ranked candidate lists.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from layergraft.cli import main
from layergraft.slr.sweep.worker import SweepWorker
from layergraft.toy import toy_paths
from tiny import torch_threads, write_few_crc_prompts

BASE, POST = (str(p) for p in toy_paths())


def _argv(out, prompts, *extra):
    return ["sweep", "--base", BASE, "--post", POST, "--out", str(out), "--prompts", str(prompts),
            "--max-len", "2", "--validate-samples", "1", "--threads", "1", "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A finished sweep validated with the format rule and K = 1."""
    root = tmp_path_factory.mktemp("resel")
    prompts = write_few_crc_prompts(root / "p.jsonl", per_category=4)
    with torch_threads(1):
        assert main(_argv(root / "full", prompts, "--validate", "1")) == 0
    return root, prompts


@pytest.fixture
def generations(monkeypatch):
    """The labels every validation generation was run for, in order."""
    seen: list[str] = []
    real = SweepWorker.generate

    def counting(self, unit):
        seen.append(unit.name)
        return real(self, unit)

    monkeypatch.setattr(SweepWorker, "generate", counting)
    return seen


def _copy(first, tmp_path):
    root, prompts = first
    out = tmp_path / "resumed"
    shutil.copytree(root / "full", out)
    return out, prompts


def _labels(path):
    return [r["label"] for line in path.read_text().splitlines()[1:]
            for r in json.loads(line)["rows"]]  # fmt: skip


def _expected(res, rule, k):
    """The candidates validation must show: the first K of each family's ranked list."""
    pools = res["candidates"][rule]
    return {r["label"] for fam in pools for r in pools[fam][:k]}


def _resume(out, prompts, *extra):
    with torch_threads(1):
        assert main(_argv(out, prompts, "--resume", *extra)) == 0
    return json.loads((out / "results.json").read_text())


def test_the_same_settings_generate_nothing_again(first, tmp_path, generations):
    out, prompts = _copy(first, tmp_path)
    before = (out / "validation.jsonl").read_bytes()
    res = _resume(out, prompts, "--validate", "1")
    assert generations == []
    assert (out / "validation.jsonl").read_bytes() == before
    assert res == json.loads((first[0] / "full" / "results.json").read_text())


def test_more_candidates_generate_only_the_new_ones(first, tmp_path, generations):
    out, prompts = _copy(first, tmp_path)
    before = (out / "validation.jsonl").read_bytes()
    old = _labels(out / "validation.jsonl")
    old_val = json.loads((out / "results.json").read_text())["validation"]
    res = _resume(out, prompts, "--validate", "2")
    want = _expected(res, "format", 2)
    assert {c["label"] for c in res["validation"]["candidates"]} == want
    assert want - set(old)  # K = 2 really asks for more candidates
    assert sorted(generations) == sorted(want - set(old))  # each new one once, no old one
    assert (out / "validation.jsonl").read_bytes().startswith(before)  # old lines untouched
    assert res["validation"]["k"] == 2 and res["validation"]["post"] == old_val["post"]
    reused = {c["label"]: c for c in old_val["candidates"]}
    for c in res["validation"]["candidates"]:
        if c["label"] in reused:  # same generations, same metrics
            assert c["finished_rate"] == reused[c["label"]]["finished_rate"]
            assert c["valid_rate"] == reused[c["label"]]["valid_rate"]


def test_another_rule_validates_its_own_candidates(first, tmp_path, generations):
    out, prompts = _copy(first, tmp_path)
    old = _labels(out / "validation.jsonl")
    res = _resume(out, prompts, "--validate", "1", "--rule", "paper")
    want = _expected(res, "paper", 1)
    assert res["validation"]["rule"] == "paper" and res["rule"]["name"] == "paper"
    assert want - set(old)  # the paper rule's candidate is not the format rule's
    assert {c["label"] for c in res["validation"]["candidates"]} == want
    assert sorted(generations) == sorted(want - set(old))
    assert set(_labels(out / "validation.jsonl")) == set(old) | want


def test_more_samples_validate_again_from_scratch(first, tmp_path, generations, caplog):
    out, prompts = _copy(first, tmp_path)
    with caplog.at_level(logging.WARNING):
        res = _resume(out, prompts, "--validate", "1", "--validate-samples", "2")
    assert "generation.n (1 there, 2 now)" in caplog.text
    assert "validating every candidate again" in caplog.text
    want = _expected(res, "format", 1)
    assert sorted(generations) == sorted(want | {"post"})  # every one, once
    header = json.loads((out / "validation.jsonl").read_text().splitlines()[0])
    assert header["config"]["generation"]["n"] == 2
    assert sorted(_labels(out / "validation.jsonl")) == sorted(want | {"post"})
    assert res["validation"]["samples"] == 2
    rows = [
        json.loads(x)["rows"][0] for x in (out / "validation.jsonl").read_text().splitlines()[1:]
    ]
    for row in rows:  # two replies to every prompt now
        assert {r["sample"] for r in row["records"]} == {0, 1}
