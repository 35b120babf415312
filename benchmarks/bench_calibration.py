"""Calibration cost, measured side by side in one run (no downloads: a random Llama).

1. Peak RSS of calibration at 8N vs N tokens, each in a fresh subprocess (goal <= 1.1x:
   the statistics are O(d²) whatever the token count, and batches stream).
2. Wall time of calibration (hooks + float64 Grams for one gap) vs a plain forward pass of
   the model truncated after the gap's last boundary, over the same tokens (goal <= 1.3x).

Usage: python benchmarks/bench_calibration.py [--hidden 512] [--layers 8] [--tokens 4096]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def build(hidden: int, layers: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        num_hidden_layers=layers,
        vocab_size=8192,
        max_position_embeddings=4096,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def batches(n_tokens: int, seqlen: int, batch_size: int, seed: int = 0):
    import torch

    from layergraft.text import Batch

    g = torch.Generator().manual_seed(seed)
    rows = n_tokens // seqlen
    out = []
    for i in range(0, rows, batch_size):
        b = min(batch_size, rows - i)
        out.append(
            Batch(
                torch.randint(0, 8192, (b, seqlen), generator=g),
                torch.ones(b, seqlen, dtype=torch.long),
            )
        )
    return out


def child(args: argparse.Namespace) -> None:
    """Run calibration only and report peak RSS (KiB) as JSON."""
    import torch

    from layergraft.arch import adapter_for_model
    from layergraft.prune.calibrate import collect_gap_stats

    torch.set_grad_enabled(False)
    model = build(args.hidden, args.layers)
    ad = adapter_for_model(model)
    bs = batches(args.child_tokens, args.seqlen, args.batch_size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    st = collect_gap_stats(model, ad, bs, [(args.layers // 2 - 1, args.layers // 2 + 1)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tokens": st[0].n, "rss_before_kib": before, "peak_rss_kib": peak}))


def timing(args: argparse.Namespace) -> dict:
    import torch

    from layergraft.arch import adapter_for_model
    from layergraft.models.batching import position_ids
    from layergraft.prune.calibrate import collect_gap_stats

    torch.set_grad_enabled(False)
    model = build(args.hidden, args.layers)
    ad = adapter_for_model(model)
    s, e = args.layers // 2 - 1, args.layers // 2 + 1
    bs = batches(args.tokens, args.seqlen, args.batch_size, seed=1)

    def plain():
        # the truncated model: the decoder with only the first e layers, no final norm / head
        full = model.model.layers
        model.model.layers = full[:e]
        model.config.num_hidden_layers = e
        try:
            for b in bs:
                h = model.model.embed_tokens(b.input_ids)
                pos = position_ids(b.attention_mask)
                pe = model.model.rotary_emb(h, pos)
                from transformers.masking_utils import create_causal_mask

                mask = create_causal_mask(
                    config=model.config, inputs_embeds=h, attention_mask=b.attention_mask,
                    past_key_values=None, position_ids=pos,
                )  # fmt: skip
                for layer in model.model.layers:
                    h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
        finally:
            model.model.layers = full
            model.config.num_hidden_layers = args.layers

    def calib():
        collect_gap_stats(model, ad, bs, [(s, e)])

    plain()
    calib()  # warm up both
    t_plain, t_calib = [], []
    for _ in range(args.repeats):  # interleaved, best of N: fair on a shared machine
        t0 = time.perf_counter()
        plain()
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        calib()
        t_calib.append(time.perf_counter() - t0)
    return {"plain_s": min(t_plain), "calib_s": min(t_calib), "gap": f"{s}:{e}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4096, help="N for the RSS test and the timing")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_tokens:
        child(args)
        return
    rss = {}
    for mult in (1, 8):
        cmd = [sys.executable, __file__, "--hidden", str(args.hidden), "--layers", str(args.layers),
               "--seqlen", str(args.seqlen), "--batch-size", str(args.batch_size),
               "--child-tokens", str(args.tokens * mult)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rss[mult] = json.loads(out.strip().splitlines()[-1])
    t = timing(args)
    r_rss = rss[8]["peak_rss_kib"] / rss[1]["peak_rss_kib"]
    r_t = t["calib_s"] / t["plain_s"]
    print(
        f"model: random Llama d={args.hidden}, {args.layers} layers; gap {t['gap']}; seqlen {args.seqlen}, batch {args.batch_size}"
    )
    print(f"peak RSS  N={rss[1]['tokens']:>7} tokens: {rss[1]['peak_rss_kib'] / 1024:8.1f} MiB")
    print(f"peak RSS 8N={rss[8]['tokens']:>7} tokens: {rss[8]['peak_rss_kib'] / 1024:8.1f} MiB")
    print(f"RSS ratio 8N/N: {r_rss:.3f}  (goal <= 1.1)")
    print(
        f"calibration {t['calib_s']:.3f} s vs plain truncated forward {t['plain_s']:.3f} s over {args.tokens} tokens"
    )
    print(f"time ratio: {r_t:.3f}  (goal <= 1.3)")
    print(json.dumps({"rss_ratio": r_rss, "time_ratio": r_t, "rss": rss, "timing": t}))


if __name__ == "__main__":
    main()
