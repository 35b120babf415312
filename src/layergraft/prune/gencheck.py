"""``prune --compare --gen-check N``: does the pruned chat model still chat?

Why: perplexity on held-out prose says how well a pruned model predicts text, not whether a
chat model still answers the question in its turn and then stops. A few short replies per
recovery method answer that cheaply: the first ``N`` prompts of the bundled QA set ("Name one
color.", ...), rendered with the model's chat template, one greedy reply each (deterministic:
the model's most likely reply, no seed to vary), at most :data:`GEN_TOKENS` new tokens.

* ``finished_rate``: replies that end with an end-of-turn / EOS token within the budget;
* ``valid_rate``: replies whose answer is one of the prompt's valid answers
  (:func:`layergraft.gen.metrics.quality.qa_validity`), the mean over prompts;
* ``empty_rate``: replies with no text at all — a model that ends its turn at once counts as
  finished, so this says how much of ``finished_rate`` is silence.

Generation, records and metrics are :mod:`layergraft.gen`'s; this module only chooses the
prompts and settings and summarises.
"""

from __future__ import annotations

from typing import Any

from layergraft.errors import InputError
from layergraft.gen.engine import run_generation
from layergraft.gen.metrics.quality import qa_validity
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.tasks import load_task

#: new-token budget of a reply (the bundled QA answers are a word or a short sentence)
GEN_TOKENS = 64
TASK = "qa"


def check_gen_check(n: int | None, has_chat_template: bool, origin: str) -> None:
    """Refuse, before anything is loaded, a count outside the QA set or a model without a chat
    template (a base model does not know when its turn ends: the check would measure nothing)."""
    if n is None:
        return
    size = len(load_task(TASK))
    if not 1 <= n <= size:
        raise InputError(
            f"--gen-check {n} must be between 1 and {size} (the bundled QA prompts); give a count in that range"
        )
    if not has_chat_template:
        raise InputError(
            f"--gen-check generates chat replies and {origin} has no chat template; "
            "give a chat model (a tokenizer with a chat_template) or remove --gen-check"
        )


def gen_check(
    model: Any, tokenizer: Any, n: int, *, max_new_tokens: int = GEN_TOKENS, batch_size: int = 8
) -> dict[str, Any]:
    """Greedy chat replies of ``model`` (in memory, pruned or not) to the first ``n`` QA
    prompts: ``finished_rate``, ``valid_rate`` and the replies themselves."""
    prompts = load_task(TASK, limit=n)
    settings = SamplingSettings(temperature=0.0, min_p=0.0, max_new_tokens=max_new_tokens)
    recs = run_generation(
        model, tokenizer, prompts, n=1, settings=settings, batch_size=batch_size, progress=False
    )
    replies = []
    for p, r in zip(prompts, recs, strict=True):
        ref = p.reference()
        valid = qa_validity([r["text"]], ref.get("valid", []), ref.get("aliases"))
        replies.append(
            {"prompt": p.prompt, "text": r["text"], "finished": bool(r["finished"]), "valid": valid}
        )
    return {
        "task": TASK,
        "prompts": n,
        "decoding": f"greedy, at most {max_new_tokens} new tokens, chat template",
        "finished_rate": sum(x["finished"] for x in replies) / n,
        "valid_rate": sum(x["valid"] for x in replies) / n,
        "empty_rate": sum(not x["text"].strip() for x in replies) / n,
        "replies": replies,
    }
