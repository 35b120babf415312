"""Generation jobs: one (prompt, sample) to generate, with the prompt's token ids.

Prompts are rendered with the tokenizer's chat template as one user turn with the assistant
turn opened; the ids a reply stops on are the model's end markers (:mod:`layergraft.gen.ends`).
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
