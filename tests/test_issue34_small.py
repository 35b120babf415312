"""Issue 34, class 6: the small defects, each through the command a user runs.

* ``diff X X --json`` says ``identical`` and ranks no layer; a real pair ranks only the
  layers that changed.
* ``restore --base X --post X`` writes the copy but warns that base and post are one model.
* ``sweep --proxy ppl --data missing.txt`` gives the missing file as its only message, not a
  context warning about a ``--ppl-seqlen`` first.
* a resume refused for another input shows where the recorded and the current digests
  differ, not two strings cut to the same prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings

from layergraft.cli import main
from layergraft.errors import InputError
from layergraft.models.batching import ContextWarning
from layergraft.slr.sweep.journal import Contents, check_settings
from layergraft.toy import toy_paths

BASE, POST = (str(p) for p in toy_paths())


def test_diff_of_a_model_with_itself_is_identical_and_ranks_nothing(capsys):
    assert main(["diff", POST, POST, "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["identical"] is True and res["ranking"] == []
    assert res["unchanged_layers"] == list(range(res["num_layers"]))
    assert all(row["all"]["abs_change"] == 0.0 for row in res["layers"])
    assert main(["diff", POST, POST, "--quiet"]) == 0
    assert "most changed layers: none (post and base are identical)" in capsys.readouterr().out
    # the real pair: every layer changed, all ranked, largest rel_change first
    assert main(["diff", BASE, POST, "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    rel = {row["layer"]: row["all"]["rel_change"] for row in res["layers"]}
    assert res["identical"] is False and res["unchanged_layers"] == []
    assert res["ranking"] == sorted(rel, key=lambda i: (-rel[i], i))


def test_restore_of_a_model_into_itself_warns(tmp_path, caplog):
    out = tmp_path / "copy"
    with caplog.at_level(logging.WARNING):
        assert main(["restore", "--base", POST, "--post", POST, "--layers", "0:2",
                     "--out", str(out), "--quiet"]) == 0  # fmt: skip
    assert "--base and --post are the same checkpoint" in caplog.text
    assert (out / "layergraft.json").is_file()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["restore", "--base", BASE, "--post", POST, "--layers", "0:2",
                     "--out", str(tmp_path / "real"), "--quiet"]) == 0  # fmt: skip
    assert "same checkpoint" not in caplog.text


def test_a_missing_ppl_text_is_the_first_and_only_message(tmp_path, capsys):
    out = tmp_path / "sweep"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rc = main(["sweep", "--base", BASE, "--post", POST, "--proxy", "ppl", "--data",
                   str(tmp_path / "missing.txt"), "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing.txt" in err and err.count("\n") == 1 and "seqlen" not in err
    assert not [w for w in seen if issubclass(w.category, ContextWarning)]
    assert not out.exists()


def _refusal(old, new):
    contents = Contents(path=__import__("pathlib").Path("j"), header={"config": old}, rows=[],
                        partial=0, size=0)  # fmt: skip
    try:
        check_settings(contents, new)
    except InputError as e:
        return str(e)
    raise AssertionError("not refused")


def test_a_refused_resume_shows_where_two_digests_differ():
    h = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3)]
    # the second shard differs: the old message cut the list after the first, equal digest
    msg = _refusal({"inputs": {"post": {"content": [h[0], h[1]]}}},
                   {"inputs": {"post": {"content": [h[0], h[2]]}}})  # fmt: skip
    m = re.search(r"inputs\.post\.content\[1\] \('([^']*)' there, '([^']*)' now\)", msg)
    assert m, msg
    shown = [s.replace("...", "") for s in m.groups()]
    assert shown[0] != shown[1] and shown[0] in h[1] and shown[1] in h[2]
    # two long strings equal for their first 60 characters still show a difference
    a, b = "x" * 60 + h[1], "x" * 60 + h[2]
    msg = _refusal({"inputs": {"post": {"origin": a}}}, {"inputs": {"post": {"origin": b}}})
    m = re.search(r"inputs\.post\.origin \('([^']*)' there, '([^']*)' now\)", msg)
    assert m, msg
    shown = [s.replace("...", "") for s in m.groups()]
    assert shown[0] != shown[1] and shown[0] in a and shown[1] in b


def test_the_validation_gate_passes_a_rate_exactly_at_the_threshold():
    """``rate >= 0.9 x post`` at nonzero rates that land exactly on the threshold (9 of 10
    replies finished against the post model's 10 of 10; 9 of 20 valid against 10 of 20), so
    ``<`` against ``<=`` is decided here, not by a post model's valid_rate of 0."""
    from layergraft.slr.sweep.validate import GATE_RATIO, _passes

    assert GATE_RATIO == 0.9
    post = {"finished_rate": 10 / 10, "valid_rate": 10 / 20}
    assert 0.9 * post["finished_rate"] == 9 / 10 and 0.9 * post["valid_rate"] == 9 / 20
    assert _passes({"finished_rate": 9 / 10, "valid_rate": 9 / 20}, post, GATE_RATIO) == (True, [])
    ok, why = _passes({"finished_rate": 9 / 10, "valid_rate": 8 / 20}, post, GATE_RATIO)
    assert not ok and why == ["valid_rate 0.400 < 0.450"]
    ok, why = _passes({"finished_rate": 8 / 10, "valid_rate": 9 / 20}, post, GATE_RATIO)
    assert not ok and why == ["finished_rate 0.800 < 0.900"]
    assert _passes({"finished_rate": 1.0, "valid_rate": 11 / 20}, post, GATE_RATIO)[0]
