"""``make mutate``: mutation testing of the core math with mutmut, in a scratch copy.

Why a scratch copy (``build/mutmut`` by default, ``--dir`` to move it): mutmut writes a
``mutants/`` tree beside the sources and runs pytest there; in a copy the working tree stays
clean and other runs of the suite never see a mutant. Results persist there, so a second run
re-tests only what changed (a function's mutants are re-run when its source or tests change).

What is mutated (:data:`MUTATE`): the pruning/repair math (calibration statistics, the fits,
folds, ghost construction and the ghost module's forward), perplexity, and the generation
metrics (diversity, quality), and the SLR core: the selection rules (``slr/sweep/selection``:
paper and format rules, ranking, the Pareto front), CRC scoring (V, H, V_end from the read
log-probabilities), halving's bounds and drops, the sweep engines (interval plans, prefix
reuse, soups and parts), token-tree packing and the layer runner with its head. Which tests run (:data:`TESTS`): the
ones that check those functions against independent references; mutmut runs, for each mutant,
only the tests that call the mutated function.

    python tests/mutate.py                 # run (incremental), then print the summary
    python tests/mutate.py --summary-only  # the summary of the last run
    python tests/mutate.py --show NAME     # one mutant's diff (mutmut show)

Survivors are either killed by a new test or listed with a reason in ``tests/MUTANTS.md``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MUTATE = [
    "src/layergraft/prune/recover.py",
    "src/layergraft/prune/fold.py",
    "src/layergraft/prune/ghost.py",
    "src/layergraft/prune/model.py",
    "src/layergraft/prune/calibrate.py",
    "src/layergraft/models/ghost_remote/modeling_layergraft_ghost.py",
    "src/layergraft/evaluate/perplexity.py",
    "src/layergraft/gen/metrics/diversity.py",
    "src/layergraft/gen/metrics/quality.py",
    "src/layergraft/slr/sweep/selection.py",
    "src/layergraft/slr/proxy/crc_scoring.py",
    "src/layergraft/slr/sweep/halving.py",
    "src/layergraft/slr/sweep/engines.py",
    "src/layergraft/models/packing.py",
    "src/layergraft/models/runner.py",
]

#: the functions whose mutants are run (mutmut name globs): the math, not its error messages,
#: model cards, CLI plumbing or the embedder's loading
SCOPE = [
    "layergraft.prune.recover.x_fit_ghost*",
    "layergraft.prune.recover.x_fit_replaceme*",
    "layergraft.prune.recover.x_fit_diag*",
    "layergraft.prune.recover.x_fit_scale*",
    "layergraft.prune.recover.x_solve_psd*",
    "layergraft.prune.recover.x_damping*",
    "layergraft.prune.fold.x_fold_replaceme*",
    "layergraft.prune.fold.x_scale_writers*",
    "layergraft.prune.ghost.x_operator_module*",
    "layergraft.prune.model.x_finalize_scale*",
    "layergraft.prune.calibrate.xǁGapStatsǁupdate*",
    "layergraft.models.ghost_remote.modeling_layergraft_ghost.xǁGhostOperatorǁforward*",
    "layergraft.models.ghost_remote.modeling_layergraft_ghost.x__apply_to_hidden*",
    "layergraft.evaluate.perplexity.x_windows*",
    "layergraft.evaluate.perplexity.x_token_nll*",
    "layergraft.evaluate.perplexity.x_nll_sum*",
    "layergraft.evaluate.perplexity.x_perplexity*",
    "layergraft.gen.metrics.diversity.x_distinct_n*",
    "layergraft.gen.metrics.diversity.x_self_bleu*",
    "layergraft.gen.metrics.diversity.x__normalized*",
    "layergraft.gen.metrics.diversity.x_embedding_diversity*",
    "layergraft.gen.metrics.diversity.x_vendi_score*",
    "layergraft.gen.metrics.quality.*",
    "layergraft.slr.sweep.selection.*",
    "layergraft.slr.proxy.crc_scoring.x_score_items*",
    "layergraft.slr.proxy.crc_scoring.x_item_scores*",
    "layergraft.slr.proxy.crc_scoring.x__summary*",
    "layergraft.slr.proxy.crc_scoring.x_in_order*",
    "layergraft.slr.proxy.crc_scoring.x_result_of*",
    "layergraft.slr.proxy.crc_scoring.x_prepare_batches*",
    "layergraft.slr.proxy.crc_scoring.xǁCrcBatchǁ*",
    "layergraft.slr.sweep.halving.*",
    "layergraft.slr.sweep.engines.x_enumerate_intervals*",
    "layergraft.slr.sweep.engines.x_interval_key*",
    "layergraft.slr.sweep.engines.xǁUnitǁ*",
    "layergraft.slr.sweep.engines.x_plan_units*",
    "layergraft.slr.sweep.engines.x_score_start*",
    "layergraft.slr.sweep.engines.x_score_model*",
    "layergraft.slr.sweep.engines.x__as_base*",
    "layergraft.slr.sweep.engines.x_carried_prefix_layers*",
    "layergraft.slr.sweep.engines.xǁPostPrefixǁ*",
    "layergraft.models.packing.*",
    "layergraft.models.runner.xǁLayerRunnerǁ*",
    "layergraft.models.runner.xǁReadsǁ*",
    "layergraft.models.runner.x__compute_dtype*",
]

#: test_prune.py's end-to-end cases (saved models, CLI) cover the same functions through
#: seconds of IO each; the references below check them directly and fast
TESTS = [
    "tests/test_operator_refs.py",
    "tests/test_calibrate.py",
    "tests/test_fit_refs.py",
    "tests/test_ppl.py",
    "tests/test_diversity.py",
    "tests/test_metric_refs.py",
    "tests/test_selection_rules.py",
    "tests/test_crc.py",
    "tests/test_packing.py",
    "tests/test_halving.py",
    "tests/test_vend.py",
    "tests/test_sweep_engine.py",
    "tests/test_batching.py",
    "tests/test_parts_restore.py",
]

#: mutmut's settings (setup.cfg in the scratch copy: the project's pyproject.toml stays as is)
CONFIG = """[mutmut]
source_paths = src
only_mutate =
{only}
pytest_add_cli_args_test_selection =
{tests}
pytest_add_cli_args =
    -p
    no:randomly
    -p
    no:cacheprovider
    -q
process_isolation = forkserver
use_git_change_detection = False
"""


def _indent(items: list[str]) -> str:
    return "\n".join(f"    {x}" for x in items)


def _from_git(rev: str, path: str, scratch: Path) -> None:
    shutil.rmtree(scratch / path, ignore_errors=True)
    tar = subprocess.run(["git", "archive", rev, path], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=tar.stdout, check=True)


def prepare(scratch: Path, src_rev: str | None = None, tests_rev: str | None = None) -> None:
    """Copy sources, tests and project files into ``scratch`` (keeping ``mutants/``): from
    the working tree, or as they were at a git revision (``tests_rev``: measure an older
    suite against today's code; ``src_rev``: leave out uncommitted work on the sources)."""
    scratch.mkdir(parents=True, exist_ok=True)
    for name, rev in (("src", src_rev), ("tests", tests_rev)):
        if rev:
            _from_git(rev, name, scratch)
            continue
        shutil.rmtree(scratch / name, ignore_errors=True)
        shutil.copytree(
            ROOT / name,
            scratch / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".hypothesis"),
        )
    shutil.copy2(ROOT / "pyproject.toml", scratch / "pyproject.toml")
    for f in MUTATE:
        # a file added to MUTATE after a first run sits in mutants/ as a plain copy without
        # a .meta; mutmut sees it unchanged and never mutates it: remove it so it is mutated
        copy = scratch / "mutants" / f
        if copy.is_file() and not copy.with_name(copy.name + ".meta").is_file():
            copy.unlink()
    tests = [t for t in TESTS if (scratch / t).is_file()]
    (scratch / "setup.cfg").write_text(CONFIG.format(only=_indent(MUTATE), tests=_indent(tests)))


def _mutmut(scratch: Path, *args: str, capture: bool = False) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    exe = str(Path(sys.executable).with_name("mutmut"))
    res = subprocess.run(
        [exe, *args], cwd=scratch, env=env, text=True, capture_output=capture, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} exited {res.returncode}\n{res.stderr or ''}")
    return res.stdout if capture else ""


#: mutmut exit codes re-run each time: not run, interrupted, timed out, and the survivors
#: (new tests may kill them now; a killed mutant stays killed while its code is unchanged)
RERUN = (None, 0, 2, 5, 33, 36, 24, -24, 152, 255)


def _results(scratch: Path) -> dict[str, int | None]:
    """Every generated mutant and its exit code (None: not run yet)."""
    out: dict[str, int | None] = {}
    for meta in (scratch / "mutants").rglob("*.meta"):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def in_scope(scratch: Path, sample: int = 1) -> list[str]:
    """The mutants of :data:`SCOPE` that mutmut generated (sorted), every ``sample``-th one."""
    names = sorted(n for n in _results(scratch) if any(fnmatch.fnmatchcase(n, g) for g in SCOPE))
    return names[::sample]


def summary(scratch: Path, only: set[str] | None = None) -> dict:
    """``{"by_status": {...}, "by_file": {file: {...}}, "kill_rate": ..., "survivors": [...]}``.
    The kill rate counts killed mutants over all tested ones; mutants no test reaches ("no
    tests") count as survivors, since nothing would notice them; timeouts are listed apart."""
    out = _mutmut(scratch, "results", "--all", "true", capture=True)
    by_status: Counter[str] = Counter()
    by_file: dict[str, Counter[str]] = {}
    survivors = []
    for line in out.splitlines():
        if ":" not in line:
            continue
        name, status = (x.strip() for x in line.rsplit(":", 1))
        if not any(fnmatch.fnmatchcase(name, g) for g in SCOPE):
            continue
        if only is not None and name not in only:
            continue
        module = name.split(".x", 1)[0].split(".xǁ", 1)[0]
        by_status[status] += 1
        by_file.setdefault(module, Counter())[status] += 1
        if status != "killed":
            survivors.append({"mutant": name, "status": status})
    tested = sum(v for k, v in by_status.items() if k not in ("skipped", "not checked"))
    return {
        "by_status": dict(by_status),
        "by_file": {k: dict(v) for k, v in sorted(by_file.items())},
        # a timeout is a kill for mutmut (an endless loop was caught); on a loaded machine it
        # is often only slowness, so it is reported apart and re-run when the machine is idle
        "kill_rate": round(by_status["killed"] / tested, 4) if tested else None,
        "timeouts": by_status["timeout"],
        "survivors": survivors,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "build" / "mutmut")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--show", metavar="MUTANT")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    ap.add_argument("--tests-rev", help="the tests as of this git revision (a 'before' rate)")
    ap.add_argument("--src-rev", help="the sources as of this git revision (e.g. HEAD)")
    ap.add_argument(
        "--sample", type=int, default=1, metavar="N",
        help="every N-th mutant of SCOPE only (a fixed sample; needs a first run's mutants/)",
    )  # fmt: skip
    ap.add_argument("--rerun", action="store_true", help="re-run mutants already decided")
    ap.add_argument("names", nargs="*", help="only these mutants (default: SCOPE)")
    args = ap.parse_args()
    scratch = args.dir.resolve()
    if args.show:
        print(_mutmut(scratch, "show", args.show, capture=True))
        return 0
    only = set(in_scope(scratch, args.sample)) if args.sample > 1 else None
    if args.sample > 1 and not only:
        raise SystemExit(f"--sample needs the mutants of a first run in {scratch}")
    if not args.summary_only:
        prepare(scratch, args.src_rev, args.tests_rev)
        names = args.names or (sorted(only) if only else SCOPE)
        if not args.names and not args.rerun and (scratch / "mutants").is_dir():
            # mutmut re-runs every mutant named on its command line: name only those not
            # killed yet (timeouts included: on a busy machine they are often mere slowness)
            done = _results(scratch)
            chosen = only if only is not None else set(in_scope(scratch))
            if chosen:
                names = sorted(n for n in chosen if done.get(n) in RERUN)
        if names:
            _mutmut(scratch, "run", "--max-children", str(args.max_children), *names)
    res = summary(scratch, only)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    print(f"mutants by status: {res['by_status']}")
    for f, c in res["by_file"].items():
        print(f"  {f}: {c}")
    print(f"kill rate: {res['kill_rate']} (timeouts, not counted as kills: {res['timeouts']})")
    print(f"survivors ({len(res['survivors'])}):")
    for s in res["survivors"]:
        print(f"  {s['mutant']}: {s['status']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
