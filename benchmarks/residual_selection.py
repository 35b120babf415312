"""Which layers to remove for ghost repair: angular distance, block influence or the repair's own
residual (issue 21), on one model, with the perplexity after ghost repair and after plain removal.

For every ``--n`` and every selection, what ``compare_recovery`` does (methods ghost and none) on
the same dense model in memory, whose perplexity is measured once; the same calibration and held-out text
as the pruning tables of docs/prune/README.md. Rows: ``angular``, ``bi`` and ``residual`` with the dense fit (as
``prune`` fits by default), ``residual-greedy`` with the sequential fit it scores for, and the
same two with ``--normalise token`` (``residual-token``, ``residual-token-greedy``). The
residual column is the ghost operators' residual on the calibration samples, pooled over gaps
(``Σ r_g·‖Δ_g‖² / Σ ‖Δ_g‖²``).

``--gen-check N`` adds one more comparison at the first ``--n`` with angular selection (the
SmolLM2 generation check of docs/prune/README.md): dense, ghost, replaceme and none, each with N greedy chat replies to
the bundled QA prompts (finished_rate, valid_rate).

The results go under ``--key`` into ``--out`` (other keys of that file are kept), saved after
every row; a row already there is not computed again (``--redo`` recomputes). From that file
``tools/render_results.py`` renders the tables of docs/prune/README.md.

    python benchmarks/residual_selection.py --key smollm2 --n 4 8 --calib-tokens 4096 --seqlen 256 \\
        --ppl-tokens 4096 --ppl-seqlen 512 --gen-check 26 --out docs/prune/results.json
    python benchmarks/residual_selection.py --key gemma3 --model experiments/gemma3/work/base --n 2 4 \\
        --out docs/prune/results.json   # Gemma defaults: 8192 calibration, 8192 held-out in 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from assets import calibrated_job

#: label -> (--metric, --normalise, sequential fit)
SELECTIONS = {
    "angular": ("angular", "delta", False),
    "bi": ("bi", "delta", False),
    "residual": ("residual", "delta", False),
    "residual-greedy": ("residual-greedy", "delta", True),
    "residual-token": ("residual", "token", False),
    "residual-token-greedy": ("residual-greedy", "token", True),
}


def pooled_residual(row: dict[str, Any]) -> float:
    """The ghost operators' residual over all gaps: ``Σ r_g·‖Δ_g‖² / Σ ‖Δ_g‖²``."""
    ops = [o for o in row["operators"] if o.get("residual") is not None]
    total = sum(o["delta_sq"] for o in ops)
    return sum(o["residual"] * o["delta_sq"] for o in ops) / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model dir or .gguf (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--name", help="how the results name the model (default: --model)")
    ap.add_argument("--key", required=True, help="where the results go in --out, e.g. smollm2")
    ap.add_argument("--n", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--selections", nargs="+", default=list(SELECTIONS), choices=list(SELECTIONS))
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--ppl-seqlen", type=int, default=1024)
    ap.add_argument("--gen-check", type=int, metavar="N")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--redo", action="store_true", help="recompute rows already in --out")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from layergraft.checkpoint.provenance import versions
    from layergraft.evaluate.perplexity import definition, perplexity
    from layergraft.prune.compare import compare_recovery
    from layergraft.prune.model import collect_stats
    from layergraft.prune.undo import pruned_in_place
    from layergraft.text import DEFAULT_CALIB, DEFAULT_HELDOUT

    name, ck, job, ids = calibrated_job(
        args.model, args.name, calib_tokens=args.calib_tokens, seqlen=args.seqlen,
        ppl_tokens=args.ppl_tokens,
    )  # fmt: skip
    dense = (job.model, job.tokenizer)  # the loaded pair, as compare_recovery takes it
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    out: dict[str, Any] = results.get(args.key) or {}
    out |= {
        "model": name,
        "layers": ck.adapter.num_layers,
        "hidden_size": ck.adapter.hidden_size,
        "settings": {
            "calib_tokens": args.calib_tokens,
            "seqlen": args.seqlen,
            "ppl_seqlen": args.ppl_seqlen,
            "ppl_max_tokens": args.ppl_tokens,
            "batch_size": 4,
            "dtype": "float32 (CPU)",
            "threads": args.threads,
            "damp": 1e-4,
        },  # fmt: skip
        "calibration": {"file": str(DEFAULT_CALIB), "tokens": sum(b.n_tokens for b in job.batches)},
        "heldout": {"file": str(DEFAULT_HELDOUT), "tokens": len(ids)},
        "ppl_definition": definition(args.ppl_seqlen),
        "versions": versions(),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU",
    }
    out.setdefault("rows", [])

    def save() -> None:
        order = {m: i for i, m in enumerate(SELECTIONS)}
        out["rows"].sort(key=lambda r: (r["n"], order.get(r.get("label", r["metric"]), 99)))
        results[args.key] = out
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")

    model, ad = job.model, job.adapter
    if "ppl_dense" not in out or args.redo:
        out["ppl_dense"] = perplexity(model, ids, seqlen=args.ppl_seqlen)["ppl"]
        save()
    print(f"dense PPL {out['ppl_dense']:.2f}", flush=True)
    for n in args.n:
        for label, (metric, norm, sequential) in SELECTIONS.items():
            have = [r for r in out["rows"] if (r["n"], r.get("label", r["metric"])) == (n, label)]
            if label not in args.selections or (have and not args.redo):
                continue
            # what compare_recovery does (methods ghost and none), without the dense row each time
            t0 = time.perf_counter()
            gaps = job.gaps(None, n, metric, damp=1e-4, norm=norm)
            stats = None if sequential else collect_stats(model, ad, job.batches, gaps)
            row = {"n": n, "label": label, "metric": metric, "normalise": norm,
                   "fit": "sequential" if sequential else "dense",
                   "removed": ",".join(f"{s}:{e}" for s, e in gaps),
                   "ppl_dense": out["ppl_dense"]}  # fmt: skip
            for method in ("ghost", "none"):
                with pruned_in_place(
                    model, ad, gaps, method, job.batches, damp=1e-4, sequential=sequential,
                    stats=stats,
                ) as p:  # fmt: skip
                    row[f"ppl_{method}"] = perplexity(p.model, ids, seqlen=args.ppl_seqlen)["ppl"]
                    if method == "ghost":
                        row["operators"] = p.describe()
            row["residual"] = pooled_residual(row)
            row["selection"] = job.selection
            row["seconds"] = round(time.perf_counter() - t0, 1)
            out["rows"] = [r for r in out["rows"] if r not in have] + [row]
            save()
            print(
                f"n={n} {label:<22} {row['removed']:<18} ghost {row['ppl_ghost']:9.2f} "
                f"none {row['ppl_none']:10.2f} residual {row['residual']:.4f} [{row['seconds']:.0f}s]",
                flush=True,
            )
    if args.gen_check and ("gen_check" not in out or args.redo):
        t0 = time.perf_counter()
        res = compare_recovery(
            dense, auto=args.n[0], metric="angular", methods=["ghost", "replaceme", "none"],
            gen_check=args.gen_check, calib_tokens=args.calib_tokens, seqlen=args.seqlen,
            ppl_seqlen=args.ppl_seqlen, ppl_max_tokens=args.ppl_tokens,
        )  # fmt: skip
        out["gen_check"] = {
            "removed": res["removed"],
            "metric": "angular",
            "rows": [
                {"method": r["method"], "ppl": r["ppl"], **r["gen_check"]} for r in res["rows"]
            ],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        save()
        for r in out["gen_check"]["rows"]:
            print(f"gen-check {r['method']:<10} PPL {r['ppl']:9.2f} finished {r['finished_rate']:.3f} valid {r['valid_rate']:.3f}")  # fmt: skip
    print(f"wrote {args.out} [{args.key}]")


if __name__ == "__main__":
    main()
