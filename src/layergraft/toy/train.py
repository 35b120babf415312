"""Training loops for the toy pair: next-character pre-training (BASE) and masked SFT (POST).

Why hand-written loops instead of ``transformers.Trainer``: a build must be reproducible
bit-for-bit from a seed on a CPU, in minutes, with explicit ``torch.Generator`` draws and no
hidden state (dataloader workers, schedulers reading the clock). Both loops fit on a screen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from layergraft.toy.tokenizer import ASSISTANT, END, SPECIAL_TOKENS

NUM_LAYERS = 8


def toy_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> Any:
    """The toy Llama: 8 layers of width 128, untied embeddings (so restoring layer 0 or the
    last layer never silently drags the embedding or head along)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attention_dropout=0.0,
    )


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _optimizer(model: Any, lr: float) -> Any:
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )


def pretrain(
    model: Any,
    ids: Any,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Next-token training on random windows of the 1-D id tensor ``ids``; returns the losses."""
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, lr)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="pre-train base", disable=not progress, mininterval=1.0)
    offs = torch.arange(seq_len + 1)
    for step in bar:
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch_size,), generator=gen)
        x = ids[starts[:, None] + offs]
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup=max(steps // 20, 1))
        out = model(input_ids=x[:, :-1], labels=x[:, :-1].clone())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.detach().item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


def encode_chat(
    tokenizer: Any, conversation: Sequence[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and labels with every non-assistant token masked (-100).

    Why mask: SFT should teach the *answers*; learning to predict the user's text would spend
    the tiny model's capacity on prompts (DESIGN.md: collapse came slowly without it). The
    labels cover each assistant reply and its end-of-turn token, so the model learns to stop.
    """
    ids: list[int] = [tokenizer.bos_token_id]
    labels: list[int] = [-100]
    for msg in conversation:
        head = tokenizer.convert_tokens_to_ids(f"<|{msg['role']}|>")
        body = tokenizer(msg["content"], add_special_tokens=False)["input_ids"]
        end = tokenizer.convert_tokens_to_ids(END)
        ids += [head, *body, end]
        learn = msg["role"] == "assistant"
        labels += [-100] + (body + [end] if learn else [-100] * (len(body) + 1))
    return ids, labels


def sft(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Full fine-tuning on whole conversations (one per row, right-padded, never truncated),
    loss on assistant tokens only; returns the losses."""
    import torch
    from tqdm.auto import tqdm

    encoded = [encode_chat(tokenizer, c) for c in conversations]
    pad = tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, lr)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="SFT post", disable=not progress, mininterval=1.0)
    for step in bar:
        rows = torch.randint(0, len(encoded), (batch_size,), generator=gen).tolist()
        width = max(len(encoded[r][0]) for r in rows)
        x = torch.full((batch_size, width), pad, dtype=torch.long)
        y = torch.full((batch_size, width), -100, dtype=torch.long)
        m = torch.zeros((batch_size, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids, lab = encoded[r]
            x[i, : len(ids)] = torch.tensor(ids)
            y[i, : len(lab)] = torch.tensor(lab)
            m[i, : len(ids)] = 1
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup=max(steps // 20, 1))
        out = model(input_ids=x, attention_mask=m, labels=y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.detach().item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


__all__ = [
    "ASSISTANT",
    "NUM_LAYERS",
    "SPECIAL_TOKENS",
    "encode_chat",
    "pretrain",
    "sft",
    "toy_config",
]
