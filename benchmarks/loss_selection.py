"""Selection by the repaired model's loss (issue 35) against block influence, angular distance and
the residual: the layers each picks, the held-out perplexity after ghost repair, the time each
selection took (side by side, one process, one torch thread), and for ``--oracle N`` every
contiguous block of N layers removed and ghost-repaired in turn (the oracle), with each pick's rank.

Selections: ``bi``, ``angular``, ``residual`` and ``loss`` fitted densely (as ``prune`` does by
default), ``loss-holdout`` (the same loss on the first rows, each candidate's ghost fitted on the
rows after them: ``holdout=True`` of :func:`~layergraft.prune.repaired.loss_scores`),
``loss-greedy`` with the sequential fit it scores for. ``loss-greedy`` is run step by
step to the largest ``--n`` (its choice at step k does not depend on how many steps follow, so
the row of a smaller N is the first N steps, timed as those steps). Perplexity is token-level
over fixed-length chunks of the held-out text (the pruning papers' definition), as in
docs/prune/README.md.

The oracle takes the ghost of every block from one Gram pass over the calibration batches and
runs the held-out chunks through the repaired model from the block on
(:class:`layergraft.prune.repaired.HeldIn`): the same number as ``perplexity`` of the pruned
model (checked against it for every contiguous pick, to 1e-6 relative), without rebuilding the
model per block.

Results go under ``--key`` into ``--out`` (other keys kept), saved after every row; a row
already there is not computed again (``--redo`` recomputes). ``tools/render_results.py``
renders the tables of docs/prune/README.md from that file.

    OMP_NUM_THREADS=1 python benchmarks/loss_selection.py --key smollm2 --n 4 8 --oracle 4 \\
        --out docs/prune/loss_selection.json
    OMP_NUM_THREADS=1 python benchmarks/loss_selection.py --key gemma3 --model experiments/gemma3/work/base \\
        --n 4 8 --out docs/prune/loss_selection.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from assets import calibrated_job
from residual_oracle import spearman

ORDER = ("bi", "angular", "residual", "loss", "loss-holdout", "loss-greedy")
DAMP = 1e-4


def rank(out: dict[str, Any]) -> dict[str, Any]:
    """Each pick against the oracle of its removal: its rank among the contiguous blocks
    (1 + blocks with a lower PPL after ghost), and each score's Spearman correlation with it."""
    key = {lb: i for i, lb in enumerate(ORDER)}
    out["rows"].sort(key=lambda r: (r["n"], key[r["label"]]))
    for n, orc in out["oracle"].items():
        values = sorted(orc["ppl_ghost"].values())
        for r in out["rows"]:
            if str(r["n"]) == n:
                r["oracle_rank"] = 1 + sum(v < r["ppl_ghost"] * (1 - 1e-9) for v in values)
                if r["removed"] in orc["ppl_ghost"]:
                    ref = orc["ppl_ghost"][r["removed"]]
                    r["oracle_ppl"] = ref
                    assert abs(ref - r["ppl_ghost"]) <= 1e-6 * ref, (
                        r["removed"],
                        ref,
                        r["ppl_ghost"],
                    )
        blocks = list(orc["ppl_ghost"])
        truth = [orc["ppl_ghost"][b] for b in blocks]
        corr = {
            m: spearman([orc["scores"][m][b] for b in blocks], truth) for m in ("angular", "bi")
        }
        for label in ("residual", "loss", "loss-holdout"):
            row = next((r for r in out["rows"] if str(r["n"]) == n and r["label"] == label), None)
            if row is not None:
                corr[label] = spearman([row["scores"][b] for b in blocks], truth)
        orc["spearman_vs_ghost_ppl"] = corr
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model dir or .gguf (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--name", help="how the results name the model (default: --model)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--n", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--selections", nargs="*", default=list(ORDER), choices=ORDER)
    ap.add_argument("--oracle", type=int, nargs="*", default=[], metavar="N")
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--ppl-seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--greedy-rows", type=int, help="held-in rows of loss-greedy (default: the metric's own)"
    )
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--merge", type=Path, nargs="+", metavar="JSON",
        help="no run: merge the --key results of these files (runs split over processes) into --out, rank",
    )  # fmt: skip
    args = ap.parse_args()
    if args.merge:
        results = json.loads(args.out.read_text()) if args.out.is_file() else {}
        out = results.get(args.key) or {}
        for path in args.merge:
            part = json.loads(path.read_text())[args.key]
            rows = out.get("rows", []) + part.pop("rows", [])
            oracle = {**out.get("oracle", {}), **part.pop("oracle", {})}
            out = {**part, **out, "rows": rows, "oracle": oracle}
        results[args.key] = rank(out)
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        return

    import torch

    torch.set_num_threads(args.threads)
    from layergraft.checkpoint.provenance import versions
    from layergraft.evaluate.perplexity import definition, perplexity
    from layergraft.prune.calibrate import collect_gap_stats
    from layergraft.prune.cut import merge_adjacent
    from layergraft.prune.importance import block_scores
    from layergraft.prune.recover import fit_ghost
    from layergraft.prune.repaired import HELDIN_ROWS, HeldIn, loss_selection, loss_step
    from layergraft.prune.undo import pruned_in_place
    from layergraft.ranges import format_ranges
    from layergraft.text import DEFAULT_CALIB, DEFAULT_HELDOUT, Batch

    name, _, job, ids = calibrated_job(
        args.model, args.name, calib_tokens=args.calib_tokens, seqlen=args.seqlen,
        ppl_tokens=args.ppl_tokens,
    )  # fmt: skip
    model, ad, batches = job.model, job.adapter, job.batches
    L = len(ad.layers(model))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    out: dict[str, Any] = results.get(args.key) or {}
    out |= {
        "model": name, "layers": L, "hidden_size": ad.hidden_size,
        "settings": {"calib_tokens": args.calib_tokens, "seqlen": args.seqlen, "ppl_seqlen": args.ppl_seqlen,
                     "ppl_max_tokens": args.ppl_tokens, "batch_size": 4, "dtype": "float32 (CPU)",
                     "threads": args.threads, "damp": DAMP, "heldin_rows": HELDIN_ROWS},
        "calibration": {"file": str(DEFAULT_CALIB), "tokens": sum(b.n_tokens for b in batches)},
        "heldout": {"file": str(DEFAULT_HELDOUT), "tokens": len(ids)},
        "ppl_definition": definition(args.ppl_seqlen),
        "versions": versions(),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}, shared with other jobs), no GPU",
    }  # fmt: skip
    out.setdefault("rows", [])
    out.setdefault("oracle", {})

    def save() -> None:
        out["rows"].sort(key=lambda r: (r["n"], ORDER.index(r["label"])))
        results[args.key] = out
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")

    def have(n: int, label: str) -> bool:
        return not args.redo and any((r["n"], r["label"]) == (n, label) for r in out["rows"])

    def ppl_after(gaps: list, sequential: bool) -> float:
        with pruned_in_place(model, ad, gaps, "ghost", batches, damp=DAMP, sequential=sequential) as p:  # fmt: skip
            return perplexity(p.model, ids, seqlen=args.ppl_seqlen)["ppl"]

    def add(row: dict[str, Any]) -> None:
        out["rows"] = [r for r in out["rows"] if (r["n"], r["label"]) != (row["n"], row["label"])]
        out["rows"].append(row)
        save()
        print(f"n={row['n']} {row['label']:<12} {row['removed']:<24} ghost {row['ppl_ghost']:9.2f} "
              f"selection {row['seconds']:7.1f}s", flush=True)  # fmt: skip

    if "ppl_dense" not in out or args.redo:
        out["ppl_dense"] = perplexity(model, ids, seqlen=args.ppl_seqlen)["ppl"]
        save()
    print(f"dense PPL {out['ppl_dense']:.2f}", flush=True)
    for n in args.n:
        for label in ("bi", "angular", "residual", "loss", "loss-holdout"):
            if label not in args.selections or have(n, label):
                continue
            t0 = time.perf_counter()
            if label == "loss-holdout":
                gaps, job.selection = loss_selection(model, ad, batches, n, "loss", damp=DAMP, holdout=True)  # fmt: skip
            else:
                gaps = job.gaps(None, n, label, damp=DAMP)
            secs = time.perf_counter() - t0
            row = {"n": n, "label": label, "fit": "dense", "removed": format_ranges(gaps),
                   "seconds": round(secs, 1), "ppl_ghost": ppl_after(gaps, False)}  # fmt: skip
            sel = job.selection or {}
            if label in ("residual", "loss", "loss-holdout"):
                row["scores"] = {b["range"]: b["score"] for b in sel["scores"]}
            if label.startswith("loss"):
                row["heldin_tokens"], row["dense_loss"] = sel["heldin_tokens"], sel["dense_loss"]
            add(row)

    # the oracle: every contiguous block of N removed and ghost-repaired, held-out PPL
    chunks = [ids[i : i + args.ppl_seqlen] for i in range(0, len(ids) - args.ppl_seqlen + 1, args.ppl_seqlen)]  # fmt: skip
    for n in args.oracle:
        if str(n) in out["oracle"] and not args.redo:
            continue
        t0 = time.perf_counter()
        held = HeldIn(model, ad, [Batch(torch.tensor(chunks), torch.ones(len(chunks), args.ppl_seqlen, dtype=torch.long))])  # fmt: skip
        blocks = [(s, s + n) for s in range(L - n + 1)]
        ppl = {}
        for st in collect_gap_stats(model, ad, batches, blocks):
            ppl[f"{st.start}:{st.end}"] = math.exp(held.loss(fit_ghost(st, DAMP), st.start, st.end))
            print(f"oracle {n}: {st.start}:{st.end} {ppl[f'{st.start}:{st.end}']:.2f}", flush=True)
        scores = {m: {f"{s}:{e}": v for (s, e), v in block_scores(model, ad, batches, block=n, metric=m).blocks}
                  for m in ("angular", "bi")}  # fmt: skip
        out["oracle"][str(n)] = {"ppl_ghost": ppl, "dense_ppl": math.exp(held.loss(None, 0, 0)),
                                 "scores": scores, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        save()

    if "loss-greedy" in args.selections and not all(have(n, "loss-greedy") for n in args.n):
        chosen: list[int] = []
        steps, total = [], 0.0
        for k in range(max(args.n)):
            t0 = time.perf_counter()
            scored = loss_step(
                model, ad, batches, chosen, damp=DAMP, rows=args.greedy_rows or HELDIN_ROWS
            )
            best = min(scored, key=lambda c: (c["score"], c["layer"]))
            total += time.perf_counter() - t0
            chosen.append(best["layer"])
            steps.append({"layer": best["layer"], "gap": best["gap"], "loss": best["score"],
                          "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
            print(
                f"loss-greedy step {k + 1}: layer {best['layer']} loss {best['score']:.4f}",
                flush=True,
            )
            if k + 1 in args.n:
                gaps = merge_adjacent([(i, i + 1) for i in chosen])
                add({"n": k + 1, "label": "loss-greedy", "fit": "sequential", "removed": format_ranges(gaps),
                     "seconds": round(total, 1), "ppl_ghost": ppl_after(gaps, True), "steps": list(steps),
                     "heldin_rows": args.greedy_rows or HELDIN_ROWS})  # fmt: skip

    rank(out)
    save()
    print(f"wrote {args.out} [{args.key}]")


if __name__ == "__main__":
    main()
