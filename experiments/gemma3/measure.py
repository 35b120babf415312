"""Measure base and post with the layergraft CLI: exact CRC, then a small generation-diversity check.

Why through the CLI (not our own code): the numbers must be the product's numbers, and running
the product on a real 262k-vocabulary model is half the point of building this pair. Every
call runs under ``/usr/bin/time -v`` so its wall time and peak RSS are recorded too.

Generation check (kept small for a 2-core CPU): bundled ``creative`` prompts (first
``--creative-limit``) and ``qa`` prompts (first ``--qa-limit``), ``--n`` samples each,
temperature 1.0, min-p 0.1 (layergraft's defaults), seed 0, then ``layergraft diversity``.
All computation in float32 (the checkpoints' dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from common import WORK

METRICS = ("distinct_2", "self_bleu", "embedding_diversity", "vendi", "distinct_answers",
           "distinct_valid_answers", "valid_rate", "format_validity", "finished_rate")  # fmt: skip


def run(cmd: list[str], log: Path) -> tuple[str, dict[str, float]]:
    """Run ``cmd`` with one thread under /usr/bin/time -v; stdout, and wall/peak-RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    log.write_text(p.stderr)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}); see {log}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    h, m, s = (float(g) if g else 0.0 for g in wall.groups()) if wall else (0, 0, 0)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return p.stdout, {"wall_s": round(h * 3600 + m * 60 + s, 1),
                      "peak_rss_mb": round(int(rss.group(1)) / 1024) if rss else None}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=[f"base={WORK / 'base'}", f"post={WORK / 'post'}"],
                    help="NAME=DIR pairs (default: base and post under work/)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=WORK / "measure")
    ap.add_argument("--venv", type=Path, default=Path(sys.executable).parent.parent)
    ap.add_argument("--creative-limit", type=int, default=8)
    ap.add_argument("--qa-limit", type=int, default=12)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--no-gen", action="store_true", help="CRC only")
    ap.add_argument("--no-crc", action="store_true", help="generation check only")
    ap.add_argument("--tasks", default="creative,qa", help="generation tasks to check")
    args = ap.parse_args()
    lg = str(args.venv / "bin" / "layergraft")
    # models measured by an earlier call into the same --out stay in the summary (the natural
    # pair's base is measured while its SFT trains on the other core)
    prior = args.out / "summary.json"
    summary: dict[str, dict] = json.loads(prior.read_text()) if prior.is_file() else {}
    for spec in args.models:
        name, path = spec.split("=", 1)
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        res: dict = {"path": path, "dtype": "float32"}
        if not args.no_crc:
            stdout, cost = run([lg, "crc", path, "--json", "--dtype", "float32", "--device", "cpu"],
                               out / "crc.time")  # fmt: skip
            (out / "crc.json").write_text(stdout)
            crc = json.loads(stdout)
            # 6 decimals: V_end of a model without chat habits is ~1e-5, not 0
            res["crc"] = {**{k: round(v, 6) for k, v in crc["mean"].items() if k != "n"},
                          "by_category": {c: {k: round(v, 6) for k, v in d.items() if k != "n"}
                                          for c, d in crc["by_category"].items()}, **cost}  # fmt: skip
        if not args.no_gen:
            plan = {"creative": (args.creative_limit, 96), "qa": (args.qa_limit, 24)}
            for task in args.tasks.split(","):
                limit, max_new = plan[task]
                gens = out / f"gens-{task}.jsonl"
                gens.unlink(missing_ok=True)  # generate resumes an existing file: start fresh
                _, gcost = run([lg, "generate", path, "--task", task, "--limit", str(limit),
                                "--n", str(args.n), "--max-new-tokens", str(max_new), "--seed", "0",
                                "--device", "cpu", "--quiet", "--out", str(gens)],
                               out / f"gen-{task}.time")  # fmt: skip
                stdout, dcost = run([lg, "diversity", str(gens), "--json", "--bootstrap", "200"],
                                    out / f"div-{task}.time")  # fmt: skip
                (out / f"diversity-{task}.json").write_text(stdout)
                div = json.loads(stdout)
                flat = div.get("mean", div)
                res[task] = {
                    k: round(flat[k], 4) for k in METRICS if isinstance(flat.get(k), (int, float))
                }
                res[task].update(gen_wall_s=gcost["wall_s"], gen_peak_rss_mb=gcost["peak_rss_mb"])
        summary[name] = {**summary.get(name, {}), **res}  # a CRC-only call keeps the samples
        print(json.dumps({name: res}), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
