"""The selection rules against references written here: random candidate tables, the
eligibility conditions spelled out in numpy, ties broken by hand.

Why a separate file: the rules decide what a user restores, and the sweep tests only reach
them through a handful of toy rows; here every branch (paper vs format, a missing V_end, ties
on diversity, the Pareto front, labels) meets many random tables."""

from __future__ import annotations

import numpy as np
import pytest

from layergraft.slr.sweep.assemble import assemble_crc
from layergraft.slr.sweep.selection import Rule, caveats, label, pareto_front, ranked, select


def _table(seed: int, n: int = 40) -> tuple[list[dict], dict]:
    """Random rows (intervals, interval soups, parts, whole-model soups) with coarse scores, so
    that ties on diversity happen, and a post model to compare with."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = rng.integers(0, 4)
        row = {
            "V": float(rng.choice(np.linspace(0.5, 1.0, 11))),
            "H_norm": float(rng.choice(np.linspace(0.0, 1.0, 6))),
            "H": float(rng.random()),
            "V_end": None if rng.random() < 0.1 else float(rng.choice(np.linspace(0.4, 1.0, 7))),
            "id": i,
        }
        if kind < 3:
            s = int(rng.integers(0, 8))
            row |= {"start": s, "end": int(rng.integers(s + 1, 9))}
            row["alpha"] = float(rng.choice([0.25, 0.5, 1.0])) if kind >= 1 else 1.0
            if kind == 2:
                row["parts"] = str(rng.choice(["attn", "mlp"]))
        else:
            row["alpha"] = float(rng.choice([0.1, 0.5, 0.9]))
        rows.append(row)
    post = {"V": float(rng.uniform(0.7, 1.0)), "V_end": float(rng.uniform(0.6, 1.0))}
    return rows, post


def _reference_eligible(rows, post, name, vr, er):
    v = np.array([r["V"] for r in rows])
    ok = v >= vr * post["V"]
    if name == "format":
        ve = np.array([-np.inf if r["V_end"] is None else r["V_end"] for r in rows])
        ok &= ve >= er * post["V_end"]
    return [r for r, k in zip(rows, ok, strict=True) if k]


def _reference_key(r, key):
    """Most diverse first; then the smaller change: shorter interval (a whole soup counts as
    longest), smaller alpha, earlier start."""
    length = r["end"] - r["start"] if "start" in r else 10**9
    return (-r[key], length, r.get("alpha", 1.0), r.get("start", 0))


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("name", ["paper", "format"])
def test_select_and_ranked_match_the_reference(seed, name):
    rows, post = _table(seed)
    vr, er = [(0.9, 0.9), (0.8, 0.95), (0.95, 0.7)][seed % 3]
    rule = Rule(name, validity_ratio=vr, end_ratio=er)
    want = sorted(
        _reference_eligible(rows, post, name, vr, er), key=lambda r: _reference_key(r, "H_norm")
    )
    got = select(rows, post, rule)
    assert got["eligible"] == len(want) and got["of"] == len(rows)
    assert got["selected"] is (want[0] if want else None)
    assert [r["id"] for r in ranked(rows, post, rule)] == [r["id"] for r in want]
    assert got["thresholds"]["V"] == pytest.approx(vr * post["V"], abs=0)
    if name == "format":
        assert got["thresholds"]["V_end"] == pytest.approx(er * post["V_end"], abs=0)
    else:
        assert "V_end" not in got["thresholds"]


def test_format_rule_excludes_a_hybrid_whose_replies_stop_ending():
    """The case the rule exists for: the most diverse hybrid keeps V but loses V_end."""
    post = {"V": 0.99, "V_end": 0.98}
    broken = {"start": 11, "end": 18, "V": 0.94, "V_end": 0.05, "H_norm": 0.41}
    kept = {"start": 8, "end": 12, "V": 0.93, "V_end": 0.90, "H_norm": 0.30}
    exact = {"start": 2, "end": 4, "V": 0.90, "V_end": 0.882, "H_norm": 0.35}  # at both limits
    rows = [broken, kept, exact]
    assert select(rows, post, Rule("paper"))["selected"] is broken
    fmt = select(rows, post, Rule("format"))
    assert fmt["selected"] is exact and fmt["eligible"] == 2
    # just below a limit is out
    below = dict(exact, V_end=0.8819)
    assert select([below, kept], post, Rule("format"))["selected"] is kept
    # a row without V_end can meet the paper rule but never the format rule
    unknown = dict(exact, V_end=None)
    assert select([unknown], post, Rule("paper"))["selected"] is unknown
    assert select([unknown], post, Rule("format"))["selected"] is None


def test_diversity_key_is_the_one_named():
    post = {"V": 1.0}
    a = {"start": 0, "end": 1, "V": 1.0, "H": 0.9, "H_norm": 0.1}
    b = {"start": 0, "end": 2, "V": 1.0, "H": 0.1, "H_norm": 0.9}
    assert select([a, b], post, Rule("paper", diversity_key="H"))["selected"] is a
    assert select([a, b], post, Rule("paper"))["selected"] is b


def test_rule_text_and_json_name_what_is_required():
    paper, fmt = Rule("paper", validity_ratio=0.8), Rule("format", end_ratio=0.95)
    assert paper.text == "max H_norm s.t. V >= 0.8·V_post"
    assert fmt.text == "max H_norm s.t. V >= 0.9·V_post and V_end >= 0.95·V_end_post"
    assert paper.as_json()["end_ratio"] is None and fmt.as_json()["end_ratio"] == 0.95
    assert fmt.as_json()["validity_ratio"] == 0.9 and fmt.as_json()["name"] == "format"


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_matches_numpy_dominance(seed):
    rng = np.random.default_rng(seed)
    pts = rng.choice(np.linspace(0, 1, 6), size=(25, 2))  # coarse: equal points and ties occur
    points = {i: (float(v), float(h)) for i, (v, h) in enumerate(pts)}
    ge = (pts[None, :, 0] >= pts[:, None, 0]) & (pts[None, :, 1] >= pts[:, None, 1])
    gt = (pts[None, :, 0] > pts[:, None, 0]) | (pts[None, :, 1] > pts[:, None, 1])
    dominated = (ge & gt).any(axis=1)
    want = sorted(np.flatnonzero(~dominated).tolist(), key=lambda i: (pts[i, 0], i))
    assert pareto_front(points) == want


@pytest.mark.parametrize(
    ("row", "text"),
    [
        ({"start": 4, "end": 7}, "4:7"),
        ({"start": 4, "end": 7, "alpha": 1.0, "parts": "all"}, "4:7"),
        ({"start": 4, "end": 7, "alpha": 0.5}, "4:7@0.5"),
        ({"start": 2, "end": 7, "parts": "mlp"}, "2:7:mlp"),
        ({"start": 1, "end": 3, "parts": "attn", "alpha": 0.25}, "1:3:attn@0.25"),
        ({"alpha": 0.7}, "soup@0.7"),
    ],
)
def test_labels(row, text):
    assert label(row) == text


def test_select_reports_the_rule_it_applied():
    post = {"V": 1.0, "V_end": 1.0}
    row = {"start": 0, "end": 1, "V": 1.0, "V_end": 1.0, "H_norm": 0.5}
    for rule in (Rule("paper"), Rule("format", end_ratio=0.8)):
        got = select([row], post, rule)
        assert got["rule"] == rule.name and got["text"] == rule.text
    assert Rule("format", 0.85, 0.8, "H").as_json() == {
        "name": "format",
        "text": "max H s.t. V >= 0.85·V_post and V_end >= 0.8·V_end_post",
        "validity_ratio": 0.85,
        "end_ratio": 0.8,
        "diversity_key": "H",
    }


def test_ties_prefer_the_smaller_change_at_any_depth():
    """A whole-model soup changes every tensor: any interval, even one of 120 layers (a
    405B-class model has 126), is the smaller change. Rows written without ``alpha`` are
    restores (alpha 1): among equals the earlier start wins."""
    post = {"V": 1.0}
    deep = {"start": 0, "end": 120, "V": 1.0, "H_norm": 0.5}
    soup = {"alpha": 0.05, "V": 1.0, "H_norm": 0.5}
    assert select([soup, deep], post, Rule("paper"))["selected"] is deep
    no_alpha = {"start": 3, "end": 5, "V": 1.0, "H_norm": 0.5}
    restore = {"start": 4, "end": 6, "alpha": 1.0, "V": 1.0, "H_norm": 0.5}
    blend = {"start": 5, "end": 7, "alpha": 0.5, "V": 1.0, "H_norm": 0.5}
    assert select([restore, no_alpha], post, Rule("paper"))["selected"] is no_alpha
    assert select([no_alpha, blend], post, Rule("paper"))["selected"] is blend
    assert ranked([restore, blend, no_alpha, soup], post, Rule("paper")) == [
        blend,
        no_alpha,
        restore,
        soup,
    ]


# the CRC references of the two Gemma-3-270M pairs (docs/gemma3*/results.json), rounded
PLANTED = {"post": {"V": 0.997, "V_end": 0.996}, "base": {"V": 0.018, "V_end": 7e-6}}
NATURAL = {"post": {"V": 0.016, "V_end": 1.1e-6}, "base": {"V": 0.018, "V_end": 7e-6}}


def test_no_caveat_when_the_post_model_plays_the_crc_game():
    assert caveats(PLANTED["post"], PLANTED["base"], [Rule("paper"), Rule("format")]) == []


def test_caveats_name_each_way_the_proxy_stops_constraining():
    got = caveats(NATURAL["post"], NATURAL["base"], [Rule("paper"), Rule("format")])
    assert len(got) == 4
    assert "0.016" in got[0] and "validation by generation" in got[0]
    # 0.018 >= 0.9 * 0.016 and 7e-6 >= 0.9 * 1.1e-6: the base passes both rules
    assert "paper rule" in got[1] and "format rule" in got[2]
    assert "V_end is 1.1e-06" in got[3]
    # each caveat on its own: a base below the validity threshold passes neither rule
    low_base = {"V": 0.9 * 0.016 - 1e-6, "V_end": 1.0}
    assert not any("base model" in c for c in caveats(NATURAL["post"], low_base, [Rule("paper")]))
    # a base at the paper threshold but under the format rule's end threshold passes one rule
    at_v = {"V": 0.9 * 0.5, "V_end": 0.0}
    got = caveats({"V": 0.5, "V_end": 0.5}, at_v, [Rule("paper"), Rule("format")])
    assert [c for c in got if "base model" in c] == [
        "the base model itself meets the paper rule's thresholds: the rule does not constrain "
        "which layers are restored"
    ]
    # the V_end caveat belongs to the format rule only
    assert not any("V_end" in c for c in caveats(NATURAL["post"], NATURAL["base"], [Rule("paper")]))


def test_sweep_results_carry_the_caveats():
    """assemble_crc (what results.json holds) reports them from its own reference rows."""

    def ref(name: str, s: dict) -> dict:
        return {"kind": "reference", "name": name, "scores": {**s, "H": 0.1, "H_norm": 0.1}}

    row = {"kind": "interval", "start": 0, "end": 1,
           "scores": {"V": 0.017, "V_end": 2e-6, "H": 0.2, "H_norm": 0.3}}  # fmt: skip
    for pair, n in ((PLANTED, 0), (NATURAL, 4)):
        rows = [ref("post", pair["post"]), ref("base", pair["base"]), row]
        res = assemble_crc(rows, header={}, method="slr")
        assert len(res["caveats"]) == n
