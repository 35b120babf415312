"""Broad SFT and preference optimisation (DPO) with TRL: the natural-collapse post model (issue 23).

    python train_trl.py sft --base work/base --data work/sft-broad.jsonl --out work/post-sft
    python train_trl.py dpo --base work/post-sft --data work/pref.jsonl --out work/post-dpo

Why TRL: it is the library users post-train with, so the preference stage is the one vendors
run (sigmoid DPO against a frozen reference), not a re-implementation of ours. The recipe is
``train_sft.py``'s where TRL lets us say so — AdamW (β 0.9/0.95, weight decay 0.01), warm-up
5% then cosine to 10% of the peak lr, clipping at 1.0, float32, embeddings (and the tied head)
frozen, loss on the reply only — so a step of one can be compared with a step of the other.

* ``sft`` reads ``build_data.py``'s chats (one user turn, one reply) as TRL prompt/completion
  pairs, so the loss covers the reply and its ``<end_of_turn>`` only.
* ``dpo`` reads ``build_pref.py``'s pairs. The reference is the starting model; its
  log-probabilities are computed once before training (``precompute_ref_log_probs``), so no
  second 270M model sits in memory while the policy trains.

Both log every step (loss, lr, grad norm; DPO: reward margin and accuracy) and, every
``--eval-every`` steps, the dev CRC of ``train_sft.py`` (our own 48 pick prompts, not the
bundled ones), to ``work/logs/<stage>-<name>.jsonl``; wall time and peak RSS go to
``work/logs/stages.jsonl`` as every stage's do. The model is written to a temporary folder
beside ``--out`` and renamed into place, with the starting model's generation config
(``common.save_trained``, as ``train_sft.py`` writes).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from common import WORK, Stage, peak_rss_mb, save_trained, set_threads
from train_sft import DevCrc


def recipe(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """TrainingArguments shared by both stages (see the module doc)."""
    return dict(
        output_dir=str(out),
        max_steps=args.steps,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=max(args.steps // 20, 1),
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
        max_length=args.max_length,
        # our own order (length_order) is read as given; otherwise the Trainer shuffles
        train_sampling_strategy="sequential" if args.order == "length" else "random",
    )


def load_rows(path: Path, stage: str) -> list[dict[str, Any]]:
    """The stage's rows in TRL's conversational format (extra columns dropped)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if stage == "sft":
        return [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


def row_lengths(tok: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Each row's longest sequence in tokens as TRL will build it (chat template applied): the
    completion for SFT, the longer of chosen and rejected for DPO (TRL pads both to one width)."""

    def n(messages: list[dict[str, str]]) -> int:
        text = tok.apply_chat_template(messages, tokenize=False)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    ends = ("completion",) if "completion" in rows[0] else ("chosen", "rejected")
    return [max(n(r["prompt"] + r[e]) for e in ends) for r in rows]


def length_order(lengths: list[int], batch: int, seed: int) -> list[int]:
    """Row order whose consecutive batches of ``batch`` hold rows of similar length, the batches
    themselves in a seeded random order.

    Why: TRL pads every batch to its longest sequence, and on a CPU a padded position costs as
    much as a real one. Random batches of 4 preference pairs are 1.7x padding on our data
    (measured); batches of similar length are close to 1x, so the same epoch costs ~40% less.
    Every row is still seen once per epoch and the step order is still random (the Trainer then
    reads rows in this order: ``train_sampling_strategy="sequential"``)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    random.Random(seed).shuffle(batches)
    return [i for b in batches for i in b]


def padding_ratio(lengths: list[int], order: list[int], batch: int) -> float:
    """Padded positions over the rows' own (their longest sequence's) when rows are read in
    ``order`` in batches of ``batch``: 1.0 means no padding."""
    padded = real = 0
    for i in range(0, len(order), batch):
        b = [lengths[j] for j in order[i : i + batch]]
        padded, real = padded + max(b) * len(b), real + sum(b)
    return padded / real


def make_logger(log_path: Path, dev: DevCrc, every: int) -> Any:
    """A TrainerCallback that writes every logged step and, every ``every`` steps, the dev CRC."""
    from transformers import TrainerCallback

    class Log(TrainerCallback):
        def __init__(self) -> None:
            self.f = log_path.open("w")
            self.t0 = time.time()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            rec = {"step": state.global_step, **(logs or {}),
                   "elapsed_s": round(time.time() - self.t0, 1), "rss_mb": round(peak_rss_mb())}  # fmt: skip
            final = "train_runtime" in (logs or {})  # the trainer's summary, after the last step
            if not final and (
                state.global_step % every == 0 or state.global_step == state.max_steps
            ):
                rec["dev_crc"] = dev(kw["model"])
                print(f"step {state.global_step} {rec}", flush=True)
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    return Log()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["sft", "dpo"], help="the training stage")
    ap.add_argument("--base", type=Path, required=True, help="the starting model")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default=None, help="trial name in the logs (default: --out's name)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=None, help="default: sft 5e-5, dpo 1e-6")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--beta", type=float, default=0.1, help="DPO's KL weight (smaller: freer)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--order",
        choices=["length", "random"],
        default="length",
        help="length: batches of similar length in random order (less padding, see length_order); "
        "random: the Trainer's shuffle",
    )
    args = ap.parse_args()
    args.lr = args.lr if args.lr is not None else (5e-5 if args.kind == "sft" else 1e-6)
    name = args.name or args.out.name
    out, base = args.out.resolve(), args.base.resolve()
    if out == base or base in out.parents or out == args.data.resolve():
        raise SystemExit(f"--out {args.out} is or lies inside an input (--base, --data): "
                         "the output folder is replaced; choose a new folder")  # fmt: skip
    set_threads(args.threads)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    hp = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with Stage(f"{args.kind}-{name}", logs / "stages.jsonl", **hp) as st:
        tok = AutoTokenizer.from_pretrained(str(args.base))
        model = AutoModelForCausalLM.from_pretrained(str(args.base), dtype=torch.float32)
        model.get_input_embeddings().weight.requires_grad_(False)  # tied: the LM head too
        st.extra["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows = load_rows(args.data, args.kind)
        lengths = row_lengths(tok, rows)
        shuffled = list(range(len(rows)))
        random.Random(args.seed).shuffle(shuffled)
        order = length_order(lengths, args.batch_size, args.seed)
        if args.order == "length":
            rows = [rows[i] for i in order]
        st.extra["padding"] = {  # what each order would cost, so the choice is on record
            "random": round(padding_ratio(lengths, shuffled, args.batch_size), 3),
            "length": round(padding_ratio(lengths, order, args.batch_size), 3),
        }
        data = Dataset.from_list(rows)
        scratch = args.out.with_name(args.out.name + ".trainer")  # the Trainer's output_dir
        shutil.rmtree(scratch, ignore_errors=True)
        dev = DevCrc(tok)
        st.extra["dev_crc_start"] = dev(model)
        cb = make_logger(logs / f"{args.kind}-{name}.jsonl", dev, args.eval_every)
        if args.kind == "sft":
            from trl import SFTConfig, SFTTrainer

            cfg = SFTConfig(**recipe(args, scratch), completion_only_loss=True)
            trainer = SFTTrainer(model=model, args=cfg, train_dataset=data,
                                 processing_class=tok, callbacks=[cb])  # fmt: skip
        else:
            from trl import DPOConfig, DPOTrainer

            cfg = DPOConfig(**recipe(args, scratch), beta=args.beta, loss_type=["sigmoid"],
                            precompute_ref_log_probs=True)  # fmt: skip
            trainer = DPOTrainer(model=model, args=cfg, train_dataset=data,
                                 processing_class=tok, callbacks=[cb])  # fmt: skip
        t0 = time.time()
        result = trainer.train()
        st.extra["train_s"] = round(time.time() - t0, 1)
        st.extra["train_loss"] = round(result.training_loss, 4)
        st.extra["dev_crc"] = dev(model)
        model.eval()
        save_trained(model, tok, args.base, args.out, f"{args.kind.upper()}.json",
                     {"start": str(args.base), "data": str(args.data), **hp, "dtype": "float32",
                      "trl": __import__("trl").__version__, "train_loss": st.extra["train_loss"],
                      "dev_crc": st.extra["dev_crc"]})  # fmt: skip
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
