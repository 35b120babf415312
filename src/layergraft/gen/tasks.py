"""Loading prompt sets: the bundled JSONL sets, a user's JSONL file, or GSM8K from a local file.

File format (one JSON object per line)::

    {"id": "qa-color", "task": "qa", "prompt": "Name a color.", "valid": ["red", ...],
     "aliases": {"grey": "gray"}}
    {"id": "rs-01", "task": "reasoning", "prompt": "Tom has 3 ...", "answer": "7"}
    {"id": "cw-01", "task": "creative", "prompt": "Write a poem about snow."}

``task`` may be left out when every line is of the file's kind (given by ``kind=``, or guessed:
``answer`` -> reasoning, ``valid`` -> qa, else creative). GSM8K lines
(``{"question", "answer": "... #### 72"}``) are recognised and converted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.answers import extract_final_answer
from layergraft.jsonl import json_lines

TASK_KINDS = ("creative", "qa", "reasoning")
BUNDLED_TASKS = (*TASK_KINDS, "validation")
"""Names of the bundled sets (``layergraft/data/tasks/<name>.jsonl``). ``validation`` is the
held-out chat set ``sweep --validate`` generates from (open QA and open-ended requests, none
of them a CRC prompt or a prompt of the three evaluation tasks)."""


@dataclass(frozen=True)
class TaskPrompt:
    """One prompt with what is needed to judge its replies."""

    id: str
    task: str
    prompt: str
    valid: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    answer: str | None = None

    def reference(self) -> dict[str, Any]:
        """What a generation record carries so metrics need only the JSONL file."""
        out: dict[str, Any] = {}
        if self.valid:
            out["valid"] = list(self.valid)
        if self.aliases:
            out["aliases"] = dict(self.aliases)
        if self.answer is not None:
            out["answer"] = self.answer
        return out

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["valid"] = list(self.valid)
        return {k: v for k, v in d.items() if v not in (None, [], {})}


def _guess_kind(obj: dict[str, Any]) -> str:
    if "answer" in obj:
        return "reasoning"
    if "valid" in obj:
        return "qa"
    return "creative"


def _parse(obj: Any, where: str, n: int, kind: str | None) -> TaskPrompt:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: line {n} is not a JSON object; write one object per line")
    if "question" in obj and "prompt" not in obj:  # GSM8K
        final = extract_final_answer(str(obj.get("answer", "")))
        if final is None:
            raise InputError(
                f"{where}: line {n} is a GSM8K line without a '#### N' answer; fix or remove it"
            )
        return TaskPrompt(id=str(obj.get("id", f"gsm8k-{n:05d}")), task="reasoning",
                          prompt=str(obj["question"]), answer=final)  # fmt: skip
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f'{where}: line {n} has no "prompt" string; add one')
    task = str(obj.get("task") or kind or _guess_kind(obj))
    if task not in TASK_KINDS:
        raise InputError(f"{where}: line {n} has task {task!r}; use one of {', '.join(TASK_KINDS)}")
    valid = obj.get("valid", [])
    if task == "qa" and (not isinstance(valid, list) or not valid):
        raise InputError(f'{where}: line {n} is a QA prompt without a "valid" answer list; add one')
    answer = obj.get("answer")
    if task == "reasoning":
        answer = extract_final_answer(str(answer)) if answer is not None else None
        if answer is None:
            raise InputError(f'{where}: line {n} is a reasoning prompt without a numeric "answer"')
    aliases = obj.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise InputError(f'{where}: line {n}: "aliases" must be an object {{"alias": "answer"}}')
    return TaskPrompt(
        id=str(obj.get("id", f"{Path(where).stem}-{n:04d}")),
        task=task,
        prompt=prompt,
        valid=tuple(str(v) for v in valid),
        aliases={str(k): str(v) for k, v in aliases.items()},
        answer=answer,
    )


def parse_jsonl(text: str, where: str, kind: str | None = None) -> list[TaskPrompt]:
    """Parse prompt lines; ids must be unique (generation records are keyed by them)."""
    out: list[TaskPrompt] = [_parse(obj, where, n, kind) for n, obj in json_lines(text, where)]
    if not out:
        raise InputError(f"{where} holds no prompts; add one JSON object per line")
    seen: set[str] = set()
    for p in out:
        if p.id in seen:
            raise InputError(f"{where}: prompt id {p.id!r} appears twice; ids must be unique")
        seen.add(p.id)
    return out


def load_task(source: str | Path, *, limit: int | None = None) -> list[TaskPrompt]:
    """A bundled set by name (``creative``, ``qa``, ``reasoning``) or a JSONL file by path."""
    text_source = str(source)
    if text_source in BUNDLED_TASKS and not Path(text_source).exists():
        res = resources.files("layergraft") / "data" / "tasks" / f"{text_source}.jsonl"
        kind = text_source if text_source in TASK_KINDS else None
        prompts = parse_jsonl(res.read_text(encoding="utf-8"), f"{text_source}.jsonl", kind)
    else:
        path = Path(text_source)
        if not path.is_file():
            raise InputError(
                f"task {text_source!r} is neither a bundled set ({', '.join(BUNDLED_TASKS)}) "
                "nor a JSONL file; check the path"
            )
        prompts = parse_jsonl(path.read_text(encoding="utf-8"), str(path))
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1, not {limit}")
        prompts = prompts[:limit]
    return prompts


def load_gsm8k(path: str | Path, *, limit: int | None = None) -> list[TaskPrompt]:
    """GSM8K (``{"question", "answer"}`` lines, e.g. ``test.jsonl`` of openai/grade-school-math)
    from a local file: no download happens here."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"GSM8K file {p} not found; download test.jsonl and give its path")
    prompts = parse_jsonl(p.read_text(encoding="utf-8"), str(p), "reasoning")
    return prompts[:limit] if limit else prompts
