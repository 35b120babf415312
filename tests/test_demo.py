"""`layergraft demo --quick` end to end (the README's first command, in its short form), and
its HTML report checked in a real headless browser."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from layergraft.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out = root / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    return root, out


def test_quick_demo_writes_a_complete_report(demo, capsys):
    root, out = demo
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
    # the trustworthy path: both rules, V_end, the validation table, the picks on disk
    sw = res["sweep"]
    assert set(sw["selections"]) == {"paper", "format"} and sw["rule"]["name"] == "format"
    assert "Which hybrid to trust" in md and "passes the gate" in md and "V_end" in md
    assert sw["validation"]["verdict"] in md
    for label, w in res["restore"]["picks"].items():
        assert "same_as" in w or (out / w["dir"] / "layergraft.json").is_file(), label
    for r in res["pruning"].values():
        methods = {row["method"] for row in r["rows"]}
        assert methods >= {"dense", "none", "ghost", "scale", "diag"}
        assert f"{next(x['ppl'] for x in r['rows'] if x['method'] == 'ghost'):.2f}" in md
    # nothing half-written beside the output
    assert sorted(p.name for p in root.iterdir()) == ["demo"]
    # a second run is the same job: every step reused, the same results (timing aside)
    before = {k: v for k, v in res.items() if k != "timing_s"}
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    log = json.loads((out / "job.log.json").read_text())
    assert {v["status"] for v in log.values()} == {"reused"}
    again = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in again.items() if k != "timing_s"} == before
    # a directory of the user's is never taken for a job: one line, exit 2, left as it was
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(mine), "--quiet"]) == 2
    assert "not a layergraft job" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    mine.joinpath("notes.txt").unlink()
    mine.rmdir()


def test_report_opens_with_the_summary_of_what_was_written(demo):
    """The demo is the slr job on the toy pair: its results say what was selected and
    written (``selection``) and the report opens with that summary; results without a
    ``selection`` (older demo runs) render as before, without one."""
    from layergraft.report.demo import build_blocks

    _, out = demo
    res = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    heads = [b[1] for b in build_blocks(res) if b[0] in ("h1", "h2")]
    assert heads[1:3] == ["Summary", "1. The models"]
    w = res["selection"]["written"]
    assert f"**Written hybrid: `{w['label']}`**" in md and "`hybrid/`" in md
    assert md.index("## Summary") < md.index("## 1. The models")
    del res["selection"]
    heads = [b[1] for b in build_blocks(res) if b[0] in ("h1", "h2")]
    assert "Summary" not in heads and heads[1] == "1. The models"


_PROBE = """
<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src)), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images).map(i => i.naturalWidth);
  const shown = Array.from(document.images).map(i => i.clientWidth / i.naturalWidth);
  const tables = Array.from(document.querySelectorAll('table'))
    .map(t => t.getBoundingClientRect().width - t.parentElement.clientWidth);
  document.title = 'PROBE' + JSON.stringify({imgs, shown, tables, errors: window.__errors});
});
</script>
"""


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian chromium not installed (.ci/run installs it)"
)
def test_html_report_renders_in_headless_chromium(demo, tmp_path):
    _, out = demo
    probe = tmp_path / "probe.html"
    probe.write_text((out / "report.html").read_text().replace("<head>", "<head>" + _PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run(
        ["chromium", *flags, "--window-size=1000,3000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    title = dom.stdout.split("<title>PROBE", 1)[1].split("</title>", 1)[0]
    state = json.loads(title.replace("&quot;", '"'))
    assert state["errors"] == []
    assert len(state["imgs"]) >= 3 and all(w > 0 for w in state["imgs"])
    # read at page width (issue 33): in a 1000 px window no table is wider than the page, and
    # no plot is shrunk much below its natural size (its text stays readable)
    assert state["tables"] and max(state["tables"]) <= 1, state["tables"]
    assert min(state["shown"]) >= 0.85, state["shown"]
    shot = out / "screenshot.png"
    subprocess.run(["chromium", *flags, "--window-size=1100,2400", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.stat().st_size > 10_000
