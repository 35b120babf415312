"""``benchmarks/gpu_check.py`` keeps working without a GPU: the whole check at the tiny shape on
the CPU, and its sweep accounting against the plan's.

Why: the check is run on a GPU only when a 15-minute lease comes, and then it must not fail
on a stale import or a renamed results key. On the CPU every section runs the same code but the
device synchronisation and the GPU memory counters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = {"toy", "pair", "sweep", "restore", "prune", "generate"}


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--shape", "tiny", "--out", str(out),
           "--work", str(tmp_path / "work"), *extra]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    return p, json.loads(out.read_text())


def test_gpu_check_runs_on_the_cpu_at_the_tiny_shape(tmp_path: Path) -> None:
    p, r = _run(tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert r["finished"] is True
    env = r["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["transformers"]
    s = r["sections"]
    assert set(s) == SECTIONS
    assert {k: v["status"] for k, v in s.items()} == dict.fromkeys(SECTIONS, "ok")

    # the toy pair: CPU float32 against itself is exact, bfloat16 moves the scores a little
    toy = s["toy"]
    same, bf16 = toy["runs"]["float32"], toy["runs"]["bfloat16"]
    for part in ("crc", "sweep"):
        assert same[part]["max_abs_diff"] == 0.0
        assert same[part]["numbers_compared"] > 0 and same[part]["numbers_unmatched"] == 0
        assert 0.0 < bf16[part]["max_abs_diff"] < 0.2
    assert same["same_selection"] == {"paper": True, "format": True}
    assert set(bf16["same_selection"]) == {"paper", "format"}
    assert same["selections"] == toy["reference"]["selections"]

    # the pair's sweeps (2 of the tiny shape's 4 layers, as the GPU run takes 8 of 32): every
    # interval scored, every unit timed, the full sweep extrapolated to 4 layers
    sw = s["sweep"]
    assert (s["pair"]["layers"], s["pair"]["full_layers"], s["pair"]["reduced"]) == (2, 4, True)
    assert sw["exhaustive"]["intervals_in_results"] == 3
    assert sw["halving"]["intervals_in_results"] == sw["halving"]["search"]["survivors"]
    for search in ("exhaustive", "halving"):
        run = sw[search]
        assert run["v_end"] == "strict" and run["post_scores"]["V_end"] is not None
        assert all(u["seconds"] >= 0 for u in run["units"])
    assert sw["halving"]["search"]["kind"] == "halving"
    assert {u["stage"] for u in sw["halving"]["units"]} == {1, 2}
    assert sw["start_unit"]["start"] == 0 and sw["start_unit"]["seconds"] > 0
    full = sw["full"]
    assert full["intervals"] == 10
    assert full["exhaustive"]["seconds"] > 0 and full["halving"]["seconds"] > 0
    lo, hi = full["halving"]["seconds_range"]
    assert lo <= full["halving"]["seconds"] <= hi
    assert full["peak_memory_mib"] > 0 and sw["plan"]["estimated_seconds"] > 0

    rs = s["restore"]
    assert rs["copy"]["gb_per_s"] > 0
    assert rs["restore"]["gb_per_s"] > 0 and rs["restore_no_hash"]["gb_per_s"] > 0
    pr = s["prune"]
    assert pr["d"] == 64 and pr["calibration_tokens"] > 0
    assert pr["calibrate_and_fit_s"] > 0 and pr["load_s"] > 0 and pr["peak_rss_mib"] > 0
    gen = s["generate"]
    assert gen["batch_size"] == 32 and gen["tokens"] > 0 and gen["tokens_per_s"] > 0
    assert 0 < gen["full_layers_tokens_per_s"] < gen["tokens_per_s"]
    assert "toy" in p.stdout and "tokens/s" in p.stdout  # the table at the end


def test_gpu_check_skips_what_the_budget_leaves_no_time_for(tmp_path: Path) -> None:
    p, r = _run(tmp_path, "--budget-s", "0")
    assert p.returncode == 1  # not every section ran
    assert r["finished"] is True
    assert {v["status"] for v in r["sections"].values()} == {"skipped"}
    assert all("budget" in v["why"] or "no pair" in v["why"] for v in r["sections"].values())


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.parametrize("layers", [4, 8, 32])
def test_full_sweep_counts_are_the_plans(gpu_check, layers: int) -> None:
    """The layer forwards the extrapolation multiplies are the ones the dry-run plan counts."""
    from layergraft.slr.sweep.engines import carried_prefix_layers, enumerate_intervals, plan_units

    units = plan_units(layers, enumerate_intervals(layers), ())
    starts = [u for u in units if u.kind == "start"]
    others = len(units) - len(starts)
    plan = sum(u.cost(layers, True) - u.start for u in starts) + carried_prefix_layers(starts)
    mine = gpu_check.full_units(layers)
    assert sum(u["layer_forwards"] for u in mine) == plan + others * layers
    assert sum(u["heads"] for u in mine) == layers * (layers + 1) // 2 + others
    assert sum(u["runners"] for u in mine) == 1 + others


def test_fit_recovers_known_costs(gpu_check) -> None:
    units = [
        {"layer_forwards": lf, "heads": h, "runners": r, "seconds": 0.01 * lf + 0.05 * h + 0.2 * r}
        for lf, h, r in [(8, 1, 1), (36, 8, 1), (29, 7, 0), (9, 2, 0), (2, 1, 0)]
    ]
    fit = gpu_check.fit_seconds(units)
    assert fit["layer_forwards_s"] == pytest.approx(0.01)
    assert fit["heads_s"] == pytest.approx(0.05)
    assert fit["runners_s"] == pytest.approx(0.2)
    # a noisy unit cannot make a cost negative
    units[0]["seconds"] = 5.0
    assert (
        min(gpu_check.fit_seconds(units)[k] for k in ("layer_forwards_s", "heads_s", "runners_s"))
        >= 0
    )


def test_dry_run_timings_wait_for_cuda_kernels(monkeypatch) -> None:
    """CUDA kernels run asynchronously: the plan's per-layer time must wait for them (else it
    is the time to launch a layer, not to run it). Checked without a GPU by counting calls."""
    import torch

    from layergraft.slr.sweep import plan

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    calls = []
    plan._median_seconds(lambda: calls.append(1), repeat=3, device=torch.device("cuda", 0))
    assert len(calls) == 4 and len(waited) == 4  # the warm-up, then every timed run
    waited.clear()
    plan._median_seconds(lambda: None, repeat=3, device=torch.device("cpu"))
    assert waited == []
