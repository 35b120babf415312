"""Prompt sets for generation: creative writing, open-ended QA, multi-step reasoning.

Why one record type for three tasks: the generation engine and the metrics should not care
which task a prompt came from; the task only decides which quality metric applies
(``valid`` answers for QA, a numeric ``answer`` for reasoning, none for creative).
"""

from layergraft.tasks.answers import (
    canonicalize,
    extract_final_answer,
    has_final_marker,
    match_answer,
    normalize_number,
    reasoning_path,
)
from layergraft.tasks.loaders import (
    BUNDLED_TASKS,
    TASK_KINDS,
    TaskPrompt,
    load_gsm8k,
    load_task,
)

__all__ = [
    "BUNDLED_TASKS",
    "TASK_KINDS",
    "TaskPrompt",
    "canonicalize",
    "extract_final_answer",
    "has_final_marker",
    "load_gsm8k",
    "load_task",
    "match_answer",
    "normalize_number",
    "reasoning_path",
]
