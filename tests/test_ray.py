"""Sweeps and comparisons on a Ray cluster (issue 12): the same files as a local run, a killed
worker costs only its unit, and without Ray ``--ray`` is one line naming the install.

One local cluster (2 CPUs) serves every Ray test of this module; the tests skip cleanly where
``ray`` cannot be imported (the no-Ray test runs everywhere).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from layergraft.cli import main
from layergraft.gen.compare import compare
from layergraft.gen.sampling import SamplingSettings
from layergraft.slr.sweep.run import sweep
from layergraft.toy import toy_paths
from tiny import ONE_THREAD_ENV, LoudThread, write_few_crc_prompts

try:
    import ray
except ImportError:  # pragma: no cover - the extra is not installed
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (layergraft[ray])")
BASE, POST = (str(p) for p in toy_paths())
SHORT = SamplingSettings(max_new_tokens=8)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _sweep_argv(out: Path, prompts: Path, *extra: str) -> list[str]:
    return ["sweep", "--base", BASE, "--post", POST, "--out", str(out), "--prompts", str(prompts),
            "--method", "both", "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_few_crc_prompts(tmp_path_factory.mktemp("p") / "few.jsonl", per_category=3)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": ONE_THREAD_ENV})  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every process of these tests at one torch thread, as a Ray CPU worker (num_cpus=1):
    float sums depend on the thread count (the driver's too: the weight change beside a sweep
    is summed there), and CI runs without OMP_NUM_THREADS."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, prompts) -> Path:
    out = tmp_path_factory.mktemp("local") / "sweep"
    assert main(_sweep_argv(out, prompts)) == 0
    return out


def test_without_ray_the_flag_is_one_line_naming_the_extra(monkeypatch, tmp_path, prompts, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(_sweep_argv(tmp_path / "s", prompts, "--ray")) == 2
    err = capsys.readouterr().err
    assert "pip install 'layergraft[ray]'" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()  # refused before any work
    argv = ["compare", "--models", f"post={POST}", "--task", "qa", "--out", str(tmp_path / "c"),
            "--quiet", "--ray", "--workers", "2"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install 'layergraft[ray]'" in err and err.count("\n") == 1
    assert main(_sweep_argv(tmp_path / "s", prompts, "--workers", "2")) == 2
    assert "--workers applies to --ray" in capsys.readouterr().err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def test_an_address_nobody_listens_on_is_refused_at_once(monkeypatch, tmp_path, prompts, capsys):
    """ray.init retries such an address for minutes; a socket connect answers at once."""
    from layergraft.cluster import connect, unreachable
    from layergraft.errors import InputError

    port = _closed_port()
    assert unreachable(f"127.0.0.1:{port}") and unreachable(f"ray://127.0.0.1:{port}")
    assert unreachable("auto") is None and unreachable("head-node") is None  # left to Ray

    class NeverInit:  # a Ray whose init must not be reached
        def is_initialized(self) -> bool:
            return False

        def init(self, **kw):
            raise AssertionError("ray.init was called with an unreachable address")

    with pytest.raises(InputError, match=f"cannot join the Ray cluster at 127.0.0.1:{port}"):
        connect(NeverInit(), f"127.0.0.1:{port}")
    if ray is not None:  # the command: exit 2, one line, nothing written
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", NeverInit().init)
        assert main(_sweep_argv(tmp_path / "s", prompts, "--ray", f"127.0.0.1:{port}")) == 2
        err = capsys.readouterr().err
        assert "cannot join the Ray cluster" in err and err.count("\n") == 1
        assert not (tmp_path / "s").exists()
        argv = ["compare", "--models", f"post={POST}", "--task", "qa", "--out", str(tmp_path / "c"),
                "--quiet", "--ray", f"127.0.0.1:{port}"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "cannot join the Ray cluster" in err and err.count("\n") == 1
        assert not (tmp_path / "c").exists()


@needs_ray
def test_sweep_on_ray_writes_the_local_results(cluster, local_sweep, prompts, tmp_path):
    out = tmp_path / "sweep"
    assert main(_sweep_argv(out, prompts, "--ray", "--workers", "2")) == 0
    assert (out / "results.json").read_bytes() == (local_sweep / "results.json").read_bytes()
    # the journal holds the same rows (in the order the units finished)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, _lines(out / "intervals.jsonl"))) == sorted(
        map(key, _lines(local_sweep / "intervals.jsonl"))
    )
    assert json.loads((out / "run.json").read_text())["executor"] == "ray"


@needs_ray
def test_halving_on_ray_writes_the_local_results(cluster, tmp_path):
    """--search halving hands each stage's prompts to the Ray workers (not only to a local
    worker): both stages there give the local run's results byte for byte."""
    prompts = write_few_crc_prompts(tmp_path / "p.jsonl", per_category=8)
    extra = ("--search", "halving", "--max-len", "3")
    assert main(_sweep_argv(tmp_path / "local", prompts, *extra)) == 0
    assert main(_sweep_argv(tmp_path / "ray", prompts, *extra, "--ray", "--workers", "2")) == 0
    local = (tmp_path / "local" / "results.json").read_bytes()
    assert (tmp_path / "ray" / "results.json").read_bytes() == local
    assert json.loads(local)["search"]["kind"] == "halving"


@needs_ray
def test_a_killed_worker_costs_only_its_unit(cluster, local_sweep, prompts, tmp_path):
    """Once the sweep is under way (header + 2 units journaled), the first worker to take a
    unit writes its pid and holds that unit until it is killed: the kill always lands with a
    unit in flight (killing a worker between units would prove nothing, and did happen)."""
    from layergraft.slr.sweep.distributed import RayExecutor, UnitActor

    out = tmp_path / "sweep"
    journal, claim = out / "intervals.jsonl", tmp_path / "holder.pid"

    class HoldsAUnit(UnitActor):  # shipped to the workers by value (defined in a function)
        def run(self, unit):
            if journal.is_file() and journal.read_bytes().count(b"\n") >= 3:
                try:  # exactly one worker, ever, holds its unit
                    fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, f"{os.getpid()}\n".encode())
                    os.close(fd)
                    end = time.monotonic() + 600
                    while time.monotonic() < end:  # until the SIGKILL (else the test fails)
                        time.sleep(0.05)
            return UnitActor.run(self, unit)

    ex = RayExecutor(workers=2, actor=HoldsAUnit)
    killed: list[int] = []

    def kill_the_holder() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            text = claim.read_text() if claim.is_file() else ""
            if text.endswith("\n"):  # the pid is written completely
                os.kill(int(text), signal.SIGKILL)
                killed.append(int(text))
                return
            time.sleep(0.01)
        raise AssertionError("no worker took a unit mid-sweep within 600 s")

    killer = LoudThread(kill_the_holder, name="killer")
    killer.start()
    sweep(BASE, POST, out, prompts=prompts, method="both", progress=False, executor=ex)
    killer.join(timeout=5)  # re-raises the killer's error, if any
    assert killed, "the sweep ended before a worker could be killed"
    assert ex.requeued == 1  # the killed worker's unit, scored again elsewhere
    assert (out / "results.json").read_bytes() == (local_sweep / "results.json").read_bytes()
    units = _lines(out / "intervals.jsonl")[1:]
    assert len(units) == 2 + 8 + 21  # each unit once, one line each
    assert sum(len(u["rows"]) for u in units) == 2 + 36 + 21


@needs_ray
def test_compare_on_ray_gives_the_same_generations(cluster, tmp_path):
    from layergraft.gen.distributed import RayGenerator

    models = {"post": POST, "base": BASE}
    kw = dict(n=2, settings=SHORT, limit=2, embedder="none", bootstrap=20, progress=False,
              backend="transformers", batch_size=3, plots=False)  # fmt: skip
    compare(models, "qa", tmp_path / "local", **kw)
    ex = RayGenerator(workers=2)
    res = compare(models, "qa", tmp_path / "ray", executor=ex, **kw)
    assert list(res["runs"]) == ["post", "post@T1.5", "post@no-min-p", "base"]
    gens = sorted(p.name for p in (tmp_path / "local" / "gens").iterdir())
    assert gens == sorted(p.name for p in (tmp_path / "ray" / "gens").iterdir())
    for name in gens:
        a = (tmp_path / "local" / "gens" / name).read_bytes()
        assert a == (tmp_path / "ray" / "gens" / name).read_bytes(), name
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["runs"] == local["runs"]
    # in-memory models cannot be shipped: one line, before anything runs
    from layergraft.errors import InputError
    from layergraft.toy.tokenizer import build_tokenizer

    with pytest.raises(InputError, match="give post=PATH"):
        compare({"post": (object(), build_tokenizer())}, "qa", tmp_path / "mem", executor=ex,
                **kw)  # fmt: skip


@needs_ray
def test_the_slr_job_on_ray_gives_the_local_results(cluster, tmp_path):
    """`layergraft slr --ray`: the sweep's units and the comparison's generations run on the
    workers, and the job's results are those of a local run (paths of the job aside)."""
    small = ["--base", BASE, "--post", POST, "--quick", "--parts", "all", "--alphas", "1",
             "--n", "2", "--limit", "2", "--validate", "1", "--quiet"]  # fmt: skip
    assert main(["slr", "--out", str(tmp_path / "local"), *small]) == 0
    assert main(["slr", "--out", str(tmp_path / "ray"), *small, "--ray", "--workers", "2"]) == 0

    def results(name: str) -> dict:
        out = tmp_path / name
        res = json.loads((out / "results.json").read_text().replace(str(out), "DIR"))
        res.pop("timing_s")
        return res

    assert results("ray") == results("local")
