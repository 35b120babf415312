"""An optional model judge of reply quality (off by default).

Why optional and local: a judge is itself a model with its own biases, far slower than the
other metrics, and we never call remote APIs. Give any local Hugging Face model directory:

* a reward model (``*ForSequenceClassification`` with one label, e.g. a Skywork/ArmoRM-style
  RM): the score is the sigmoid of its logit for the chat ``[user: prompt, assistant: reply]``;
* a chat model (``*ForCausalLM`` with a chat template): it is shown :data:`JUDGE_PROMPT` and the
  score is the expected rating under its next-token probabilities of the digits 1..9, mapped
  to [0, 1] as ``(E - 1) / 8``. No sampling: the same judge gives the same scores.

Both are computed with ``transformers``; scores are in [0, 1], higher is better.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from layergraft.errors import InputError

JUDGE_PROMPT = (
    "You are grading a reply written by an AI assistant.\n\n"
    "[User request]\n{prompt}\n\n[Assistant reply]\n{reply}\n\n"
    "How good is the reply: does it do what was asked, is it correct, fluent and on topic? "
    "Rate it from 1 (useless) to 9 (excellent). Answer with a single digit."
)
"""The chat-judge prompt (one user turn; the reply starts right after the generation prompt)."""


class Judge(Protocol):
    """Anything that scores (prompt, reply) pairs in [0, 1]."""

    name: str

    def score(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]: ...


class HFJudge:
    """A local reward model or chat model used as a judge (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu", batch_size: int = 8):
        p = Path(path)
        if not (p / "config.json").is_file():
            raise InputError(
                f"judge {p} is not a model directory (no config.json); give a local HF model"
            )
        import json

        archs = json.loads((p / "config.json").read_text()).get("architectures") or []
        self.kind = "reward" if any("SequenceClassification" in a for a in archs) else "chat"
        self.path, self.device, self.batch_size = p, device, batch_size
        self.name = f"{self.kind}:{p.name}"
        self._model: Any = None
        self._tok: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        cls = AutoModelForSequenceClassification if self.kind == "reward" else AutoModelForCausalLM
        self._model = cls.from_pretrained(str(self.path)).to(self.device).eval()
        self._tok = AutoTokenizer.from_pretrained(str(self.path))
        if not getattr(self._tok, "chat_template", None):
            raise InputError(
                f"judge {self.path} has no chat template; give a chat or reward model that has one"
            )

    def _one(self, prompt: str, reply: str) -> float:
        import torch

        tok, model = self._tok, self._model
        if self.kind == "reward":
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
            text = tok.apply_chat_template(chat, tokenize=False)
            ids = tok(text, return_tensors="pt", add_special_tokens=False).to(self.device)
            with torch.no_grad():
                logit = model(**ids).logits[0, 0].item()
            return 1.0 / (1.0 + math.exp(-logit))
        chat = [{"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, reply=reply)}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        with torch.no_grad():
            logits = model(**ids).logits[0, -1].double()
        digit_ids = [tok.convert_tokens_to_ids(str(d)) for d in range(1, 10)]
        if any(i is None or i == tok.unk_token_id for i in digit_ids):
            raise InputError(
                f"judge {self.path}: its vocabulary lacks single-digit tokens; use another judge"
            )
        p = torch.softmax(logits[digit_ids], dim=-1)
        expected = float((p * torch.arange(1, 10, dtype=torch.float64)).sum())
        return (expected - 1.0) / 8.0

    def score(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        self._load()
        return [self._one(p, r) for p, r in zip(prompts, replies, strict=True)]
