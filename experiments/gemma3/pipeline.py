"""SLR and pruning on the Gemma-3-270M base/post pair, through layergraft's own commands.

The second half of GitHub issue 13: with the pair built by ``make base data post`` (see
``TRIALS.md``), run exactly what a user would run, each step a ``layergraft`` command in a
fresh process timed with ``/usr/bin/time`` (wall seconds, peak RSS):

1. ``crc`` of base and post (exact estimator, the 48 bundled CRC prompts);
2. ``sweep --method both --parts attn,mlp,all``: 171 intervals per part (18 layers), 21 soups, the weight
   diff beside them;
3. ``restore`` of the selected interval and ``soup`` of the selected alpha;
4. ``compare`` of post / base / SLR / soup on creative, qa and reasoning, with the decoding
   baselines (post at temperature 1.5, post without min-p);
5. ``prune --compare`` of the base with angular and block-influence selection, 2 and 4 layers.

Everything derived from Gemma's weights stays in ``--work`` (git-ignored: Gemma terms of use);
``--docs`` receives only numbers and plots: ``results.json`` (the demo's keys, so
``tools/readme_numbers.py`` renders the README section from it) and the PNGs.

    python pipeline.py --base work/base --post work/post --work work/pipeline \\
        --docs ../../docs/gemma3 [--layergraft PATH] [--n 8] [--limit 10]
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

    ``previous`` is the ``steps`` of an earlier results.json: a step whose command is the same
    as then is not run again, its recorded output and timing are kept (``reused`` says so) —
    so adding a model to the comparison does not redo the sweep and the pruning."""

    def __init__(self, logs: Path, previous: dict[str, Any]) -> None:
        self.logs, self.previous, self.steps = logs, previous, {}

    def recorded(self, step: str, argv: list[str]) -> bool:
        """Whether the record holds this step with this very command (so it need not run)."""
        old = self.previous.get(step)
        return bool(old and old.get("command") == _command(argv) and "stdout" in old)

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
                            "command": command, "stdout": proc.stdout}  # fmt: skip
        print(
            f"[{step}] {time.time() - t0:.0f} s, peak {self.steps[step]['peak_rss_mib']} MiB",
            flush=True,
        )
        return proc.stdout


def inner_interval(sweep: dict[str, Any]) -> dict[str, Any] | None:
    """The most diverse eligible interval that leaves the last layer post-trained.

    The paper's rule reads only the first answer token; on this pair its choice (which ends at
    the last layer) loses end-of-turn in generation. This second candidate, the same rule
    restricted to ``end < num_layers``, tests whether the last layer carries the format."""
    thr, n = sweep["selection"]["validity_threshold"], sweep["num_layers"]
    rows = [r for r in sweep["intervals"] if r["V"] >= thr and r["end"] < n]
    return max(rows, key=lambda r: r["H_norm"], default=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--post", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--layergraft", default=str(Path(sys.executable).parent / "layergraft"))
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--limit", type=int, default=10, help="prompts per task")
    ap.add_argument("--parts", default="attn,mlp,all")
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--ppl-seqlen", type=int, default=1024)
    args = ap.parse_args()
    lg = args.layergraft
    work, docs = args.work.resolve(), args.docs.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    record = work / "steps.json"  # every step's command, output and timing (outputs not in docs)
    steps = Steps(work / "logs", json.loads(record.read_text()) if record.is_file() else {})
    base, post = str(args.base.resolve()), str(args.post.resolve())
    res: dict[str, Any] = {
        "pair": {
            "base": "google/gemma-3-270m (Q4_K_M GGUF, dequantised to float32)",
            "post": "the base after SFT (experiments/gemma3/TRIALS.md, trial t2)",
        },
        "settings": {
            "dtype": "float32 (CPU: --dtype auto)",
            "threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
            "n": args.n,
            "limit": args.limit,
            "budgets": BUDGETS,
            "parts": args.parts,
            "seed": 0,
            "ppl": {"tokens": args.ppl_tokens, "seqlen": args.ppl_seqlen},
        },
    }

    res["crc"] = {}
    for name, path in (("base", base), ("post", post)):
        out = steps.run(f"crc {name}", [lg, "crc", path, "--json"], f"crc-{name}.log")
        res["crc"][name] = {
            k: v for k, v in json.loads(out).items() if k != "items"
        }  # per prompt: in work/

    sweep_dir = work / "sweep"
    resume = "--resume" if (sweep_dir / "intervals.jsonl").is_file() else "--force"
    steps.run("sweep", [lg, "sweep", "--base", base, "--post", post, "--out", str(sweep_dir), "--method",
                        "both", "--parts", args.parts, "--quiet", resume], "sweep.log")  # fmt: skip
    sweep = res["sweep"] = json.loads((sweep_dir / "results.json").read_text())

    models: dict[str, str] = {"post": post, "base": base}
    candidates = {"slr": sweep.get("selected"), "slr_inner": inner_interval(sweep)}
    why = {
        "slr": "the sweep's selection (the paper's rule)",
        "slr_inner": "the most diverse eligible interval that leaves the last layer post-trained",
    }
    res["candidates"] = {
        name: {"why": why[name], **{k: row[k] for k in ("interval", "V", "H", "H_norm")}}
        for name, row in candidates.items()
        if row
    }
    for name, row in candidates.items():
        if row:
            out = work / name
            argv = [lg, "restore", "--base", base, "--post", post, "--layers", row["interval"],
                    "--out", str(out), "--force", "--quiet"]  # fmt: skip
            steps.run(f"restore {name}", argv, f"restore-{name}.log", reuse=out.is_dir())
            models[name] = str(out)
    alpha = ((sweep.get("soup") or {}).get("selected") or {}).get("alpha")
    if alpha is not None:
        out = work / "soup"
        argv = [lg, "soup", "--base", base, "--post", post, "--alpha", str(alpha), "--out", str(out),
                "--force", "--quiet"]  # fmt: skip
        steps.run("soup", argv, "soup.log", reuse=out.is_dir())
        models["soup"] = str(out)
        sel = sweep["soup"]["selected"]
        res["candidates"]["soup"] = {"why": "the soup sweep's selection (the same rule over alpha)",
                                     **{k: sel[k] for k in ("alpha", "V", "H", "H_norm")}}  # fmt: skip

    res["compare"] = {}
    for task, budget in BUDGETS.items():
        out = work / "compare" / task
        argv = [lg, "compare", "--models", *(f"{k}={v}" for k, v in models.items()), "--task", task,
                "--n", str(args.n), "--limit", str(args.limit), "--max-new-tokens", str(budget),
                "--out", str(out), "--quiet", "--json"]  # fmt: skip
        reuse = steps.recorded(f"compare {task}", argv) and (out / "results.json").is_file()
        if (
            not reuse
        ):  # every model generated in one run: the recorded timing is the whole comparison
            shutil.rmtree(out, ignore_errors=True)
        steps.run(f"compare {task}", argv, f"compare-{task}.log", reuse=reuse)
        res["compare"][task] = json.loads((out / "results.json").read_text())
        for r in res["compare"][task]["runs"].values():
            r.pop("per_prompt", None)
        record.write_text(json.dumps({**steps.previous, **steps.steps}, indent=1))

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
    probe = "import json; from layergraft.checkpoint.provenance import versions; print(json.dumps(versions()))"
    python = Path(lg).with_name("python")  # the environment that ran the commands
    res["versions"] = json.loads(subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                                                check=True).stdout)  # fmt: skip
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
