"""``--search halving``: a quarter of the prompts first, then only candidates that can win.

The reference is the exhaustive sweep of the same pair and prompts: halving must select the
same hybrid under the active rule, its survivors must score what the exhaustive sweep scores
(up to float noise: other prompts share their packed rows), and it must do less work.
"""

from __future__ import annotations

import json
import logging

import pytest

from layergraft.cli import main
from layergraft.slr.sweep.engines import Unit
from layergraft.slr.sweep.halving import (
    MIN_STAGE1,
    decide,
    decide_all,
    merge,
    stage_prompts,
    work,
)
from layergraft.slr.sweep.run import sweep
from layergraft.toy import toy_paths
from tiny import torch_threads, write_few_crc_prompts

BASE, POST = (str(p) for p in toy_paths())


@pytest.fixture(scope="module")
def both():
    with torch_threads(1):
        full = sweep(BASE, POST, None, prompts="all", method="both", progress=False)
        half = sweep(
            BASE, POST, None, prompts="all", method="both", search="halving", progress=False
        )
    return full, half


def test_halving_selects_what_the_exhaustive_sweep_selects(both):
    full, half = both
    assert half["search"]["kind"] == "halving" and half["search"]["rule"] == "format"
    for name in ("paper", "format"):
        assert half["selections"][name]["interval"] == full["selections"][name]["interval"]
        assert half["best"][name]["label"] == full["best"][name]["label"]
    assert half["soup"]["selected"]["alpha"] == full["soup"]["selected"]["alpha"]
    # the survivors are scored on every prompt: the exhaustive sweep's numbers
    ref = {r["interval"]: r for r in full["intervals"]}
    for r in half["intervals"]:
        for k in ("V", "H_norm", "V_end"):
            assert r[k] == pytest.approx(ref[r["interval"]][k], abs=1e-6)
    # and it did less: every dropped candidate says why
    s = half["search"]
    assert s["survivors"] + len(s["dropped"]) == s["candidates"] == 36 + 21
    assert 0 < len(half["intervals"]) < 36 and s["work_share"] < 0.8
    assert all(
        why.startswith(("clearly ineligible", "cannot win")) for why in s["dropped"].values()
    )
    assert s["bounds"].startswith("paired per-prompt bootstrap, 2000 resamples, 99% two-sided")


def test_halving_without_v_end_keeps_candidates_for_the_paper_rule_only():
    """With --v-end off the format rule cannot be reported, so stage 1 must not test V_end
    (its per-prompt values are None); the paper rule's pick is the exhaustive sweep's."""
    kw = dict(prompts="all", method="slr", v_end="off", progress=False)
    with torch_threads(1):
        full = sweep(BASE, POST, None, **kw)
        half = sweep(BASE, POST, None, search="halving", **kw)
    assert half["search"]["kept_for_rules"] == ["paper"] and list(half["selections"]) == ["paper"]
    assert half["selections"]["paper"]["interval"] == full["selections"]["paper"]["interval"]


def test_the_stage_one_quarter_is_fixed_seeded_and_stratified():
    cats = ["digits"] * 24 + ["letters"] * 24
    a, rest = stage_prompts(cats, seed=0)
    assert stage_prompts(cats, seed=0) == (a, rest) and stage_prompts(cats, seed=1)[0] != a
    assert len(a) == 12 and sum(cats[i] == "digits" for i in a) == 6
    assert sorted(a + rest) == list(range(48))


def _row(kind_key, v, h, e, **where):
    return {**where, "scores": {"items": {"V": v, "H_norm": h, "V_end": e}}}


def test_a_candidate_is_dropped_only_when_the_bounds_say_so():
    post = {"kind": "reference", "name": "post", **_row(0, [0.9] * 10, [0.1] * 10, [0.9] * 10)}
    good = {
        "kind": "interval",
        "start": 0,
        "end": 1,
        **_row(0, [0.88] * 10, [0.5, 0.6] * 5, [0.85] * 10),
    }
    close = {
        "kind": "interval",
        "start": 1,
        "end": 2,
        **_row(0, [0.88] * 10, [0.55, 0.45] * 5, [0.85] * 10),
    }
    worse = {
        "kind": "interval",
        "start": 2,
        "end": 3,
        **_row(0, [0.88] * 10, [0.2, 0.25] * 5, [0.85] * 10),
    }
    broken = {
        "kind": "interval",
        "start": 3,
        "end": 4,
        **_row(0, [0.3, 0.4] * 5, [0.9] * 10, [0.1] * 10),
    }
    mute = {
        "kind": "interval",
        "start": 4,
        "end": 5,
        **_row(0, [0.88] * 10, [0.9] * 10, [0.2, 0.3] * 5),
    }
    rows = [post, good, close, worse, broken, mute]
    kw = dict(validity_ratio=0.9, end_ratio=0.9, diversity_key="H_norm", n_all=40, seed=0)
    dec = decide(rows, rule="format", keep=1, **kw)
    assert set(dec["survivors"]) == {"interval:0:1", "interval:1:2"}  # close: not clearly beaten
    assert dec["dropped"]["interval:2:3"].startswith("cannot win")
    assert dec["dropped"]["interval:3:4"].startswith("clearly ineligible: V")
    assert dec["dropped"]["interval:4:5"].startswith("clearly ineligible: V_end")
    # the paper rule does not read V_end: the mute hybrid is the most diverse and survives
    paper = decide(rows, rule="paper", keep=1, **kw)
    assert "interval:4:5" in paper["survivors"] and "interval:0:1" in paper["dropped"]
    # results report both rules' picks, so a candidate drops only when neither rule can pick it:
    # the mute hybrid (paper's winner, V_end clearly short) and close (format's) both stay
    both_rules = decide_all(rows, rules=["format", "paper"], keep=1, **kw)
    assert set(both_rules["survivors"]) == {"interval:0:1", "interval:1:2", "interval:4:5"}
    assert list(both_rules["dropped"]) == ["interval:2:3", "interval:3:4"]
    assert both_rules["dropped"]["interval:2:3"] == dec["dropped"]["interval:2:3"]
    # --validate K keeps K per family: two candidates beat the worse one, a third place is open
    assert "interval:2:3" in decide(rows, rule="format", keep=2, **kw)["dropped"]
    assert "interval:2:3" in decide(rows, rule="format", keep=3, **kw)["survivors"]


@pytest.mark.parametrize("per_category", [3, 4])
def test_too_few_prompts_fall_back_to_exhaustive_with_a_warning(tmp_path, caplog, per_category):
    """6 prompts: fewer than a first stage needs; 8: the first stage takes all of them and a
    second stage would score none (it used to fail there: "no CRC prompts to score")."""
    few = write_few_crc_prompts(tmp_path / "few.jsonl", per_category=per_category)
    assert MIN_STAGE1 == 8
    with torch_threads(1), caplog.at_level(logging.WARNING):
        res = sweep(BASE, POST, None, prompts=few, max_len=2, search="halving", progress=False)
    why = f"needs more than 8 prompts, and more than one a category, to bound a quarter of them; with {2 * per_category}"
    assert res["search"]["kind"] == "exhaustive" and why in res["search"]["fell_back"]
    assert "--search halving " + why in caplog.text
    assert len(res["intervals"]) == 15


def test_a_killed_halving_sweep_resumes_to_the_same_results(tmp_path):
    prompts = write_few_crc_prompts(tmp_path / "p.jsonl", per_category=8)
    argv = ["sweep", "--base", BASE, "--post", POST, "--prompts", str(prompts), "--max-len", "3",
            "--search", "halving", "--quiet"]  # fmt: skip
    with torch_threads(1):
        assert main([*argv, "--out", str(tmp_path / "full")]) == 0
        data = (tmp_path / "full" / "intervals.jsonl").read_bytes()
        lines = data.splitlines(keepends=True)
        stage1 = sum(b'"stage": 1' in x for x in lines)
        cut = b"".join(lines[: 1 + stage1 + 1])  # header, stage 1, one unit of stage 2
        (tmp_path / "cut").mkdir()
        (tmp_path / "cut" / "intervals.jsonl").write_bytes(cut + lines[stage1 + 2][:40])
        assert main([*argv, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert a == b
    assert (tmp_path / "cut" / "intervals.jsonl").read_bytes() == data


def test_merged_rows_hold_every_prompt_in_prompt_order():
    """Stage 2 re-joins a survivor's two halves: per-prompt scores come back in the prompts'
    own order (the order a full sweep sums in), a dropped candidate gets no row, and the
    stage and per-stage scores do not leak into the merged row."""

    def half(stage, start, index, v):
        items = {"index": index, "V": v, "H_norm": [x / 10 for x in v]}
        return {"kind": "interval", "start": start, "end": start + 1, "stage": stage,
                "scores": {"items": items}}  # fmt: skip

    stage1 = [half(1, 0, [4, 0, 2], [40, 0, 20]), half(1, 1, [4, 0, 2], [41, 1, 21])]
    stage2 = [half(2, 0, [3, 1], [30, 10])]  # the 1:2 candidate was dropped after stage 1
    got = merge(stage1, stage2, lambda items: items)
    assert got == [
        {"kind": "interval", "start": 0, "end": 1,
         "scores": {"index": [0, 1, 2, 3, 4], "V": [0, 10, 20, 30, 40],
                    "H_norm": [0.0, 1.0, 2.0, 3.0, 4.0]}}
    ]  # fmt: skip


def test_candidates_compete_only_within_their_family():
    """A whole-model soup, an interval soup (alpha < 1) and a partial restore are selected
    among their own kind, so a far more diverse interval does not drop them."""
    post = {"kind": "reference", "name": "post", **_row(0, [0.9] * 10, [0.1] * 10, [0.9] * 10)}
    ok = ([0.9] * 10, [0.85] * 10)

    def cand(h, **where):
        return {**where, **_row(0, ok[0], [h, h + 0.01] * 5, ok[1])}

    best = cand(0.9, kind="interval", start=0, end=1)
    rivals = {
        "interval:1:2": cand(0.2, kind="interval", start=1, end=2),
        "soup:0.5": cand(0.2, kind="soup", alpha=0.5),
        "interval:1:2@0.5": cand(0.2, kind="interval", start=1, end=2, alpha=0.5),
        "interval:1:2:mlp": cand(0.2, kind="interval", start=1, end=2, parts="mlp"),
    }
    dec = decide([post, best, *rivals.values()], rule="format", validity_ratio=0.9,
                 end_ratio=0.9, diversity_key="H_norm", keep=1, n_all=40, seed=0)  # fmt: skip
    assert set(dec["dropped"]) == {"interval:1:2"}
    assert set(dec["survivors"]) == {"interval:0:1", *rivals} - {"interval:1:2"}


def test_work_counts_the_layer_forwards_prefix_reuse_runs():
    """4 layers, start 1, ends 2, 3, 4: one post layer below the start, base layers 1-3 once
    (the chain to the deepest end), then the post layers above each end (2 + 1 + 0): 7 per
    batch, not 4 per hybrid; a soup or reference runs the whole model (4)."""
    start = Unit("start", start=1, ends=(2, 3, 4))
    assert work([start], 4, 0.25) == pytest.approx(7 * 0.25)
    assert work([start, Unit("soup", alpha=0.5), Unit("reference", name="post")], 4, 1.0) == 15


def test_rows_come_back_in_plan_order_whatever_order_they_arrived_in():
    """Rows as Ray might deliver them (finish order), with a row a resumed journal holds for a
    unit this run did not plan and a key written twice: the planned keys, in the units' order,
    each once (its latest row); the unplanned row is left out."""
    from layergraft.slr.sweep.journal import rows_in_plan_order

    def iv(start, end, tag, stage=1):
        return {"kind": "interval", "start": start, "end": end, "stage": stage, "tag": tag}

    arrived = [
        iv(2, 3, "a"),
        {"kind": "reference", "name": "post", "stage": 1, "tag": "ref"},
        iv(0, 2, "b"),
        iv(5, 6, "not planned"),
        iv(0, 1, "c"),
        iv(0, 2, "b again"),
        iv(0, 1, "stage 0", stage=0),
    ]
    units = [
        Unit("reference", name="post", stage=1),
        Unit("start", start=0, ends=(1, 2), stage=1),
        Unit("start", start=2, ends=(3, 4), stage=1),
    ]
    got = [r["tag"] for r in rows_in_plan_order(arrived, units)]
    assert got == ["ref", "c", "b again", "a"]


def test_bounds_shrink_by_the_finite_population_correction():
    """The stage-1 quarter samples the prompt set without replacement: the bootstrap interval
    of its mean narrows by sqrt((N - n) / (N - 1)) around the mean, and to nothing at n = N."""
    import math

    from layergraft.slr.sweep.halving import _Bounds

    diff = [0.3, -0.1, 0.5, 0.2, 0.0, 0.4, -0.2, 0.1, 0.6, 0.3]
    mean = sum(diff) / len(diff)
    lo_inf, hi_inf = _Bounds(10, 10**12, seed=3).interval(diff)
    lo, hi = _Bounds(10, 40, seed=3).interval(diff)
    f = math.sqrt((40 - 10) / (40 - 1))
    assert hi - mean == pytest.approx((hi_inf - mean) * f, rel=1e-9)
    assert mean - lo == pytest.approx((mean - lo_inf) * f, rel=1e-9)
    assert _Bounds(10, 10, seed=3).interval(diff) == pytest.approx((mean, mean))


def test_exactly_at_the_threshold_is_eligible_and_a_tie_drops_nobody():
    """V >= ratio V_post is eligible, so a candidate with V = 0.9 V_post on every prompt is
    kept and clearly eligible (it can drop a less diverse rival); two candidates with equal
    H on every prompt do not drop each other. Scores of a different length than the post
    model's are an error."""
    post = {"kind": "reference", "name": "post", **_row(0, [1.0] * 10, [0.1] * 10, [1.0] * 10)}
    edge = {"kind": "interval", "start": 0, "end": 1,
            **_row(0, [0.9] * 10, [0.6, 0.7] * 5, [0.9] * 10)}  # fmt: skip
    twin = {"kind": "interval", "start": 1, "end": 2,
            **_row(0, [0.95] * 10, [0.6, 0.7] * 5, [0.95] * 10)}  # fmt: skip
    low = {"kind": "interval", "start": 2, "end": 3,
           **_row(0, [0.95] * 10, [0.2, 0.3] * 5, [0.95] * 10)}  # fmt: skip
    kw = dict(rule="format", validity_ratio=0.9, end_ratio=0.9, diversity_key="H_norm",
              n_all=40, seed=0)  # fmt: skip
    dec = decide([post, edge, twin, low], keep=2, **kw)
    assert set(dec["survivors"]) == {"interval:0:1", "interval:1:2"}
    assert set(dec["dropped"]) == {"interval:2:3"}  # beaten by both, edge among them
    assert set(decide([post, edge, twin, low], keep=1, **kw)["survivors"]) == {
        "interval:0:1",
        "interval:1:2",
    }  # the tie
    short = {**low, "scores": {"items": {k: v[:9] for k, v in low["scores"]["items"].items()}}}
    with pytest.raises(ValueError):
        decide([post, edge, short], keep=1, **kw)
