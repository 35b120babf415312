"""`layergraft slr`, the main job: steps skipped, continued and rerun as their inputs say; a
kill in the middle changes nothing; the written hybrid is what the sweep scored; bad input is
one line and exit 2.

The end-to-end runs use the toy pair with settings smaller than --quick (whole layers only,
one validated candidate, 2 samples of 3 QA prompts), run as subprocesses with one thread so
that a killed-and-continued run and an uninterrupted one compute the same floats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from layergraft.study.job import Job, Step
from layergraft.toy import toy_paths
from tiny import ONE_THREAD_ENV, hand_built_hybrid

BASE, POST = (str(p) for p in toy_paths())
SMALL = ["--quick", "--parts", "all", "--alphas", "1", "--n", "2", "--limit", "3", "--threads", "1"]


def _cli(*args: str, wait: bool = True, **kw):
    cmd = [sys.executable, "-m", "layergraft", *args]
    env = {**os.environ, **ONE_THREAD_ENV}
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)


def _slr(out: Path, *extra: str):
    r = _cli("slr", "--base", BASE, "--post", POST, "--out", str(out), *SMALL, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _results(out: Path) -> dict:
    """results.json with the job's own directory written as DIR and the timing left out."""
    text = (out / "results.json").read_text().replace(str(out), "DIR")
    res = json.loads(text)
    res.pop("timing_s")
    return res


def _log(out: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in json.loads((out / "job.log.json").read_text()).items()}


# -- the step runner, on steps that count their runs ---------------------------------------------


def test_a_step_runs_once_reruns_on_change_and_continues_in_place(tmp_path):
    calls = []

    def work(tag):
        def run(folder: Path):
            calls.append(tag)
            (folder / "part").write_text(tag)
            return {"tag": tag}

        return run

    job = Job(tmp_path, say=lambda s: None)
    assert job.run(Step("a", {"x": 1}, {"m": "d1"}, work("first"))) == {"tag": "first"}
    assert Job(tmp_path, say=lambda s: None).run(
        Step("a", {"x": 1}, {"m": "d1"}, work("again"))
    ) == {"tag": "first"}
    assert calls == ["first"]  # same settings, same inputs: reused, not run
    # a changed input empties the folder and runs again
    (tmp_path / "a" / "stale").write_text("old")
    assert (
        Job(tmp_path, say=lambda s: None).run(Step("a", {"x": 1}, {"m": "d2"}, work("new")))["tag"]
        == "new"
    )
    assert not (tmp_path / "a" / "stale").exists()
    # a step killed after it started (no manifest) continues in place: its files are kept
    (tmp_path / "a" / "step.json").unlink()
    seen = []

    def resume(folder: Path):
        seen.append((folder / "part").read_text())
        return {}

    j = Job(tmp_path, say=lambda s: None)
    j.run(Step("a", {"x": 1}, {"m": "d2"}, resume))
    assert seen == ["new"] and j.log["a"]["status"] == "resumed"
    # a changed setting calls the step's own prepare with the old record
    olds = []
    j.run(
        Step("a", {"x": 2}, {"m": "d2"}, lambda f: {}, lambda f, old: olds.append(old["settings"]))
    )
    assert olds == [{"x": 1}]


# -- the whole job on the toy pair ------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("slr")
    out = root / "job"
    _slr(out)
    return out


def test_a_kill_in_the_middle_then_the_same_command_gives_the_same_results(first, tmp_path):
    out = tmp_path / "killed"
    args = ["slr", "--base", BASE, "--post", POST, "--out", str(out), *SMALL]
    p = _cli(*args, wait=False)
    journal = out / "sweep" / "out" / "intervals.jsonl"
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 300:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the job ended before the kill: " + p.stderr.read()[-2000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "results.json").exists() and not (out / "sweep" / "step.json").exists()
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _log(out)["sweep"] == "resumed" and _log(out)["crc"] == "reused"
    assert _results(out) == first


@pytest.fixture(scope="module")
def first(job):
    """The uninterrupted run's results, read before any test changes a setting of the job."""
    assert set(_log(job).values()) == {"ran"}  # a new directory: every step ran
    return _results(job)


def _reference_hybrid(row: dict) -> torch.nn.Module:
    return hand_built_hybrid(row, BASE, POST)


def test_the_written_hybrid_is_what_the_sweep_scored(job):
    from transformers import AutoModelForCausalLM

    res = json.loads((job / "results.json").read_text())
    written = res["selection"]["written"]
    assert written is not None and (job / "hybrid" / "config.json").is_file()
    ref = _reference_hybrid(written)
    got = AutoModelForCausalLM.from_pretrained(job / "hybrid", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 14, 22, 30, 41, 7, 3, 60]])
    with torch.no_grad():
        assert torch.allclose(got(ids).logits, ref(ids).logits, atol=1e-5)
    # and the sweep's numbers for it are the numbers of that model: a different hybrid would not match
    other = dict(written, start=max(written.get("start", 1) - 1, 0))
    if "start" in written and other["start"] != written["start"]:
        with torch.no_grad():
            assert not torch.allclose(
                got(ids).logits, _reference_hybrid(other)(ids).logits, atol=1e-5
            )


def test_the_results_give_one_answer_to_what_was_selected(job):
    res = json.loads((job / "results.json").read_text())
    sel = res["selection"]
    w = sel["written"]
    assert w["pick"] == "validated" and w["label"] == sel["picks"]["validated"]["label"]
    assert w["label"] == res["sweep"]["validation"]["chosen"].get("label", w["label"])
    # the written hybrid is compared on the task under the label the selection names
    assert sel["compared"]["written"] in res["compare"]["qa"]["runs"]
    assert res["restore"]["picks"]["hybrid"]["dir"] == "hybrid"
    # the report's first screen names it, before the sweep's details
    html = (job / "report.html").read_text()
    head = html.split("<h2", 2)
    assert w["label"] in "".join(head[:2]) and "hybrid" in "".join(head[:2])


def test_the_cli_prints_the_same_words(job):
    r = _slr(job)
    res = json.loads((job / "results.json").read_text())
    w = res["selection"]["written"]
    assert f"written hybrid:     {w['label']} -> {job}/hybrid (validated pick)" in r.stdout
    assert "paper rule's pick:" in r.stdout and "validated pick:" in r.stdout


def test_the_dry_run_plans_every_step_writes_nothing_and_knows_what_is_done(job, tmp_path):
    new = tmp_path / "planned"
    r = _cli("slr", "--base", BASE, "--post", POST, "--out", str(new), *SMALL, "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not new.exists()
    for step in ("check", "crc", "sweep", "hybrids", "compare/qa"):
        assert f"  {step} " in r.stdout, r.stdout
    assert "decoder-layer forwards" in r.stdout and "total: at most" in r.stdout
    # on the finished job the steps it can key before running are said to be reused
    r = _cli("slr", "--base", BASE, "--post", POST, "--out", str(job), *SMALL, "--dry-run")
    lines = {
        ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.startswith("  ") and ln.split()
    }
    assert "reused" in lines["crc"] and "reused" in lines["sweep"], r.stdout


def test_a_rerun_reuses_every_step_and_a_changed_setting_reruns_only_what_it_touches(job, first):
    _slr(job)
    assert set(_log(job).values()) == {"reused"}
    assert _results(job) == first
    # more samples per prompt: only the comparison reruns, and it keeps the generations it has
    gens = job / "compare" / "qa" / "gens" / "post.jsonl"
    before = gens.read_text()
    _slr(job, "--n", "3")
    log = _log(job)
    assert log.pop("compare/qa") == "ran" and set(log.values()) == {"reused"}, _log(job)
    assert gens.read_text().startswith(before)  # continued, not regenerated
    # another rule: the sweep's rows are kept (its journal), the selection and later steps redone
    rows = (job / "sweep" / "out" / "intervals.jsonl").read_text()
    _slr(job, "--n", "3", "--rule", "paper")
    log = _log(job)
    assert log["check"] == log["crc"] == "reused" and log["sweep"] == "ran"
    assert (job / "sweep" / "out" / "intervals.jsonl").read_text() == rows
    # another CRC prompt subset (the same file name, other content): CRC and the sweep rerun
    _slr(job, "--n", "3", "--rule", "paper", "--crc-prompts", "8")
    log = _log(job)
    assert log["check"] == "reused" and log["crc"] == log["sweep"] == "ran", log


def test_without_validation_the_written_hybrid_carries_a_caveat(tmp_path):
    out = tmp_path / "noval"
    r = _slr(out, "--validate", "0", "--tasks", "qa", "--limit", "1", "--n", "1", "--quiet")
    assert "%|" not in r.stderr, r.stderr[-2000:]  # --quiet: no bar, transformers' included
    sel = json.loads((out / "results.json").read_text())["selection"]
    assert sel["written"]["pick"] in ("format", "paper")
    assert any("not validated" in c for c in sel["caveats"])


def test_another_family_with_a_chat_template(tmp_path):
    """A tiny random Qwen2 pair (post = base with layers 1:3 perturbed) with the toy's chat
    tokenizer: the whole job runs; a random post keeps no format, so nothing may be written."""
    import shutil

    from layergraft.toy import toy_paths
    from tiny import save_tiny

    vocab = json.loads((toy_paths()[1] / "config.json").read_text())["vocab_size"]
    base, post = tmp_path / "base", tmp_path / "post"
    save_tiny("qwen2", base, num_layers=4, seed=0, vocab_size=vocab)
    save_tiny("qwen2", post, num_layers=4, seed=0, vocab_size=vocab)
    from safetensors.torch import load_file, save_file

    f = post / "model.safetensors"
    sd = load_file(f)
    g = torch.Generator().manual_seed(1)
    for k in sd:
        if ".layers.1." in k or ".layers.2." in k:
            sd[k] = sd[k] + 0.5 * torch.randn(sd[k].shape, generator=g)
    save_file(sd, f, metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (toy_paths()[1] / name).is_file():
            shutil.copy(toy_paths()[1] / name, post / name)
    out = tmp_path / "job"
    r = _cli("slr", "--base", str(base), "--post", str(post), "--out", str(out), *SMALL,
             "--limit", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["inspect"]["post"]["family"] == "qwen2"
    assert res["sweep"]["num_layers"] == 4 and len(res["sweep"]["intervals"]) == 10
    assert (out / "report.html").is_file()
    w = res["selection"]["written"]
    assert (w is None) == (not (out / "hybrid").exists())


@pytest.mark.parametrize(
    "args, words",
    [
        (["--n", "0"], "--n"),
        (["--validate", "-1"], "--validate"),
        (["--tasks", "poetry"], "poetry"),
        (["--alphas", "2"], "--alphas"),
        (["--max-new-tokens", "qa=x"], "--max-new-tokens"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2_before_any_work(tmp_path, args, words):
    out = tmp_path / "job"
    t0 = time.time()
    r = _cli("slr", "--base", BASE, "--post", POST, "--out", str(out), *args)
    assert r.returncode == 2 and words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists() and time.time() - t0 < 30


def test_bad_paths_are_refused_and_nothing_is_touched(tmp_path):
    # an output inside an input
    r = _cli("slr", "--base", BASE, "--post", POST, "--out", str(Path(POST) / "job"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert not (Path(POST) / "job").exists()
    # a directory of the user's that is not a job
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = _cli("slr", "--base", BASE, "--post", POST, "--out", str(mine), "--quick")
    assert r.returncode == 2 and "not a layergraft job" in r.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # a post model without a chat template (a GGUF file here): refused before DIR exists
    from gguf_util import write_tiny_llama_gguf

    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf", layers=2)
    r = _cli("slr", "--base", str(gguf), "--post", str(gguf), "--out", str(tmp_path / "g"))
    assert r.returncode == 2 and "chat template" in r.stderr and not (tmp_path / "g").exists()
    # a missing model
    r = _cli("slr", "--base", str(tmp_path / "nope"), "--post", POST, "--out", str(tmp_path / "j"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "j").exists()


def test_the_python_api_sets_the_thread_count_like_the_cli(tmp_path):
    """slr() applies its ``threads`` as --threads does (torch's default of one thread per core
    collapsed on a busy machine); None leaves torch's setting alone."""
    from layergraft.errors import LayergraftError
    from layergraft.study.slr import slr

    before = torch.get_num_threads()
    try:
        for want in (2, 1):
            with pytest.raises(LayergraftError):  # refused after the count is applied
                slr(BASE, POST, tmp_path / "j", quick=True, threads=want, n=0)
            assert torch.get_num_threads() == want
        torch.set_num_threads(2)
        with pytest.raises(LayergraftError):
            slr(BASE, POST, tmp_path / "j", quick=True, threads=None, n=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert not (tmp_path / "j").exists()
