"""SLR (and pruning) on a Gemma-3-270M base/post pair: the product's main job, plus this
experiment's own measurements, in one process.

With a pair built by ``make base data post`` (the planted collapse, ``TRIALS.md``) or by the
preference-optimised recipe of issue 23, run what ``layergraft slr`` runs, through its API
(:class:`layergraft.study.slr.SlrStudy`) with ``--work`` as the job directory:

1. ``check`` and ``crc`` of base, post and every ``--also`` model (strict V_end);
2. ``sweep`` (both methods, ``--parts``, ``--alphas``, the format rule, the best ``--validate``
   candidates of each family validated by generation, the weight diff beside them);
3. ``hybrids``: five picks written (the paper rule's interval, the paper and format rules' best
   over every family, the validated choice = the job's written hybrid, the best soup);
4. ``compare/<task>`` of post, base, ``--also`` models and the picks on creative, qa and
   reasoning, with the decoding baselines (post at temperature 1.5, post without min-p);

then, appended as steps of the same job (each skipped when unchanged, as the study's are):

5. ``crc-closers/<model>``: CRC again with V_end counting one closing '.' before the end marker;
6. ``prune/<metric>-<n>``: every recovery method on the base with 2 and 4 layers removed by
   angular distance and by block influence, unless ``--no-pruning`` (then the previous docs
   results' pruning section is kept, with its timing).

A rerun reuses every finished step through the job's manifests; a step reruns when its settings
or its models' weights changed (``layergraft.study.job``). Everything derived from Gemma's
weights stays in ``--work`` (git-ignored: Gemma terms of use); ``--docs`` receives only numbers
and plots: ``results.json`` in the keys ``tools/render_results.py`` renders the Gemma pages from
(the picks named slr_paper, paper_best, format_best, validated, soup) and the PNGs.

    python pipeline.py --name planted --base work/base --post work/post --work work/job \
        --docs ../../docs/gemma3 [--n 8] [--limit 10] [--no-pruning] [--threads N|auto]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the study's compared roles -> (the key of the docs results, which tools/render_results.py
#: reads, and why it is there); the order is the study's, which decides which role holds a hybrid two roles share
PICKS = {
    "written": ("validated", "the most diverse candidate that passed validation by generation"),
    "paper": ("slr_paper", "the paper's rule over restored intervals (the SLR paper's choice)"),
    "format": ("format_best", "the format rule (V_end too) over every family swept"),
    "paper_best": ("paper_best", "the paper's rule over every family swept"),
    "soup": ("soup", "the whole-model soup the active rule selects"),
}
#: the pruning measured on the base: metrics by number of layers removed
PRUNE = {"angular": (2, 4), "bi": (2, 4)}
#: the sweep's plots copied to --docs
SWEEP_PLOTS = ("heatmaps.png", "heatmaps_attn.png", "heatmaps_mlp.png", "pareto.png", "diff.png")


def run_names() -> dict[str, str]:
    """The study's compare run label of each compared role -> the docs key (other runs: post,
    base, --also models and the decoding baselines keep their names)."""
    from layergraft.study.selection import ROLE_LABELS

    return {ROLE_LABELS[role]: key for role, (key, _) in PICKS.items()}


def docs_picks(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compared hybrids of the study's results under the docs keys, each with its CRC scores
    and why it is there; a role whose hybrid another role holds points to it with ``same_as``."""
    from layergraft.study.selection import compared_roles

    roles = compared_roles(res["selection"], res["sweep"], tuple(PICKS))
    out: dict[str, dict[str, Any]] = {}
    for role, r in roles.items():
        key, why = PICKS[role]
        row = r["row"]
        if role == "written" and row.get("pick") != "validated":  # validation was off
            why = f"the written hybrid: {row.get('pick')} rule's pick, not validated"
        out[key] = {
            "why": why,
            "label": r["label"],
            "interval": f"{row['start']}:{row['end']}" if "start" in row else None,
            "alpha": row.get("alpha"),
            "parts": row.get("parts"),
            **{k: row.get(k) for k in ("V", "H", "H_norm", "V_end")},
            "role": role,
            "what": r["what"],
        }
        if "same_as" in r:
            out[key]["same_as"] = PICKS[r["same_as"]][0]
    return out


def docs_compare(cr: dict[str, Any]) -> dict[str, Any]:
    """One task's comparison with the runs under the docs keys (per-prompt rows left out)."""
    names = run_names()
    runs = {names.get(k, k): {**{f: v for f, v in r.items() if f != "per_prompt"},
                              "label": names.get(r.get("label"), r.get("label"))}
            for k, r in cr["runs"].items()}  # fmt: skip
    models = {names.get(k, k): v for k, v in cr.get("models", {}).items()}
    return {**cr, "runs": runs, "models": models}


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
    (base, post, a pick's docs key, twice) or a directory holds no model: a typo would otherwise
    surface an hour later, in the comparison. The study refuses its own labels too."""
    taken = {"base", "post", *(key for key, _ in PICKS.values())}
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


def _rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class PeakMemory:
    """The process's peak RSS after each step of ``job`` (its ``run`` wrapped): since every step
    runs in this one process, that is the peak so far, not the step's own. A reused step keeps
    what was recorded when it last ran (``path`` holds it, by step name and key)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.old: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.seen: dict[str, Any] = {}

    def watch(self, job: Any) -> None:
        run = job.run

        def run_and_record(step: Any) -> Any:
            result = run(step)
            old = self.old.get(step.name)
            reused = job.log[step.name]["status"] == "reused"
            if reused and old is not None and old.get("key") == step.key:
                self.seen[step.name] = old
            else:
                self.seen[step.name] = {"key": step.key, "peak_rss_mib": _rss_mib()}
            self.path.write_text(json.dumps({**self.old, **self.seen}, indent=1))
            return result

        job.run = run_and_record


def experiment_steps(args: argparse.Namespace, placement: dict[str, Any]) -> Callable:
    """What the experiment measures beyond the study, as steps of its job: CRC with V_end
    ``closers`` of every model, and pruning of the base (unless ``--no-pruning``)."""
    from layergraft.gen.records import weights_digest
    from layergraft.prune.compare import compare_recovery
    from layergraft.slr.proxy.crc import crc
    from layergraft.study.job import Step

    place = {k: v if isinstance(v, (str, type(None))) else str(v) for k, v in placement.items()}

    def extra(study: Any) -> dict[str, Any]:
        # the CRC prompts the study's own crc step read (the subset it wrote, or all of them)
        subset = study.root / "inputs" / "crc_prompts.jsonl"
        prompts = "all" if study.cfg.crc_prompts is None else str(subset)
        digest = hashlib.sha256(subset.read_bytes()).hexdigest() if prompts != "all" else None
        tok = study.tokenizer or study.post  # as the study's crc: the post model's chat format
        closers: dict[str, Any] = {}
        for name, path in (("base", study.base), ("post", study.post), *study.also.items()):

            def run(folder: Path, path: str = path) -> dict[str, Any]:
                res = crc(path, tok, prompts=prompts, v_end="closers", **placement)
                (folder / "items.json").write_text(json.dumps(res.pop("items", None)))
                return res

            settings = {"prompts": prompts, "prompts_sha256": digest,
                        "v_end": "closers", "tokenizer": tok, "placement": place}  # fmt: skip
            step = Step(f"crc-closers/{name}", settings, {"weights": weights_digest(path)}, run)
            closers[name] = study.job.run(step)
        out: dict[str, Any] = {"crc_closers": closers}
        if args.no_pruning:
            return {"experiment": out}
        pruning = {}
        ppl = {"ppl_seqlen": args.ppl_seqlen, "ppl_max_tokens": args.ppl_tokens}
        for metric, blocks in PRUNE.items():
            for n in blocks:

                def run(folder: Path, metric: str = metric, n: int = n) -> dict[str, Any]:
                    res = compare_recovery(study.base, auto=n, metric=metric, **ppl,
                                           progress=study.progress, **placement)  # fmt: skip
                    return {**res, "metric": metric}

                settings = {"auto": n, "metric": metric, **ppl, "placement": place}
                step = Step(f"prune/{metric}-{n}", settings, {"base": study.digests["base"]}, run)
                pruning[f"{metric}_remove_{n}"] = study.job.run(step)
        return {"experiment": {**out, "pruning": pruning}}

    return extra


def run_study(args: argparse.Namespace, work: Path, also: dict[str, str]) -> tuple[dict, dict]:
    """The study with the experiment's steps appended, in ``work``; its results and each
    step's peak RSS record."""
    from layergraft.slr.sweep.config import parse_alphas, parse_sweep_parts
    from layergraft.study.settings import BUDGETS, StudySettings
    from layergraft.study.slr import open_study

    budgets = dict.fromkeys(BUDGETS, args.max_new_tokens) if args.max_new_tokens else dict(BUDGETS)
    cfg = StudySettings(
        n=args.n, limit=args.limit, budgets=budgets, crc_prompts=args.crc_prompts,
        parts=parse_sweep_parts(args.parts), alphas=parse_alphas(args.alphas), rule="format",
        validate=args.validate or None, validate_samples=args.validate_samples,
    )  # fmt: skip
    placement = {"device": args.device, "dtype": "auto", "device_map": None}
    say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    study = open_study(args.base, args.post, work, settings=cfg, also=also, roles=tuple(PICKS),
                       progress=not args.quiet, say=say, threads=None,  # main() applied --threads
                       **placement)  # fmt: skip
    root = study.root
    memory = PeakMemory(root / "peak_rss.json")
    memory.watch(study.job)
    res = study.run(extra=experiment_steps(args, placement), job="slr")
    steps = {
        name: {"wall_s": rec["seconds"], "peak_rss_mib": memory.seen[name]["peak_rss_mib"],
               "status": rec["status"]}
        for name, rec in study.job.log.items()
    }  # fmt: skip
    return res, steps


def docs_results(args: argparse.Namespace, res: dict, steps: dict, previous: dict) -> dict:
    """The study's results in the keys of the Gemma pages (``tools/render_results.py``)."""
    import torch

    from layergraft.checkpoint.provenance import versions

    exp = res["experiment"]
    on_cpu = args.device in (None, "cpu") and not torch.cuda.is_available()
    crc = {}
    for name in ("base", "post", *res["models"]["also"]):
        strict, closers = dict(res["crc"][name]), exp["crc_closers"][name]
        v_end = strict.pop("v_end", None)
        crc[name] = {
            "mean": strict,
            # V, H and H_norm do not depend on how V_end is defined: the closers pass's
            "by_category": {
                c: {k: v for k, v in m.items() if k != "V_end"}
                for c, m in closers.get("by_category", {}).items()
            },
            "v_end": v_end,
            "closers": closers["mean"],
        }
    out: dict[str, Any] = {
        "name": args.name,
        "pair": {
            "base": args.base_note,
            "post": args.post_note,
            "also": list(res["models"]["also"]),
        },
        "settings": {
            "dtype": "float32 (CPU: --dtype auto)" if on_cpu else "--dtype auto",
            "threads": torch.get_num_threads(),
            **res["settings"],
            "ppl": {"tokens": args.ppl_tokens, "seqlen": args.ppl_seqlen},
        },
        "crc": crc,
        "sweep": res["sweep"],
        "selection": res["selection"],
        "picks": docs_picks(res),
        "compare": {task: docs_compare(cr) for task, cr in res["compare"].items()},
    }
    out["verdicts"] = verdicts(out)
    timing = dict(res["timing_s"])
    if args.no_pruning:
        out["pruning"] = previous.get("pruning", {})
        for k, v in (previous.get("steps") or {}).items():
            if k.startswith("prune"):
                steps[k] = {**v, "status": "from the previous run (--no-pruning)"}
                timing[k] = v["wall_s"]
    else:
        out["pruning"] = exp["pruning"]
    out["steps"] = steps
    out["steps_note"] = (
        "every step runs in one process (layergraft's API, the job's steps): wall_s is the job's "
        "timing of the step (a reused step: when it last ran); peak_rss_mib is the process's "
        "peak resident memory when the step ended (ru_maxrss), the peak so far, not the step's own"
    )
    out["timing_s"] = timing
    out["versions"] = versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    out["machine"] = f"{os.cpu_count()} CPU cores, {gpu}"
    return out


def write_docs(docs: Path, work: Path, out: dict[str, Any]) -> None:
    """results.json, the sweep's plots, and the comparison plots drawn again from the docs
    results (so they name the picks as the tables do)."""
    from layergraft.report.compare import render_plots

    docs.mkdir(parents=True, exist_ok=True)
    (docs / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    for name in SWEEP_PLOTS:
        if (work / "sweep" / "out" / name).is_file():
            shutil.copyfile(work / "sweep" / "out" / name, docs / name)
    for task, cr in out["compare"].items():
        plots = work / "docs-plots" / task
        plots.mkdir(parents=True, exist_ok=True)
        for rel in render_plots(cr, plots):
            shutil.copyfile(plots / rel, docs / f"{task}_{Path(rel).name}")


def main(argv: list[str] | None = None) -> None:
    from layergraft.errors import LayergraftError
    from layergraft.models.threads import apply_threads, parse_threads

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
    ap.add_argument("--work", type=Path, required=True, help="the job directory (continued)")
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--limit", type=int, default=10, help="prompts per task")
    ap.add_argument("--max-new-tokens", type=int, metavar="N",
                    help="one token budget for every task (default: the study's BUDGETS per task)")  # fmt: skip
    ap.add_argument("--parts", default="attn,mlp,all")
    ap.add_argument("--alphas", default="0.25,0.5,0.75,1")
    ap.add_argument("--validate", type=int, default=2, help="candidates per family validated")
    ap.add_argument("--validate-samples", type=int, default=4)
    ap.add_argument("--crc-prompts", type=int, help="an even subset of K CRC prompts (default all)")
    ap.add_argument("--no-pruning", action="store_true", help="keep the previous pruning section")
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--ppl-seqlen", type=int, default=1024)
    ap.add_argument("--device", help="where the models run (default: layergraft's choice)")
    ap.add_argument("--threads", type=parse_threads, default="auto",
                    help="torch threads: N or auto (layergraft's rule, as --threads of its "
                    "commands: an exported OMP_NUM_THREADS, else the cores not busy)")  # fmt: skip
    ap.add_argument("--quiet", action="store_true", help="no progress bars or step lines")
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    work, docs = args.work.resolve(), args.docs.resolve()
    args.base, args.post = args.base.resolve(), args.post.resolve()
    also = also_models(args.also)
    previous = (
        json.loads((docs / "results.json").read_text()) if (docs / "results.json").is_file() else {}
    )
    try:
        res, steps = run_study(args, work, also)
    except LayergraftError as e:  # a user's mistake (a bad path, a model that does not open)
        raise SystemExit(f"pipeline.py: {str(e).replace('--out ', '--work ')}") from None
    write_docs(docs, work, docs_results(args, res, steps, previous))
    print(f"wrote {docs / 'results.json'} and the plots", flush=True)


if __name__ == "__main__":
    sys.exit(main())
