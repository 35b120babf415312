"""The report's first screen (report.summary) from hand-made results: the written hybrid and
where, why, each rule's pick (None included), the task table with ratios to the post model,
the caveats; and the HTML it renders: inline code, no table wider than 8 columns."""

from __future__ import annotations

import copy
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from layergraft.report.blocks import MAX_COLUMNS, to_html, to_markdown
from layergraft.report.demo import runs_tables
from layergraft.report.summary import summary_blocks


def _pick(label, what, family, V, H_norm, V_end, rule, **extra):
    return {"label": label, "what": what, "family": family, "V": V, "H_norm": H_norm,
            "V_end": V_end, "rule": rule, **extra}  # fmt: skip


def _run(**mean):
    return {"mean": mean, "ci95": {}, "settings": {"temperature": 1.0, "min_p": 0.1}}


WHY = "it is the validated pick: the MLPs of layers 2:7 restored kept the chat format"

RES = {
    "selection": {
        "picks": {
            "paper": _pick(
                "5:7",
                "layers 5:7 restored from the base",
                "interval",
                0.41,
                0.83,
                0.12,
                "V >= 0.9 x V_post, most diverse restored interval",
            ),
            "format": _pick(
                "3:7@0.5",
                "layers 3:7 blended at alpha 0.5",
                "interval_soup",
                0.72,
                0.61,
                0.66,
                "V >= 0.9 x V_post and V_end >= 0.9 x V_end_post",
            ),
            "validated": _pick(
                "2:7:mlp",
                "the MLPs of layers 2:7 restored from the base",
                "part:mlp",
                0.74,
                0.58,
                0.69,
                "most diverse that kept the format",
                finished_rate=0.8,
                valid_rate=0.7,
            ),
        },  # fmt: skip
        "written": {
            "label": "2:7:mlp",
            "pick": "validated",
            "dir": "hybrid",
            "what": "the MLPs of layers 2:7 restored from the base",
            "why": WHY,
        },  # fmt: skip
        "caveats": [
            "V_post is below 0.5: the CRC proxy scores a sliver of the post model",
            "the base meets the paper rule's thresholds",
        ],  # fmt: skip
        "compared": {
            "post": "post",
            "base": "base",
            "paper": "paper_pick",
            "written": "hybrid",
            "soup": "soup",
        },  # fmt: skip
    },
    "compare": {
        "qa": {
            "runs": {
                "post": _run(distinct_valid_answers=1.25, vendi=1.5, finished_rate=0.96),
                "base": _run(distinct_valid_answers=0.5, vendi=3.9, finished_rate=0.1),
                "paper_pick": _run(distinct_valid_answers=2.75, vendi=2.2, finished_rate=0.35),
                "hybrid": _run(distinct_valid_answers=2.0, vendi=1.9, finished_rate=0.92),
                "soup": _run(distinct_valid_answers=1.5, vendi=1.6, finished_rate=0.95),
            }
        },
        "creative": {
            "runs": {
                "post": _run(vendi=2.4, distinct_2=0.3, finished_rate=0.9),
                "base": _run(vendi=4.8, distinct_2=0.8, finished_rate=0.0),
                "paper_pick": _run(vendi=3.6, distinct_2=0.5, finished_rate=0.45),
                "hybrid": _run(vendi=3.0, distinct_2=0.4, finished_rate=0.9),
                "soup": _run(vendi=2.5, distinct_2=0.3, finished_rate=0.9),
            }
        },
    },  # fmt: skip
}


class _Tables(HTMLParser):
    """Cells per row of every table, and the text outside <code>."""

    def __init__(self):
        super().__init__()
        self.rows: list[int] = []
        self.text: list[str] = []
        self._code = 0

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th"):
            self.rows[-1] += 1
        elif tag == "code":
            self._code += 1

    def handle_endtag(self, tag):
        if tag == "code":
            self._code -= 1

    def handle_data(self, data):
        if not self._code:
            self.text.append(data)


def _render(res):
    """The summary's blocks, Markdown and HTML."""
    blocks = summary_blocks(res)
    return blocks, to_markdown(blocks), to_html(blocks, Path("."))


def _parsed(html):
    p = _Tables()
    p.feed(html)
    return p


def test_summary_names_the_written_hybrid_where_and_why():
    blocks, md, html = _render(RES)
    assert blocks[0] == ("h2", "Summary")
    for text in (md, unescape(html)):
        assert "Written hybrid" in text and "2:7:mlp" in text and "hybrid/" in text
        assert "the MLPs of layers 2:7 restored from the base" in text
        assert WHY in text
        for words in (
            "paper rule's pick",
            "format rule's pick",
            "validated pick",
            "written hybrid",
        ):
            assert words in text
        for label in ("5:7", "3:7@0.5"):
            assert label in text
        # the picks' proxy scores and the validated pick's rates, as the table writes them
        for x in (0.41, 0.83, 0.12, 0.72, 0.61, 0.66, 0.74, 0.58, 0.69, 0.8, 0.7):
            assert f"{x:.3f}" in text
        for c in RES["selection"]["caveats"]:
            assert c in text
    assert "<code>2:7:mlp</code>" in html
    assert "`" not in "".join(_parsed(html).text)  # inline code rendered, no literal backticks
    assert "- V_post is below 0.5" in md  # caveats as a Markdown list


def test_task_table_has_each_metric_of_each_task_and_its_ratio_to_post():
    _, md, html = _render(RES)
    runs = {t: {n: r["mean"] for n, r in cr["runs"].items()} for t, cr in RES["compare"].items()}
    expect = {("qa", "distinct_valid_answers"), ("qa", "finished_rate"),
              ("creative", "vendi"), ("creative", "finished_rate")}  # fmt: skip
    for task, metric in expect:
        post, hyb, pap = (runs[task][n][metric] for n in ("post", "hybrid", "paper_pick"))
        row = (f"| {task} | {metric} | {post:.3f} | {hyb:.3f} | {hyb / post:.2f}× | "
               f"{pap:.3f} | {pap / post:.2f}× |")  # fmt: skip
        assert row in md, row
        assert f"{hyb / post:.2f}×" in html and f"{pap / post:.2f}×" in html
    assert "| qa | vendi |" not in md  # one diversity metric a task: qa's is distinct valid answers
    assert "| task | metric | post | written hybrid | × post | paper rule's pick | × post |" in md


def test_no_html_table_wider_than_the_page():
    _, _, html = _render(RES)
    rows = _parsed(html).rows
    assert rows and max(rows) <= MAX_COLUMNS


def test_none_picks_and_no_written_hybrid():
    res = copy.deepcopy(RES)
    sel = res["selection"]
    sel["picks"]["format"] = None
    sel["picks"]["validated"] = None
    sel["written"] = None
    sel["caveats"] = ["no hybrid was written: no candidate passed validation"]
    sel["compared"] = {"post": "post", "base": "base", "paper": "paper_pick", "soup": "soup"}
    blocks, md, html = _render(res)
    for text in (md, unescape(html)):
        assert "No hybrid was written" in text
        assert "Written hybrid:" not in text and "hybrid/" not in text
        assert "nothing qualified" in text and "5:7" in text
        assert "no candidate passed validation" in text
    # the first hybrid column falls back to the format rule's pick, here none: dashes
    qa = res["compare"]["qa"]["runs"]
    post, pap = qa["post"]["mean"]["finished_rate"], qa["paper_pick"]["mean"]["finished_rate"]
    row = f"| qa | finished_rate | {post:.3f} | – | – | {pap:.3f} | {pap / post:.2f}× |"
    assert row in md
    assert "Not compared: the format rule's pick" in md
    assert max(_parsed(html).rows) <= MAX_COLUMNS


def test_no_picks_at_all_and_no_caveats():
    res = copy.deepcopy(RES)
    sel = res["selection"]
    sel["picks"] = {"paper": None, "format": None, "validated": None}
    sel["written"], sel["caveats"] = None, []
    sel["compared"] = {"post": "post", "base": "base"}
    _, md, _ = _render(res)
    assert "no rule's pick qualified" in md
    assert md.count("| none | nothing qualified |") == 3
    assert "### Caveats\n\nNone." in md


def test_paper_pick_that_is_the_written_hybrid_reads_the_written_run():
    res = copy.deepcopy(RES)
    sel = res["selection"]
    sel["picks"]["paper"] = {**sel["picks"]["validated"], "rule": "paper rule"}
    del sel["compared"]["paper"]  # one hybrid, compared once (under "written")
    _, md, _ = _render(res)
    qa = res["compare"]["qa"]["runs"]
    post, hyb = qa["post"]["mean"]["finished_rate"], qa["hybrid"]["mean"]["finished_rate"]
    r = f"{hyb / post:.2f}×"
    assert f"| qa | finished_rate | {post:.3f} | {hyb:.3f} | {r} | {hyb:.3f} | {r} |" in md
    assert "| paper rule's pick (same hybrid) |" in md
    assert "| validated pick = written hybrid |" in md


def test_results_without_selection_have_no_summary():
    assert summary_blocks({"compare": RES["compare"]}) == []
    assert summary_blocks({"selection": None}) == []


@pytest.mark.parametrize("n_runs", [3, 7, 8, 15])
def test_task_tables_have_models_as_columns_and_fit_the_page(n_runs):
    cr = {"runs": {f"run{i}": _run(valid_rate=0.5, vendi=1.0 + i) for i in range(n_runs)}}
    tables = runs_tables(cr)
    assert all(len(t[1]) <= MAX_COLUMNS for t in tables)
    names = [h for t in tables for h in t[1][1:]]
    assert names == list(cr["runs"])  # every model once, in order
    widths = [len(t[1]) for t in tables]
    assert max(widths) - min(widths) <= 1  # balanced, not 7 + 1
    assert [r[0] for r in tables[0][2]] == ["decoding", "valid_rate", "vendi"]  # quality first
