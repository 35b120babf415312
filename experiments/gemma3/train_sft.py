"""Supervised fine-tuning of the Gemma-3-270M base into the post model (``work/post``).

As the toy post model was made (layergraft/toy/train.py): whole conversations, one per row,
never truncated, loss on the assistant tokens only (reply + ``<end_of_turn>``), AdamW with
warm-up and a cosine decay, gradient clipping at 1, an explicit seed for every draw.

What differs, and why:

* **Embeddings frozen** (and with them the tied LM head): 168 M of the 268 M parameters are
  the 262,144 x 640 embedding; freezing it saves its gradient and AdamW state (~2 GB) and
  keeps the vocabulary geometry of the base. All 18 decoder layers and the final norm train.
* **LM head only at answer positions**: the full head costs 262k x 640 MACs per position,
  about as much as the whole decoder stack, so logits are computed only where a label is.
* **Length-bucketed batches under a token budget**: short pick examples (~40 tokens) and
  SmolLM2 replies (~200 tokens) would waste most of a padded batch if mixed; each epoch is a
  seeded permutation, cut into groups of 64 sorted by length, packed into batches of at most
  ``--max-rows`` rows and ``--token-budget`` padded tokens, then the batches are shuffled.
* **Dev CRC every ``--eval-every`` steps** on 48 pick prompts from format_data.py's own
  templates (seed 999, *not* the bundled CRC prompts), to see the collapse while it happens.

Weights are saved with ``save_pretrained`` in float32 (training ran in float32; the base is
float32 too), with the base's config (``layer_types`` included), tokenizer, chat template and
generation config.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

from common import WORK, Stage, peak_rss_mb, save_trained, set_threads
from format_data import pick_item


def encode(tok: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of one conversation and labels that keep only the assistant reply and its
    ``<end_of_turn>`` (the template's trailing newline is not learned: generation stops first)."""
    prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)
    full = tok.apply_chat_template(messages, tokenize=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    full = full["input_ids"] if hasattr(full, "keys") else full
    assert full[: len(prompt)] == prompt, "chat template is not prefix-stable"
    assert full[-2] == tok.convert_tokens_to_ids("<end_of_turn>"), full[-3:]
    labels = [-100] * len(prompt) + full[len(prompt) : -1] + [-100]
    return list(full), labels


def make_batches(
    lengths: list[int], rng: random.Random, max_rows: int, budget: int
) -> list[list[int]]:
    """One epoch of length-bucketed batches (see the module doc)."""
    perm = list(range(len(lengths)))
    rng.shuffle(perm)
    batches: list[list[int]] = []
    for g in range(0, len(perm), 64):
        group = sorted(perm[g : g + 64], key=lambda i: lengths[i])
        cur: list[int] = []
        for i in group:
            width = max([lengths[j] for j in cur] + [lengths[i]])
            if cur and (len(cur) + 1 > max_rows or (len(cur) + 1) * width > budget):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


class DevCrc:
    """CRC V / H_norm on our own 48 pick prompts (first answer token, exact), cheaply:
    one forward over the prompts, head applied to the last position only."""

    def __init__(self, tok: Any, seed: int = 999, n: int = 48) -> None:
        import torch

        rng = random.Random(seed)
        items = [pick_item(rng) for _ in range(n)]
        seqs = [tok.apply_chat_template([{"role": "user", "content": p}],
                                        add_generation_prompt=True, tokenize=True)
                for p, _, _ in items]  # fmt: skip
        seqs = [s["input_ids"] if hasattr(s, "keys") else s for s in seqs]
        width = max(map(len, seqs))
        self.ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
        self.mask = torch.zeros((n, width), dtype=torch.long)
        for r, s in enumerate(seqs):  # left-padded; positions from the mask
            self.ids[r, width - len(s) :] = torch.tensor(s)
            self.mask[r, width - len(s) :] = 1
        self.pos = (self.mask.cumsum(1) - 1).clamp(min=0)
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        chars = {c for _, s, _ in items for c in s}
        self.char_ids = {c: [i for i, t in enumerate(vocab) if t.replace("\u2581", " ").strip() == c]
                         for c in chars}  # fmt: skip
        self.valid = [s for _, s, _ in items]

    def __call__(self, model: Any) -> dict[str, float]:
        import torch

        was_training = model.training
        model.eval()
        with torch.no_grad():
            h = model.model(input_ids=self.ids, attention_mask=self.mask,
                            position_ids=self.pos).last_hidden_state[:, -1]  # fmt: skip
            p = torch.softmax((h @ model.lm_head.weight.T).double(), -1)
        model.train(was_training)
        vs, hs = [], []
        for r, valid in enumerate(self.valid):
            mass = [float(p[r, self.char_ids[c]].sum()) for c in valid]
            v = sum(mass)
            q = [m / v for m in mass if m > 0]
            vs.append(v)
            hs.append(-sum(x * math.log(x) for x in q) / math.log(len(valid)))
        return {"V": sum(vs) / len(vs), "H_norm": sum(hs) / len(hs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=WORK / "base")
    ap.add_argument("--data", type=Path, default=WORK / "sft.jsonl")
    ap.add_argument("--out", type=Path, default=WORK / "post")
    ap.add_argument("--name", default="post", help="trial name in the logs")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-rows", type=int, default=16)
    ap.add_argument("--token-budget", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    log_path = WORK / "logs" / f"sft-{args.name}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    hp = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    with Stage(f"sft-{args.name}", WORK / "logs" / "stages.jsonl", **hp) as st:
        tok = AutoTokenizer.from_pretrained(str(args.base))
        model = AutoModelForCausalLM.from_pretrained(str(args.base), dtype=torch.float32)
        model.model.embed_tokens.weight.requires_grad_(False)  # tied: the LM head too
        params = [p for p in model.parameters() if p.requires_grad]
        st.extra["trainable"] = sum(p.numel() for p in params)
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, betas=(0.9, 0.95))  # fmt: skip
        rows = [json.loads(line) for line in args.data.read_text().splitlines()]
        enc = [encode(tok, r["messages"]) for r in rows]
        lengths = [len(ids) for ids, _ in enc]
        dev = DevCrc(tok)
        d0 = dev(model)
        print(f"step 0 dev CRC {d0}", flush=True)
        log.write(json.dumps({"step": 0, "dev_crc": d0}) + "\n")
        rng = random.Random(args.seed)
        queue: list[list[int]] = []
        head = model.lm_head.weight
        pad = tok.pad_token_id
        model.train()
        t0 = time.time()
        losses: list[float] = []
        for step in range(args.steps):
            if not queue:
                queue = make_batches(lengths, rng, args.max_rows, args.token_budget)
            rows_b = queue.pop()
            width = max(lengths[i] for i in rows_b)
            x = torch.full((len(rows_b), width), pad, dtype=torch.long)
            y = torch.full((len(rows_b), width), -100, dtype=torch.long)
            m = torch.zeros((len(rows_b), width), dtype=torch.long)
            for r, i in enumerate(rows_b):  # right padding: positions are 0..len-1 as is
                ids, lab = enc[i]
                x[r, : len(ids)] = torch.tensor(ids)
                y[r, : len(lab)] = torch.tensor(lab)
                m[r, : len(ids)] = 1
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args.steps, args.lr, warmup=max(args.steps // 20, 1))
            ts = time.time()
            h = model.model(input_ids=x, attention_mask=m).last_hidden_state[:, :-1]
            target = y[:, 1:]
            sel = target != -100
            logits = h[sel] @ head.T  # head only where a label is
            loss = F.cross_entropy(logits.float(), target[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            rec = {"step": step + 1, "loss": round(loss.item(), 4), "rows": len(rows_b),
                   "width": width, "label_tokens": int(sel.sum()), "grad_norm": round(float(gnorm), 3),
                   "lr": opt.param_groups[0]["lr"], "step_s": round(time.time() - ts, 2),
                   "elapsed_s": round(time.time() - t0, 1), "rss_mb": round(peak_rss_mb())}  # fmt: skip
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                rec["dev_crc"] = dev(model)
                rec["loss_avg"] = round(
                    sum(losses[-args.eval_every :]) / len(losses[-args.eval_every :]), 4
                )
                print(f"step {step + 1} loss_avg {rec['loss_avg']} dev CRC {rec['dev_crc']} "
                      f"elapsed {rec['elapsed_s']}s rss {rec['rss_mb']}MB", flush=True)  # fmt: skip
            log.write(json.dumps(rec) + "\n")
            log.flush()
        model.eval()
        st.extra["final_loss_avg20"] = round(sum(losses[-20:]) / len(losses[-20:]), 4)
        st.extra["dev_crc"] = rec["dev_crc"]
        st.extra["train_s"] = round(time.time() - t0, 1)
        save_trained(model, tok, args.base, args.out, "SFT.json",
                     {"base": str(args.base), "data": str(args.data), **hp, "dtype": "float32",
                      "final_loss_avg20": st.extra["final_loss_avg20"],
                      "dev_crc": rec["dev_crc"]})  # fmt: skip


if __name__ == "__main__":
    main()
