"""Generation jobs: one (prompt, sample) to generate, with the prompt's token ids.

Prompts are rendered with the tokenizer's chat template as one user turn with the assistant
turn opened; the end-of-turn tokens a chat model stops on come from its generation config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.tasks import TaskPrompt


@dataclass(frozen=True)
class Job:
    prompt: TaskPrompt
    sample: int
    ids: tuple[int, ...]


def chat_prompt_ids(tokenizer: Any, text: str, *, chat_template: bool = True) -> list[int]:
    """Token ids of ``text`` as a user turn, with the assistant turn opened.

    Why render to a string first: the template already writes BOS and other special tokens, so
    the string is encoded with ``add_special_tokens=False`` (no double BOS).
    """
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(
                "the tokenizer has no chat template; give a tokenizer that has one "
                "(--tokenizer, e.g. the post model's) or pass --no-chat-template"
            )
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the model's generation config (chat models often stop on an end-of-turn
    token there) plus the tokenizer's EOS."""
    ids: list[int] = []
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    for src in (eos, getattr(tokenizer, "eos_token_id", None)):
        if src is None:
            continue
        for i in [src] if isinstance(src, int) else list(src):
            if i not in ids:
                ids.append(int(i))
    return ids


def pending_jobs(
    tokenizer: Any,
    prompts: Sequence[TaskPrompt],
    n: int,
    done: set[tuple[str, int]],
    *,
    chat_template: bool = True,
) -> list[Job]:
    """Jobs not yet in ``done``, in (prompt, sample) order; prompts are tokenized once."""
    jobs = []
    for p in prompts:
        missing = [s for s in range(n) if (p.id, s) not in done]
        if not missing:
            continue
        ids = tuple(chat_prompt_ids(tokenizer, p.prompt, chat_template=chat_template))
        jobs.extend(Job(p, s, ids) for s in missing)
    return jobs
