"""Crash safety: SIGKILL a writing command at random moments; the target must be either
absent or complete, and the next run must clean up what the killed one left behind."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from layergraft.verify import verify_model_dir
from tiny import save_tiny


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    # wide enough that writing takes a noticeable fraction of the run
    kw = {"hidden_size": 256, "intermediate_size": 1024}
    base = save_tiny("llama", root / "b", num_layers=4, seed=1, **kw)
    post = save_tiny("llama", root / "p", num_layers=4, seed=2, max_shard_size="1MB", **kw)
    return base, post


def _cmd(base, post, out):
    return [
        sys.executable,
        "-m",
        "layergraft",
        "restore",
        "--base",
        str(base),
        "--post",
        str(post),
        "--layers",
        "1:3",
        "--out",
        str(out),
        "--quiet",
        "--force",
    ]


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.layergraft-")]


def _wait_for_temp_dir(parent, name, proc, timeout=30.0):
    """Block until the writer has created its temp dir (it is mid-write from then on)."""
    t_end = time.perf_counter() + timeout
    while time.perf_counter() < t_end and proc.poll() is None:
        if any(p.startswith(f".{name}.layergraft-tmp-{proc.pid}-") for p in os.listdir(parent)):
            return True
        time.sleep(0.001)
    return False


def test_sigkill_restore_never_leaves_a_partial_model(pair, tmp_path, request):
    """Kills at random moments (anywhere in the run) and right after the writer starts
    writing (the window that matters); after every kill the target is absent or complete."""
    base, post = pair
    out = tmp_path / "out"
    rng = random.Random(0)
    n = 40 if request.config.getoption("--slow") else 8
    outcomes = {"absent": 0, "complete": 0}
    mid_write_kills = left_behind = 0
    for i in range(n):
        if i % 2 == 0 and out.exists():  # even runs write afresh, odd ones replace (--force)
            shutil.rmtree(out)
        proc = subprocess.Popen(
            _cmd(base, post, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if i % 4 < 2:
            if _wait_for_temp_dir(tmp_path, "out", proc):
                time.sleep(rng.uniform(0, 0.02))
                mid_write_kills += proc.poll() is None
        else:
            time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left_behind += bool(_leftovers(tmp_path, "out"))  # the next run will clean it up
        if out.exists():
            rep = verify_model_dir(out, load=False)
            assert rep["ok"], rep["problems"]
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
    assert sum(outcomes.values()) == n
    # some kills landed mid-write (else this test proves nothing) and left a temp dir ...
    assert mid_write_kills > 0 and outcomes["absent"] > 0 and left_behind > 0
    # ... which the next run beside it removes (the pid is gone), says so, and succeeds
    proc = subprocess.Popen(
        _cmd(base, post, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    assert _wait_for_temp_dir(tmp_path, "out", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _leftovers(tmp_path, "out")
    res = subprocess.run(_cmd(base, post, out), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "interrupted run" in res.stderr
    assert _leftovers(tmp_path, "out") == []
    assert verify_model_dir(out)["ok"]
