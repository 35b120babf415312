"""What chat models emit right after the CRC character, and V_end under both definitions.

Issue 19 asks what "the reply ends" should mean for V_end: a strict definition (the character,
then an end marker) or one that lets a closing mark stand between them ("k." then the end).
This script measures, per model:

* V, V_end strict and V_end with closers (``layergraft crc``'s exact estimator);
* the next-token distribution right after a valid character, weighted by how likely that
  character is: which tokens follow the answer, summed over the 48 bundled prompts.

    python experiments/v_end/measure.py toy=TOY_POST smollm2=PATH.gguf gemma3=experiments/gemma3/work/post \
        --out docs/v_end/results.json

Writes JSON (numbers only; no weights). Float32 on the CPU, one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from layergraft.models.batching import forward_logits, left_pad
from layergraft.models.load import load_with_tokenizer
from layergraft.slr.proxy.crc import crc_exact
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.slr.proxy.crc_scoring import _char_token_ids, encode_chat, pad_id_of
from layergraft.slr.proxy.ends import find_end_markers

#: a character token is followed up when it carries at least this probability
MIN_MASS = 1e-3


def after_character(model, tok, prompts, top: int = 12) -> dict:
    """Mass-weighted next tokens after each valid character token (see module doc)."""
    chars = _char_token_ids(tok, {c for p in prompts for c in p.valid})
    weight: Counter[str] = Counter()
    total = 0.0
    for p in prompts:
        ids = encode_chat(tok, p.prompt)
        first = forward_logits(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        probs = first[0].double().softmax(-1)
        toks = [t for c in p.valid for t in chars[c] if probs[t] >= MIN_MASS]
        if not toks:
            continue
        rows, mask = left_pad([ids + [t] for t in toks], pad_id_of(tok))
        nxt = forward_logits(model, rows, mask).double().softmax(-1)
        for t, dist in zip(toks, nxt, strict=True):
            w = float(probs[t])
            total += w
            vals, idx = dist.topk(top)
            for v, i in zip(vals.tolist(), idx.tolist(), strict=True):
                weight[repr(tok.decode([i]))] += w * v
    return {
        "mass_followed": total / len(prompts),
        "next_tokens": [
            {"token": k, "share": v / total} for k, v in weight.most_common(top)
        ],
    }


def measure(name: str, spec: str) -> dict:
    path, _, tok_path = spec.partition(":")
    t0 = time.perf_counter()
    model, tok, _ = load_with_tokenizer(path, tokenizer=tok_path or None, device="cpu")
    prompts = load_crc_prompts("all")
    ends = find_end_markers(tok, model)
    out = {"model": name, "source": path, "end_markers": ends.as_json()}
    for mode in ("strict", "closers"):
        res = crc_exact(model, tok, prompts, ends=ends, v_end=mode)
        out[mode] = {k: res.mean[k] for k in ("V", "H_norm", "V_end")}
    out["V_end_given_V"] = {m: out[m]["V_end"] / out[m]["V"] for m in ("strict", "closers")}
    out["after_character"] = after_character(model, tok, prompts)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="NAME=PATH[:TOKENIZER]")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {"dtype": "float32", "device": "cpu", "prompts": "all bundled (48)", "models": {}}
    if args.out.is_file():  # add to an earlier run (one model at a time is fine)
        results = json.loads(args.out.read_text())
    for item in args.models:
        name, _, spec = item.partition("=")
        results["models"][name] = measure(name, spec)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(name, json.dumps({k: results["models"][name][k] for k in ("strict", "closers")}))


if __name__ == "__main__":
    main()
