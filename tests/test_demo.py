"""`layergraft demo --quick` end to end (the README's first command, in its short form)."""

from __future__ import annotations

import json

from layergraft.cli import main


def test_quick_demo_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    assert "report.html" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    for key in ("inspect", "sweep", "restore", "compare", "pruning", "timing_s"):
        assert key in res
    # the restored hybrid on disk is exactly the in-memory one the sweep scored
    assert res["restore"]["reload_max_abs_logit_diff"] == 0.0
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    sel = res["sweep"]["selected"]["interval"]
    assert sel in md and sel in html
    assert html.count("data:image/png;base64,") >= 3  # self-contained
    for r in res["pruning"].values():
        methods = {row["method"] for row in r["rows"]}
        assert methods >= {"dense", "none", "ghost", "scale", "diag"}
        assert f"{next(x['ppl'] for x in r['rows'] if x['method'] == 'ghost'):.2f}" in md
    # nothing half-written beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    # a second run refuses to overwrite without --force, with one line and exit 2
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
