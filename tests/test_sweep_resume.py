"""A sweep at real size: a durable journal, resume after SIGKILL, a dry-run plan, every flag
honoured or refused (issue 15, parts 2 and 5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layergraft.cli import main
from layergraft.slr.sweep.run import sweep
from layergraft.toy import toy_paths
from tiny import ONE_THREAD_ENV, complete_lines, save_tiny, torch_threads, write_few_crc_prompts

BASE, POST = (str(p) for p in toy_paths())


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_few_crc_prompts(tmp_path_factory.mktemp("p") / "few.jsonl", per_category=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this process, as in the killed subprocess (ONE_THREAD_ENV): the
    resumed results.json is compared byte for byte, and float sums change with the thread
    count, so both sides of the comparison must run at the same one."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prompts, one_thread) -> Path:
    out = tmp_path_factory.mktemp("full") / "sweep"
    sweep(BASE, POST, out, prompts=prompts, method="both", progress=False)
    return out


def _argv(out: Path, prompts: Path, *extra: str) -> list[str]:
    return ["sweep", "--base", BASE, "--post", POST, "--out", str(out), "--prompts", str(prompts),
            "--method", "both", "--quiet", *extra]  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_journal_holds_every_unit_and_results_come_from_it(uninterrupted):
    lines = _lines(uninterrupted / "intervals.jsonl")
    assert lines[0]["kind"] == "header" and lines[0]["version"] == 2
    assert all(x["kind"] == "unit" for x in lines[1:])  # one line per unit: all or nothing
    assert len(lines) == 1 + 2 + 8 + 21
    kinds = [r["kind"] for x in lines[1:] for r in x["rows"]]
    assert kinds.count("reference") == 2 and kinds.count("interval") == 36
    assert kinds.count("soup") == 21
    res = json.loads((uninterrupted / "results.json").read_text())
    assert [r["interval"] for r in res["intervals"]] == sorted(
        (r["interval"] for r in res["intervals"]), key=lambda t: tuple(map(int, t.split(":")))
    )
    assert "timing" not in res  # timing lives in run.json: results are the same on every run
    assert json.loads((uninterrupted / "run.json").read_text())["units_run"] == 2 + 8 + 21


def _journal_cut(src: Path, dst: Path, cut: str) -> bytes:
    """A copy of the sweep in ``src`` as a kill at ``cut`` would have left it in ``dst``."""
    data = (src / "intervals.jsonl").read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    keep = {
        "between_units": data[: ends[4]],  # header + 4 units, nothing after
        "inside_a_line": data[: ends[4] + (ends[5] - ends[4]) // 2],  # half of the 5th unit
        "after_the_last_unit": data,  # every unit, no results.json yet
    }[cut]
    dst.mkdir()
    (dst / "intervals.jsonl").write_bytes(keep)
    return keep


@pytest.mark.parametrize("cut", ["between_units", "inside_a_line", "after_the_last_unit"])
def test_resume_after_a_kill_anywhere_is_byte_identical(tmp_path, uninterrupted, prompts, cut):
    out = tmp_path / "sweep"
    _journal_cut(uninterrupted, out, cut)
    assert main(_argv(out, prompts, "--resume")) == 0
    assert (out / "results.json").read_bytes() == (uninterrupted / "results.json").read_bytes()
    assert (out / "intervals.jsonl").read_bytes() == (
        uninterrupted / "intervals.jsonl"
    ).read_bytes()


def test_sigkill_mid_sweep_then_resume_gives_identical_results(tmp_path, uninterrupted, prompts):
    out = tmp_path / "sweep"
    env = dict(os.environ, **ONE_THREAD_ENV)
    cmd = [sys.executable, "-m", "layergraft", *_argv(out, prompts)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / "intervals.jsonl"
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        # complete lines only: the sweep is appending to the journal while we read it
        if len(complete_lines(journal)) >= 4:  # header, both references, one start unit
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = len(complete_lines(journal))
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, "the sweep ended before it could be killed"
    assert killed_at < 1 + 2 + 8 + 21  # work was left
    assert not (out / "results.json").exists()
    assert main(_argv(out, prompts, "--resume")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["units_resumed"] > 0
    assert (out / "results.json").read_bytes() == (uninterrupted / "results.json").read_bytes()


def test_resume_refuses_another_sweep_and_existing_out_needs_a_flag(
    tmp_path, uninterrupted, prompts, capsys
):
    assert main(_argv(uninterrupted, prompts)) == 2
    assert "--resume" in capsys.readouterr().err
    other = write_few_crc_prompts(tmp_path / "other.jsonl", per_category=2)
    assert main(_argv(uninterrupted, other, "--resume")) == 2
    err = capsys.readouterr().err
    assert "records another sweep: rows.prompts" in err and err.count("\n") == 1
    assert main(_argv(tmp_path / "nothing", prompts, "--resume")) == 2
    assert main(_argv(tmp_path / "x", prompts, "--resume", "--force")) == 2


@pytest.mark.parametrize(
    "change,field",
    [
        (("--method", "slr"), "rows.method"),
        (("--parts", "mlp,all"), "rows.parts"),
        (("--alphas", "0.5,1"), "rows.alphas"),
        (("--max-len", "3"), "rows.max_len"),
        (("--v-end", "closers"), "rows.v_end"),
        (("--search", "halving"), "rows.search"),
    ],
)
def test_a_changed_row_setting_is_refused_before_the_journal_changes(
    tmp_path, uninterrupted, prompts, capsys, change, field
):
    """Settings that decide which rows exist or what they mean are never silently mixed;
    the refusal comes before the partial last line of a killed run is dropped."""
    out = tmp_path / "sweep"
    before = _journal_cut(uninterrupted, out, "inside_a_line")
    argv = _argv(out, prompts, "--resume")
    argv[argv.index("both")] = change[1] if change[0] == "--method" else "both"
    if change[0] != "--method":
        argv += list(change)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"records another sweep: {field}" in err and err.count("\n") == 1
    assert (out / "intervals.jsonl").read_bytes() == before
    assert not (out / "results.json").exists()


def _short_sweep(tmp_path: Path, prompts: Path) -> tuple[Path, Path, list[str]]:
    """A sweep of a copy of the toy post model, cut after its references and first start."""
    post = tmp_path / "post"
    shutil.copytree(POST, post)
    out = tmp_path / "sweep"
    argv = ["sweep", "--base", BASE, "--post", str(post), "--out", str(out), "--prompts",
            str(prompts), "--method", "slr", "--max-len", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    lines = (out / "intervals.jsonl").read_bytes().splitlines(keepends=True)
    (out / "intervals.jsonl").write_bytes(b"".join(lines[:4]))
    (out / "results.json").unlink()
    return post, out, [*argv, "--resume"]


def test_a_post_model_trained_again_in_place_is_not_resumed(tmp_path, prompts, capsys):
    """Same path, names, shapes and sizes, other weights (the toy base's shards stand in for
    a retrained post model: their headers are the post model's byte for byte): its old rows
    must not be reused."""
    post, out, argv = _short_sweep(tmp_path, prompts)
    before = (out / "intervals.jsonl").read_bytes()
    for shard in Path(BASE).glob("*.safetensors"):
        assert (post / shard.name).stat().st_size == shard.stat().st_size
        assert (post / shard.name).read_bytes()[:4096] != shard.read_bytes()[:4096]
        shutil.copyfile(shard, post / shard.name)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "records another sweep: inputs.post.content" in err and err.count("\n") == 1
    assert (out / "intervals.jsonl").read_bytes() == before


def test_a_journal_from_before_content_samples_resumes(tmp_path, prompts):
    """A journal whose header has no ``content`` (written by an earlier layergraft) resumes on
    what it recorded, and its rows come out as a fresh sweep's."""
    post, out, argv = _short_sweep(tmp_path, prompts)
    lines = (out / "intervals.jsonl").read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    for role in ("base", "post"):
        del header["config"]["inputs"][role]["content"]
    (out / "intervals.jsonl").write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    assert main(argv) == 0
    fresh = tmp_path / "fresh"
    assert (
        main([*argv[: argv.index("--out") + 1], str(fresh), *argv[argv.index("--out") + 2 : -1]])
        == 0
    )
    got = json.loads((out / "results.json").read_text())
    ref = json.loads((fresh / "results.json").read_text())
    assert got["intervals"] == ref["intervals"] and got["selections"] == ref["selections"]


def test_a_changed_rule_reselects_from_the_same_rows(tmp_path, uninterrupted, prompts):
    out = tmp_path / "sweep"
    _journal_cut(uninterrupted, out, "after_the_last_unit")
    assert main(_argv(out, prompts, "--resume", "--rule", "paper")) == 0
    got = json.loads((out / "results.json").read_text())
    ref = json.loads((uninterrupted / "results.json").read_text())
    assert got["rule"]["name"] == "paper" and ref["rule"]["name"] == "format"
    assert got["intervals"] == ref["intervals"]
    assert got["selections"] == ref["selections"]  # both rules, whichever is active
    assert got["selected"] == next(
        r for r in ref["intervals"] if r["interval"] == ref["selections"]["paper"]["interval"]
    )


@pytest.mark.parametrize(
    "line,why",
    [
        (b"42\n", "line 6 is not a unit of sweep rows"),
        (b'{"kind": "unit", "rows": [{"kind": "interval", "start": 1, "scores": {}}]}\n',
         "line 6: a row is an interval row without start and end"),
        (b"{not json\n", "line 6 is not valid JSON"),
    ],
)  # fmt: skip
def test_a_malformed_journal_line_is_refused_naming_it(
    tmp_path, uninterrupted, prompts, capsys, line, why
):
    out = tmp_path / "sweep"
    keep = _journal_cut(uninterrupted, out, "between_units") + line
    (out / "intervals.jsonl").write_bytes(keep)
    assert main(_argv(out, prompts, "--resume")) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1 and "Traceback" not in err
    assert (out / "intervals.jsonl").read_bytes() == keep


def test_dry_run_resume_reports_the_units_done_and_checks_settings(
    tmp_path, uninterrupted, prompts, capsys
):
    out = tmp_path / "sweep"
    before = _journal_cut(uninterrupted, out, "inside_a_line")
    assert main(_argv(out, prompts, "--resume", "--dry-run")) == 0
    assert "(4 already done)" in capsys.readouterr().out
    assert (out / "intervals.jsonl").read_bytes() == before
    assert main([*_argv(out, prompts, "--resume", "--dry-run"), "--max-len", "2"]) == 2
    assert "records another sweep" in capsys.readouterr().err


def test_dry_run_prints_a_plan_and_writes_nothing(tmp_path, prompts, capsys):
    out = tmp_path / "never"
    assert main(_argv(out, prompts, "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "36 intervals in 31 units (0 already done)" in text and "decoder-layer forwards" in text
    assert "estimate:" in text and "GiB" in text
    assert not out.exists()


def test_dry_run_plan_bounds_the_head_by_reading_every_continuation(prompts):
    """The plan times the head as the post model reads it and with every V_end continuation
    read; the second is the larger, and the estimate is the range between them."""
    plan = sweep(BASE, POST, None, prompts=prompts, method="slr", dry_run=True, progress=False)
    plan = plan["plan"]
    m = plan["measured"]
    assert m["head_all_s"] >= m["head_s"] > 0
    for engine, low in plan["estimated_seconds"].items():
        assert plan["estimated_seconds_every_read"][engine] >= low
    # on a CPU the peak counts the process itself and the checkpoint files mapped while a model
    # loads (without them the plan was 21% under the measured peak RSS at the 1B shape)
    parts = plan["memory_parts_gib"]
    files = sum(f.stat().st_size for f in Path(POST).glob("*.safetensors")) / 1024**3
    assert parts["process_and_loading"] > files + 0.05  # + Python and torch, at least 50 MiB
    assert parts["weights"] == pytest.approx(
        2 * files, abs=0.005
    )  # float32 on disk and in memory (2 decimals)
    assert plan["estimated_peak_memory_gib"] == pytest.approx(sum(parts.values()), abs=0.02)
    # a CRC sweep of checkpoints ends with the weight diff (results' weight_change): timed, counted
    assert m["weight_diff_s"] > 0
    assert plan["estimated_seconds"]["prefix-reuse"] >= m["setup_s"] + m["weight_diff_s"]


def test_dry_run_plans_halving_as_two_stages(tmp_path):
    """--search halving: every candidate on the seeded stage-1 prompts, then the references up
    to every candidate on the rest (the measured halving sweep must fall in this range:
    benchmarks/scale_study.py); too few prompts: the search falls back, and so does the plan."""
    from layergraft.slr.proxy.crc_prompts import load_crc_prompts
    from layergraft.slr.sweep.halving import stage_prompts

    plan = sweep(BASE, POST, None, max_len=3, search="halving", dry_run=True, progress=False)[
        "plan"
    ]
    first, rest = stage_prompts([p.category for p in load_crc_prompts("all")], 0)
    hv = plan["halving"]
    assert (hv["stage1_prompts"], hv["stage2_prompts"]) == (len(first), len(rest)) == (12, 36)
    low, high = hv["estimated_seconds"]
    assert 0 < low < high
    eight = write_few_crc_prompts(tmp_path / "eight.jsonl", per_category=4)
    few = sweep(BASE, POST, None, prompts=eight, max_len=3, search="halving", dry_run=True, progress=False)  # fmt: skip
    assert few["plan"]["halving"] is None


def test_batch_size_does_not_change_the_numbers(tmp_path, uninterrupted, prompts):
    res = sweep(BASE, POST, None, prompts=prompts, method="slr", batch_size=5, progress=False)
    ref = json.loads((uninterrupted / "results.json").read_text())
    for a, b in zip(res["intervals"], ref["intervals"], strict=True):
        assert a["interval"] == b["interval"]
        assert a["V"] == pytest.approx(b["V"], abs=1e-6)
        assert a["H"] == pytest.approx(b["H"], abs=1e-6)


def test_restore_best_is_honoured_or_loud(tmp_path, prompts, capsys, caplog):
    """--method soup writes the chosen soup; nothing eligible exits 1 with the results kept."""
    out = tmp_path / "soup"
    argv = _argv(tmp_path / "s1", prompts, "--restore-best", str(out))
    argv[argv.index("both")] = "soup"
    assert main(argv) == 0
    prov = json.loads((out / "layergraft.json").read_text())
    assert prov["operation"] == "soup"
    capsys.readouterr()
    # nothing qualifies: the results are written, the warning says why, exit status 1
    out2 = tmp_path / "none"
    argv = _argv(tmp_path / "s2", prompts, "--validity-ratio", "5", "--restore-best", str(out2))
    assert main(argv) == 1
    assert "nothing written" in caplog.text
    assert not out2.exists() and (tmp_path / "s2" / "results.json").is_file()


def test_ppl_proxy_honours_or_refuses_every_flag(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The Congress shall have power to lay and collect taxes, duties. " * 40)
    base_argv = ["sweep", "--base", BASE, "--post", POST, "--proxy", "ppl", "--data", str(text),
                 "--ppl-seqlen", "64", "--ppl-tokens", "512", "--quiet"]  # fmt: skip
    assert main([*base_argv, "--validity-ratio", "0.8"]) == 2
    assert "--validity-ratio applies to --proxy crc" in capsys.readouterr().err
    best = tmp_path / "best"
    out = tmp_path / "ppl"
    argv = [*base_argv, "--method", "both", "--out", str(out), "--restore-best", str(best),
            "--max-len", "3"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["proxy"] == "ppl" and len(res["soup"]["alphas"]) == 21
    assert all(r["end"] - r["start"] <= 3 for r in res["intervals"])
    prov = json.loads((best / "layergraft.json").read_text())
    assert prov["details"]["layers"] == res["selected"]["interval"]
    # the pair is checked for the ppl proxy too
    other = save_tiny("llama", tmp_path / "other", num_layers=4)
    assert (
        main(["sweep", "--base", str(other), "--post", POST, "--proxy", "ppl", "--data", str(text)])
        == 2
    )
    assert "base has 4 layers but post has 8" in capsys.readouterr().err
    # --no-prefix-reuse gives the same perplexities through the swap engine
    slow = sweep(BASE, POST, None, proxy="ppl", data=text, seqlen=64, max_tokens=512,
                 max_len=3, prefix_reuse=False, progress=False)  # fmt: skip
    for a, b in zip(slow["intervals"], res["intervals"], strict=True):
        assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5)
