"""Flags checked before any work (issue 34, classes 1-3), through the real CLI.

1. Every float flag is finite and in range, at parse time (``options.finite_float``): NaN and
   infinity compare false with every bound, so ``v < 0`` let them through to a solver
   (``--damp nan``: a ``torch.linalg.lstsq`` traceback after the calibration) or to a rule
   that then selected nothing (``sweep --end-ratio nan``).
2. A setting the chosen mode ignores is refused in one line naming the mode, as ``--workers``
   without ``--ray`` is.
3. Every check that needs only the arguments, the paths and config.json runs before any model
   loads: ``scores --block``, ``prune --auto``/``--remove``, ``--plot``/``--out`` onto an input.

Each case runs ``layergraft`` in a fresh interpreter in an empty directory and asserts: exit
code 2; stderr is one line naming the flag; nothing written (the directory stays empty, the
input's files unchanged); and the time from the CLI's entry to the refusal, measured in the
child, is small (< 5 s, against 6-13 s here and 30-50 s in the issue before the change). The
time bound is generous: the proof that no work ran is that neither torch nor transformers was
imported by the time the command refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layergraft.cli import build_parser
from layergraft.errors import InputError
from layergraft.toy import toy_paths
from tiny import ONE_THREAD_ENV

BASE, POST = (str(p) for p in toy_paths())
SWEEP = ["sweep", "--base", BASE, "--post", POST, "--out", "out"]
PRUNE = ["prune", BASE, "--out", "out"]

#: runs the CLI, then reports the exit code, the time from the CLI's entry and whether the
#: heavy libraries were imported (they are, by any model load)
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from layergraft.cli import main
try:
    rc = main(sys.argv[2:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "seconds": time.perf_counter() - t0, "heavy": heavy}, f)
"""


def _snapshot(d: str) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(d).iterdir()}


def refused(tmp_path: Path, argv: list[str], *words: str) -> str:
    """Run ``layergraft ARGV`` in an empty directory; assert the refusal (module doc) and that
    its one line holds every one of ``words``. Returns that line."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    report = tmp_path / "report.json"
    before = _snapshot(BASE), _snapshot(POST)
    env = {**os.environ, **ONE_THREAD_ENV}
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(report), *argv, "--threads", "1"],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    got = json.loads(report.read_text())
    err = p.stderr.strip()
    assert got["rc"] == 2, (got, p.stderr)
    assert err and "\n" not in err and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in err, (w, err)
    assert list(cwd.iterdir()) == [], "something was written"
    assert (_snapshot(BASE), _snapshot(POST)) == before, "an input changed"
    assert got["heavy"] == [], f"{got['heavy']} imported before the refusal: work ran"
    assert got["seconds"] < 5, f"refused after {got['seconds']:.1f} s"
    return err


# ---- class 1: every float flag finite and in range ----------------------------------------
FLOATS = {
    "scores-damp-nan": (
        ["scores", BASE, "--metric", "residual", "--damp", "nan"],
        ["--damp", "finite"],
    ),  # fmt: skip
    "prune-damp-inf": (
        [*PRUNE, "--auto", "2", "--metric", "residual", "--damp", "inf"],
        ["--damp", "finite"],
    ),  # fmt: skip
    "prune-damp-negative": ([*PRUNE, "--remove", "1:2", "--damp=-1"], ["--damp", ">= 0"]),
    "sweep-end-ratio-nan": ([*SWEEP, "--end-ratio", "nan"], ["--end-ratio", "finite"]),
    "sweep-validity-ratio-inf": (
        [*SWEEP, "--validity-ratio", "inf"],
        ["--validity-ratio", "finite"],
    ),  # fmt: skip
    "sweep-gpus-per-worker-nan": (
        [*SWEEP, "--ray", "--gpus-per-worker", "nan"],
        ["--gpus-per-worker"],
    ),  # fmt: skip
    "generate-temperature-nan": (
        ["generate", POST, "--task", "qa", "--out", "g.jsonl", "--temperature", "nan"],
        ["--temperature"],
    ),  # fmt: skip
    "generate-top-p-zero": (
        ["generate", POST, "--task", "qa", "--out", "g.jsonl", "--top-p", "0"],
        ["--top-p", "(0, 1]"],
    ),  # fmt: skip
    "compare-recovery-limit-nan": (
        ["compare-recovery", BASE, "--remove", "1:2", "--limit", "nan"],
        ["--limit"],
    ),  # fmt: skip
}

# ---- class 2: settings that would do nothing ----------------------------------------------
UNUSED = {
    "sweep-alphas-with-soup": (
        [*SWEEP, "--method", "soup", "--alphas", "0.5"],
        ["--alphas", "--method soup"],
    ),  # fmt: skip
    "sweep-validate-samples-without-validate": (
        [*SWEEP, "--validate-samples", "2"],
        ["--validate-samples", "--validate K"],
    ),  # fmt: skip
    "sweep-ppl-alphas": (
        [*SWEEP, "--proxy", "ppl", "--data", str(Path(BASE) / "config.json"), "--alphas", "0.5"],
        ["--alphas", "--proxy ppl"],
    ),  # fmt: skip
    "sweep-end-ratio-paper": (
        [*SWEEP, "--rule", "paper", "--end-ratio", "0.5"],
        ["--end-ratio", "--rule paper"],
    ),  # fmt: skip
    "scores-normalise-angular": (
        ["scores", BASE, "--normalise", "token"],
        ["--normalise", "--metric angular"],
    ),  # fmt: skip
    "scores-max-boundaries-bi": (
        ["scores", BASE, "--metric", "bi", "--max-boundaries", "2"],
        ["--max-boundaries", "--metric bi"],
    ),  # fmt: skip
    "scores-damp-cosine": (
        ["scores", BASE, "--metric", "cosine", "--damp", "1e-3"],
        ["--damp", "--metric cosine"],
    ),  # fmt: skip
    "prune-normalise-with-remove": (
        [*PRUNE, "--remove", "1:2", "--normalise", "token"],
        ["--normalise", "--remove 1:2"],
    ),  # fmt: skip
    "prune-max-boundaries-angular": (
        [*PRUNE, "--auto", "2", "--max-boundaries", "2"],
        ["--max-boundaries", "--metric angular"],
    ),  # fmt: skip
    "prune-greedy-with-remove": (
        [*PRUNE, "--remove", "1:2", "--metric", "residual-greedy"],
        ["--metric residual-greedy", "--remove 1:2"],
    ),  # fmt: skip
}

# ---- class 3: checks that need only the arguments, the paths and config.json ---------------
EARLY = {
    "scores-plot-onto-input": (
        ["scores", BASE, "--plot", str(Path(BASE) / "config.json")],
        ["--plot", "input"],
    ),  # fmt: skip
    "scores-plot-unwritable": (
        ["scores", BASE, "--metric", "residual", "--plot", "/proc/scores.png"],
        ["--plot", "cannot write"],
    ),  # fmt: skip
    "scores-block-too-large": (["scores", BASE, "--block", "8"], ["--block 8", "8-layer"]),
    "scores-block-zero": (["scores", BASE, "--block", "0"], ["--block"]),
    "scores-block-negative": (["scores", BASE, "--block=-1"], ["--block"]),
    "prune-auto-too-large": ([*PRUNE, "--auto", "8"], ["--auto 8", "8-layer"]),
    "prune-auto-zero": ([*PRUNE, "--auto", "0"], ["--auto"]),
    "prune-remove-out-of-bounds": ([*PRUNE, "--remove", "9:10"], ["9:10", "8 layers"]),
    "prune-out-inside-input": (
        ["prune", BASE, "--remove", "1:2", "--out", str(Path(BASE) / "pruned")],
        ["inside the input"],
    ),  # fmt: skip
    "compare-recovery-auto-too-large": (["compare-recovery", BASE, "--auto", "8"], ["--auto 8"]),
    "prune-seqlen-zero": ([*PRUNE, "--remove", "1:2", "--seqlen", "0"], ["--seqlen"]),
    "prune-calib-tokens-zero": (
        [*PRUNE, "--remove", "1:2", "--calib-tokens", "0"],
        ["--calib-tokens"],
    ),  # fmt: skip
    "ppl-tokens-zero": (["ppl", BASE, "--ppl-tokens", "0"], ["--ppl-tokens"]),
}


@pytest.mark.parametrize("case", list(FLOATS))
def test_non_finite_or_out_of_range_floats_are_refused_at_parse_time(tmp_path, case):
    argv, words = FLOATS[case]
    line = refused(tmp_path, argv, *words)
    assert "(see layergraft " in line  # argparse's refusal: parse time, the command never ran


@pytest.mark.parametrize("case", list(UNUSED))
def test_a_setting_the_mode_ignores_is_refused_naming_the_mode(tmp_path, case):
    argv, words = UNUSED[case]
    refused(tmp_path, argv, *words, "remove")


@pytest.mark.parametrize("case", list(EARLY))
def test_checks_on_arguments_paths_and_config_come_before_any_model_loads(tmp_path, case):
    argv, words = EARLY[case]
    refused(tmp_path, argv, *words)


def _float_actions(parser: argparse.ArgumentParser, prog: str = "layergraft"):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _float_actions(sub, f"{prog} {name}")
        elif a.type is float:
            yield f"{prog} {'/'.join(a.option_strings)}"


#: float flags of src/layergraft/cli/slr.py, a file outside this change (issue 34 note): soup's
#: API refuses --alpha nan, but crc --temperature nan runs and prints numbers. Convert them to
#: finite_float and empty this set.
NOT_YET: set[str] = set()


def test_no_float_flag_is_a_plain_float():
    """Every real-number flag of every command goes through ``finite_float`` (the one place
    that says "is this number finite and in range?"), none through a bare ``float``."""
    assert set(_float_actions(build_parser())) == NOT_YET


def test_flags_a_mode_uses_are_accepted():
    """The refusals are about the mode, not the flags: given where they act, they parse and
    pass the checks (the defaults filled where not given)."""
    from layergraft.cli.prune import _refuse_unused_removal, _refuse_unused_scores
    from layergraft.cli.sweep import _refuse_unused

    p = build_parser()
    a = p.parse_args(["prune", "M", "--auto", "2", "--metric", "residual-greedy", "--normalise", "token", "--max-boundaries", "2", "--damp", "0"])  # fmt: skip
    _refuse_unused_removal(a)
    assert (a.metric, a.normalise, a.damp) == ("residual-greedy", "token", 0.0)
    a = p.parse_args(["prune", "M", "--remove", "1:2", "--damp", "1e-3"])  # --damp: the fit
    _refuse_unused_removal(a)
    assert (a.metric, a.normalise) == ("angular", "delta")
    a = p.parse_args(["scores", "M", "--metric", "residual", "--damp", "1e-3", "--normalise", "token"])  # fmt: skip
    _refuse_unused_scores(a)
    a = p.parse_args(["sweep", "--method", "both", "--alphas", "0.5,1", "--validate", "1", "--validate-samples", "2", "--rule", "format", "--end-ratio", "0.8"])  # fmt: skip
    _refuse_unused(a)
    a = p.parse_args(["generate", "M", "--task", "qa", "--out", "o", "--temperature", "0", "--top-p", "1", "--min-p", "0"])  # fmt: skip
    assert (a.temperature, a.top_p, a.min_p) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5])
def test_the_api_refuses_non_finite_ratios_and_damping_too(value):
    """The API's own checks: NaN compares false, so ``v < 0`` alone let it through."""
    from layergraft.prune.recover import check_damp
    from layergraft.slr.sweep.config import SweepConfig

    for field in ("end_ratio", "validity_ratio"):
        with pytest.raises(InputError, match=f"--{field.replace('_', '-')}"):
            SweepConfig(**{field: value})
    with pytest.raises(InputError, match="--damp"):
        check_damp(value)


def test_the_api_refuses_interval_soups_a_sweep_would_not_select():
    from layergraft.slr.sweep.config import SweepConfig

    with pytest.raises(InputError, match="--method soup"):
        SweepConfig(method="soup", alphas=(0.5, 1.0))
    with pytest.raises(InputError, match="--proxy ppl"):
        SweepConfig(proxy="ppl", data="t.txt", alphas=(0.5,))
    assert SweepConfig(proxy="ppl", data="t.txt").alphas == (1.0,)
    assert SweepConfig(method="both", alphas=(0.5, 1.0)).alphas == (0.5, 1.0)
