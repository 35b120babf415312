"""SLR (and pruning) on a Gemma-3-270M base/post pair, through layergraft's own commands.

With a pair built by ``make base data post`` (the planted collapse, ``TRIALS.md``) or by the
preference-optimised recipe of issue 23, run exactly what a user would run, each step a
``layergraft`` command in a fresh process timed with ``/usr/bin/time`` (wall seconds, peak RSS):

1. ``crc`` of base and post (exact estimator with V_end, the 48 bundled CRC prompts);
2. ``sweep --method both --parts attn,mlp,all --alphas ... --validate K``: every interval per
   part and blend weight, 21 whole-model soups, both selection rules, the K best candidates
   of each family validated by generation, the weight diff beside them;
3. the picks written with ``restore`` / ``soup``: the paper rule's interval (the SLR paper's
   choice), each rule's best over every family, the validated choice, the best soup;
4. ``compare`` of post / base / the picks on creative, qa and reasoning, with the decoding
   baselines (post at temperature 1.5, post without min-p);
5. ``prune --compare`` of the base (angular and block influence, 2 and 4 layers), unless
   ``--no-pruning`` (then the previous run's pruning section is kept, with its timing).

Everything derived from Gemma's weights stays in ``--work`` (git-ignored: Gemma terms of use);
``--docs`` receives only numbers and plots: ``results.json`` (the demo's keys, so
``tools/render_results.py`` renders the README sections from it) and the PNGs.

    python pipeline.py --name planted --base work/base --post work/post --work work/pipeline \
        --docs ../../docs/gemma3 [--layergraft PATH] [--n 8] [--limit 10] [--no-pruning]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: new-token budgets per task (Gemma tokens): the post model's replies fit (finished_rate
#: in the results says how many did)
BUDGETS = {"creative": 128, "qa": 64, "reasoning": 160}


def _command(argv: list[str]) -> str:
    """The command as recorded (``--resume``/``--force`` do not change what a step computes)."""
    return " ".join(["layergraft", *(a for a in argv[1:] if a not in ("--resume", "--force"))])


class Steps:
    """Run layergraft commands under /usr/bin/time, recording wall time and peak RSS.

    ``previous`` is the ``steps`` of an earlier run: a step whose command is the same as then,
    run on the same ``weights`` (the models' digests: a model trained again keeps its path, so
    the command alone would not tell), is not run again, its recorded output and timing are
    kept (``reused`` says so) — so adding a model to the comparison does not redo the sweep and
    the pruning."""

    def __init__(self, logs: Path, previous: dict[str, Any], weights: dict[str, Any]) -> None:
        self.logs, self.previous, self.steps, self.weights = logs, previous, {}, weights

    def recorded(self, step: str, argv: list[str]) -> bool:
        """Whether the record holds this step with this very command and weights."""
        old = self.previous.get(step)
        return bool(
            old
            and old.get("command") == _command(argv)
            and old.get("weights") == self.weights
            and "stdout" in old
        )

    def run(self, step: str, argv: list[str], log: str, reuse: bool = True) -> str:
        command = _command(argv)
        old = self.previous.get(step)
        if reuse and self.recorded(step, argv):
            self.steps[step] = {**old, "reused": True}
            print(
                f"[{step}] same command as the previous run: its output and timing reused",
                flush=True,
            )
            return old["stdout"]
        timing = (self.logs / log).with_suffix(".time")
        print(f"[{step}] {command}", flush=True)
        t0 = time.time()
        with open(self.logs / log, "w") as fh:
            cmd = ["/usr/bin/time", "-f", "%e %M", "-o", str(timing), *argv]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"[{step}] failed ({proc.returncode}); see {self.logs / log}")
        wall, rss_kib = timing.read_text().split()[-2:]
        self.steps[step] = {"wall_s": float(wall), "peak_rss_mib": round(int(rss_kib) / 1024, 1),
                            "command": command, "weights": self.weights,
                            "stdout": proc.stdout}  # fmt: skip
        print(
            f"[{step}] {time.time() - t0:.0f} s, peak {self.steps[step]['peak_rss_mib']} MiB",
            flush=True,
        )
        return proc.stdout


def _probe(lg: str, code: str, *args: str) -> Any:
    """What ``code`` prints as JSON, run by the environment that runs the layergraft commands
    (the python beside ``lg``), as every layergraft call here is."""
    python = Path(lg).with_name("python")
    out = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return json.loads(out.stdout)


def digests(lg: str, models: dict[str, str]) -> dict[str, Any]:
    """Each model's weights digest (``layergraft.gen.records.weights_digest``)."""
    code = (
        "import json, sys; from layergraft.gen.records import weights_digest; "
        "print(json.dumps({k: weights_digest(v) for k, v in json.loads(sys.argv[1]).items()}))"
    )
    return _probe(lg, code, json.dumps(models))


#: the hybrids put to the tasks, by label, and why each is there (also the names --also cannot take)
PICKS = {
    "slr_paper": "the paper's rule over restored intervals (the SLR paper's choice)",
    "paper_best": "the paper's rule over every family swept",
    "format_best": "the format rule (V_end too) over every family swept",
    "validated": "the most diverse candidate that passed validation by generation",
    "soup": "the whole-model soup the active rule selects",
}


def picks(sweep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The hybrids put to the tasks, by label, each once (a label that names a hybrid already
    listed points to it with ``same_as``): the paper rule's interval (what the SLR paper
    selects), each rule's most diverse hybrid over every family, the validated choice and the
    best whole-model soup."""
    paper_iv = (sweep.get("selections") or {}).get("paper", {}).get("interval")
    row_iv = next((r for r in sweep["intervals"] if r["interval"] == paper_iv), None)
    best = sweep.get("best") or {}
    chosen = (sweep.get("validation") or {}).get("chosen")
    soup = (sweep.get("soup") or {}).get("selected")
    rows = {"slr_paper": row_iv, "paper_best": best.get("paper"),
            "format_best": best.get("format"), "validated": chosen, "soup": soup}  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for label, why in PICKS.items():
        row = rows[label]
        if not row:
            continue
        lab = row.get("label") or (
            row["interval"] if "interval" in row else f"soup@{row['alpha']:g}"
        )
        same = next((k for k, v in out.items() if v["label"] == lab), None)
        entry = {
            "why": why,
            "label": lab,
            **{k: row.get(k) for k in ("interval", "alpha", "parts", "V", "H", "H_norm", "V_end")},
        }
        if same:
            entry["same_as"] = same
        out[label] = entry
    return out


def _write_argv(lg: str, base: str, post: str, row: dict[str, Any], out: Path) -> list[str]:
    """The command that writes a pick: restore for base layers, soup for blends."""
    common = ["--base", base, "--post", post, "--out", str(out), "--force", "--quiet"]
    if row.get("interval") is None:
        return [lg, "soup", *common, "--alpha", str(row["alpha"])]
    parts = [] if row.get("parts", "all") == "all" else ["--parts", row["parts"]]
    if row.get("alpha", 1.0) == 1.0:
        return [lg, "restore", *common, "--layers", row["interval"], *parts]
    return [lg, "soup", *common, "--alpha", str(row["alpha"]), "--layers", row["interval"], *parts]


def verdicts(res: dict[str, Any]) -> dict[str, Any]:
    """The questions of issue 19 answered from the numbers: which hybrid keeps the format
    (finished_rate >= 0.9 x post on every task) while lifting QA distinct valid answers to
    >= 1.5 x post's; how well V_end ranks the validated candidates' finished_rate."""
    runs = {t: cr["runs"] for t, cr in res["compare"].items()}
    post = {t: r["post"]["mean"] for t, r in runs.items()}
    rows = {}
    for label, pick in res["picks"].items():
        if "same_as" in pick:
            continue
        keeps = all(r[label]["mean"].get("finished_rate", 0) >= 0.9 * post[t].get("finished_rate", 0)
                    for t, r in runs.items())  # fmt: skip
        qa = runs.get("qa", {})
        lift = (qa[label]["mean"].get("distinct_valid_answers", 0)
                / max(post["qa"].get("distinct_valid_answers", 0), 1e-12)) if qa else None  # fmt: skip
        rows[label] = {"keeps_format": keeps, "qa_distinct_valid_vs_post": lift,
                       "both": bool(keeps and lift is not None and lift >= 1.5)}  # fmt: skip
    val = res["sweep"].get("validation") or {}
    cands = [c for c in val.get("candidates", []) if c.get("V_end") is not None]
    rho = _spearman([c["V_end"] for c in cands], [c["finished_rate"] for c in cands])
    return {"per_pick": rows, "any": [k for k, v in rows.items() if v["both"]],
            "spearman_v_end_finished_rate": rho, "candidates_for_rho": len(cands)}  # fmt: skip


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else None


def also_models(specs: list[str]) -> dict[str, str]:
    """``NAME=DIR`` specs as {name: absolute dir}, refused before any work when a name is taken
    (base, post, a pick's label, twice) or a directory holds no model: a typo would otherwise
    surface an hour later, in the comparison."""
    taken = {"base", "post", *PICKS}
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--also {spec!r}: give NAME=DIR, e.g. --also sft=work/post-sft")
        if name in taken or name in out:
            raise SystemExit(f"--also {spec!r}: the name {name!r} is taken; choose another")
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"--also {spec!r}: {path} holds no config.json; train it first")
        out[name] = str(Path(path).resolve())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="planted", help="the pair's name (results name it)")
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--post", type=Path, required=True)
    ap.add_argument(
        "--base-note", default="google/gemma-3-270m (Q4_K_M GGUF, dequantised to float32)"
    )
    ap.add_argument(
        "--post-note", default="the base after SFT (experiments/gemma3/TRIALS.md, trial t2)"
    )
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another model measured (crc) and compared beside base and post, in the same run and "
        "settings: the natural pair's SFT-only stage, so each stage's loss of diversity is read "
        "from one comparison (repeatable)",
    )
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--layergraft", default=str(Path(sys.executable).parent / "layergraft"))
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--limit", type=int, default=10, help="prompts per task")
    ap.add_argument("--parts", default="attn,mlp,all")
    ap.add_argument("--alphas", default="0.25,0.5,0.75,1")
    ap.add_argument("--validate", type=int, default=2, help="candidates per family validated")
    ap.add_argument("--validate-samples", type=int, default=4)
    ap.add_argument("--no-pruning", action="store_true", help="keep the previous pruning section")
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--ppl-seqlen", type=int, default=1024)
    args = ap.parse_args()
    lg = args.layergraft
    work, docs = args.work.resolve(), args.docs.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    record = work / "steps.json"  # every step's command, output and timing (outputs not in docs)
    base, post = str(args.base.resolve()), str(args.post.resolve())
    also = also_models(args.also)
    weights = digests(lg, {"base": base, "post": post, **also})
    steps = Steps(
        work / "logs", json.loads(record.read_text()) if record.is_file() else {}, weights
    )
    previous = (
        json.loads((docs / "results.json").read_text()) if (docs / "results.json").is_file() else {}
    )
    res: dict[str, Any] = {
        "name": args.name,
        "pair": {"base": args.base_note, "post": args.post_note, "also": list(also)},
        "settings": {
            "dtype": "float32 (CPU: --dtype auto)",
            "threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
            "n": args.n,
            "limit": args.limit,
            "budgets": BUDGETS,
            "parts": args.parts,
            "alphas": args.alphas,
            "validate": args.validate,
            "validate_samples": args.validate_samples,
            "seed": 0,
            "ppl": {"tokens": args.ppl_tokens, "seqlen": args.ppl_seqlen},
        },
    }

    res["crc"] = {}
    for name, path in (("base", base), ("post", post), *also.items()):
        for mode in ("strict", "closers"):
            step = f"crc {name}" + ("" if mode == "strict" else " closers")
            argv = [lg, "crc", path, "--json", "--v-end", mode]
            if name == "base":  # the base has no chat template: the post model's
                argv += ["--tokenizer", post]
            out = json.loads(steps.run(step, argv, f"{step.replace(' ', '-')}.log"))
            out = {k: v for k, v in out.items() if k != "items"}  # per prompt: in work/
            if mode == "strict":
                res["crc"][name] = out
            else:
                res["crc"][name]["closers"] = out["mean"]

    sweep_dir = work / "sweep"
    resume = "--resume" if (sweep_dir / "intervals.jsonl").is_file() else "--force"
    steps.run("sweep", [lg, "sweep", "--base", base, "--post", post, "--out", str(sweep_dir),
                        "--method", "both", "--parts", args.parts, "--alphas", args.alphas,
                        "--rule", "format", "--validate", str(args.validate), "--validate-samples",
                        str(args.validate_samples), "--quiet", resume], "sweep.log")  # fmt: skip
    sweep = res["sweep"] = json.loads((sweep_dir / "results.json").read_text())

    models: dict[str, str] = {"post": post, "base": base, **also}
    res["picks"] = picks(sweep)
    for label, row in res["picks"].items():
        if "same_as" in row:
            continue
        out = work / label
        steps.run(f"write {label}", _write_argv(lg, base, post, row, out), f"write-{label}.log",
                  reuse=out.is_dir())  # fmt: skip
        models[label] = str(out)

    res["compare"] = {}
    for task, budget in BUDGETS.items():
        out = work / "compare" / task
        argv = [lg, "compare", "--models", *(f"{k}={v}" for k, v in models.items()), "--task", task,
                "--n", str(args.n), "--limit", str(args.limit), "--max-new-tokens", str(budget),
                "--out", str(out), "--quiet", "--json"]  # fmt: skip
        reuse = steps.recorded(f"compare {task}", argv) and (out / "results.json").is_file()
        # every model generated in one run: the recorded timing is the whole comparison
        if not reuse:
            shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)  # layergraft creates no missing parent
        steps.run(f"compare {task}", argv, f"compare-{task}.log", reuse=reuse)
        res["compare"][task] = json.loads((out / "results.json").read_text())
        for r in res["compare"][task]["runs"].values():
            r.pop("per_prompt", None)
        record.write_text(json.dumps({**steps.previous, **steps.steps}, indent=1))
    res["verdicts"] = verdicts(res)

    if args.no_pruning:
        res["pruning"] = previous.get("pruning", {})
        for k, v in (previous.get("steps") or {}).items():
            if k.startswith("prune "):
                steps.steps[k] = {**v, "reused": "from the previous run (--no-pruning)"}
    else:
        res["pruning"] = {}
        for metric in ("angular", "bi"):
            for n in (2, 4):
                argv = [lg, "prune", base, "--auto", str(n), "--metric", metric, "--compare", "--json",
                        "--ppl-seqlen", str(args.ppl_seqlen), "--ppl-tokens", str(args.ppl_tokens)]  # fmt: skip
                out = steps.run(f"prune {metric} {n}", argv, f"prune-{metric}-{n}.log")
                res["pruning"][f"{metric}_remove_{n}"] = {**json.loads(out), "metric": metric}
    record.write_text(json.dumps({**steps.previous, **steps.steps}, indent=1))

    res["steps"] = {k: {f: v[f] for f in v if f != "stdout"} for k, v in steps.steps.items()}
    res["timing_s"] = {k: v["wall_s"] for k, v in steps.steps.items()}
    code = "import json; from layergraft.checkpoint.provenance import versions; print(json.dumps(versions()))"
    res["versions"] = _probe(lg, code)
    res["machine"] = f"{os.cpu_count()} CPU cores, no GPU"
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    for name in ("heatmaps.png", "heatmaps_attn.png", "heatmaps_mlp.png", "pareto.png", "diff.png"):
        if (sweep_dir / name).is_file():
            shutil.copyfile(sweep_dir / name, docs / name)
    for task in BUDGETS:
        for png in (work / "compare" / task).glob("*.png"):
            shutil.copyfile(png, docs / f"{task}_{png.name}")
    print(f"wrote {docs / 'results.json'} and the plots")


if __name__ == "__main__":
    main()
