"""Crash safety: SIGKILL a writing command at random moments; the target must be either
absent or complete, and the next run must clean up what the killed one left behind.

One kill loop (:func:`_kill_loop`) serves every writing command; the restore and prune tests
differ only in the command line and in how long a run takes."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layergraft.models.verify import verify_model_dir
from tiny import save_tiny

# wide enough that writing takes a noticeable fraction of the run
WIDE = {"hidden_size": 256, "intermediate_size": 1024}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    base = save_tiny("llama", root / "b", num_layers=4, seed=1, **WIDE)
    post = save_tiny("llama", root / "p", num_layers=4, seed=2, max_shard_size="1MB", **WIDE)
    return base, post


@pytest.fixture(scope="module")
def prunable(tmp_path_factory):
    """A wide 4-layer model with a tokenizer, and a short calibration text."""
    from layergraft.text import DEFAULT_CALIB
    from layergraft.toy.tokenizer import save_tokenizer

    root = tmp_path_factory.mktemp("crash-prune")
    model = save_tiny("llama", root / "m", num_layers=4, seed=3, **WIDE)
    save_tokenizer(model)
    calib = root / "calib.txt"
    calib.write_text(DEFAULT_CALIB.read_text()[:6000])
    return model, calib


def _restore_cmd(base, post, out):
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


def _prune_cmd(model, calib, out):
    return [
        sys.executable,
        "-m",
        "layergraft",
        "prune",
        str(model),
        "--remove",
        "1:2",
        "--recover",
        "ghost",
        "--calib",
        str(calib),
        "--calib-tokens",
        "512",
        "--seqlen",
        "128",
        "--out",
        str(out),
        "--quiet",
        "--force",
    ]


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.layergraft-")]


def _wait_for_temp_dir(parent, name, proc, timeout=60.0):
    """Block until the writer has created its temp dir (it is mid-write from then on)."""
    t_end = time.perf_counter() + timeout
    while time.perf_counter() < t_end and proc.poll() is None:
        if any(p.startswith(f".{name}.layergraft-tmp-{proc.pid}-") for p in os.listdir(parent)):
            return True
        time.sleep(0.001)
    return False


def _kill_loop(cmd, out: Path, *, n: int, late: tuple[float, float], seed: int = 0) -> None:
    """Run ``cmd`` (which writes ``out`` with ``--force``) ``n`` times and SIGKILL every run:
    half of them just after the writer creates its temp dir (the window that matters), the
    other half at a random moment in ``late`` seconds (anywhere in the run, before writing
    too). Even runs write afresh, odd ones replace an existing output. After every kill the
    target is absent or complete (sizes and sha256 as recorded). The last run is always
    killed mid-write (retried until one is), so it leaves a temp dir; then one run to completion must remove it,
    say so, and leave a complete output behind."""
    parent, name = out.parent, out.name
    rng = random.Random(seed)
    outcomes = {"absent": 0, "complete": 0}
    mid_write_kills = left_behind = 0
    for i in range(n):
        if i % 2 == 0 and out.exists():
            shutil.rmtree(out)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = i == n - 1
        if i % 4 < 2 or last:
            if _wait_for_temp_dir(parent, name, proc):
                if not last:
                    time.sleep(rng.uniform(0, 0.02))
                mid_write_kills += proc.poll() is None
        else:
            time.sleep(rng.uniform(*late))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left_behind += bool(_leftovers(parent, name))  # the next run will clean it up
        if out.exists():
            rep = verify_model_dir(out, load=False)
            assert rep["ok"], rep["problems"]
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
    assert sum(outcomes.values()) == n
    # some kills landed mid-write (else this test proves nothing) and left a temp dir ...
    assert mid_write_kills > 0 and outcomes["absent"] > 0 and left_behind > 0
    # on a fast machine a small write can finish between seeing the temp dir and the kill:
    # kill more runs at the temp dir until one is caught mid-write
    for _ in range(20):
        if _leftovers(parent, name):
            break
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_temp_dir(parent, name, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _leftovers(parent, name), "no run was killed mid-write in 20 tries"
    # ... which the next run beside it removes (the pid is gone), says so, and succeeds
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "interrupted run" in res.stderr
    assert _leftovers(parent, name) == []
    rep = verify_model_dir(out)  # sizes, sha256, loads and runs a forward pass
    assert rep["ok"] and rep["loads"], rep["problems"]


def test_sigkill_restore_never_leaves_a_partial_model(pair, tmp_path, request):
    base, post = pair
    out = tmp_path / "out"
    n = 40 if request.config.getoption("--slow") else 8
    _kill_loop(_restore_cmd(base, post, out), out, n=n, late=(0.05, 1.5))


def test_sigkill_prune_never_leaves_a_partial_model(prunable, tmp_path, request):
    """The same for ``prune --recover ghost``: a run takes seconds (load, calibrate, fit)
    before it writes, so fewer kills by default; the final output is a ghosted model that
    ``layergraft.load_model`` loads and runs."""
    import torch

    from layergraft.models.load import load_model

    model, calib = prunable
    out = tmp_path / "out"
    n = 16 if request.config.getoption("--slow") else 4
    _kill_loop(_prune_cmd(model, calib, out), out, n=n, late=(0.3, 4.0))
    pruned = load_model(out)
    assert len(pruned.model.layers) == 3 and hasattr(pruned, "layergraft_ghosts")
    with torch.no_grad():
        logits = pruned(torch.tensor([[1, 5, 9, 13]])).logits
    assert logits.shape == (1, 4, pruned.config.vocab_size) and torch.isfinite(logits).all()
