"""How much work each step of the SLR study does: one place for task sizes and budgets.

Why one place: the study runs on a user's pair (``layergraft slr``), on the toy pair
(``layergraft demo``), in the test suite (``--quick``) and in the experiment scripts; each
used to carry its own copy of prompts per task, samples and token budgets, and they drifted.
The presets below are the only copies; flags override single fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.tasks import TASK_KINDS

#: new-token budgets per task for a real model (tokens): long enough for a chat model's reply
#: to these prompts (Gemma-3-270M's post model finished 0.73 of them within these budgets);
#: ``finished_rate`` in the results says how many replies ended by themselves
BUDGETS = {"creative": 128, "qa": 64, "reasoning": 160}

#: the toy pair's budgets (its tokens are characters): the post model's longest replies,
#: measured with a 600-token budget on the bundled prompts, are 65 (qa), 77 (creative) and 65
#: (reasoning), so these budgets cut none of them; the base, which never learned to stop, runs
#: to them
TOY_BUDGETS = {"qa": 96, "creative": 128, "reasoning": 96}


@dataclass(frozen=True)
class StudySettings:
    """The settings of one SLR study. Defaults are those of ``layergraft slr`` on a real pair."""

    tasks: tuple[str, ...] = ("creative", "qa", "reasoning")
    n: int = 8  # samples per prompt
    limit: int | None = 10  # prompts per task (None: all)
    budgets: dict[str, int] = field(default_factory=lambda: dict(BUDGETS))
    crc_prompts: int | None = None  # None: all bundled CRC prompts; K: an even subset
    parts: tuple[str, ...] = ("attn", "mlp", "all")
    alphas: tuple[float, ...] = (0.5, 1.0)
    rule: str | None = None  # None: format where the model has end markers, else paper
    validate: int | None = 2  # candidates per family validated by generation; None: none
    validate_samples: int = 4
    search: str = "exhaustive"
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASK_KINDS]
        if bad or not self.tasks:
            raise InputError(
                f"--tasks {','.join(bad) or '(empty)'}: not a bundled task; choose from "
                f"{', '.join(TASK_KINDS)}"
            )
        missing = [t for t in self.tasks if t not in self.budgets]
        if missing:
            raise InputError(f"no token budget for task {missing[0]}; give --max-new-tokens")
        for name in ("n", "validate_samples"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise InputError("--limit must be at least 1 (prompts per task)")
        if self.crc_prompts is not None and self.crc_prompts < 2:
            raise InputError("the CRC prompt subset needs at least 2 prompts (one per category)")
        if self.validate is not None and self.validate < 1:
            raise InputError("--validate must be at least 1, or 0 to skip validation")
        if any(b < 1 for b in self.budgets.values()):
            raise InputError("--max-new-tokens must be at least 1")

    def replace(self, **changes: Any) -> StudySettings:
        """A copy with some fields changed (None values are left as they were)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("tasks", "parts", "alphas"):
            d[k] = list(d[k])
        return d


#: ``layergraft slr`` on a real pair
DEFAULT = StudySettings()

#: ``--quick``: the demo's small settings (the test suite runs the whole job with them)
QUICK = StudySettings(
    tasks=("qa",), n=4, limit=6, budgets=dict(TOY_BUDGETS), crc_prompts=12, validate=1,
    validate_samples=1,
)  # fmt: skip

#: ``layergraft demo``: the toy pair, every task, sized to finish in about two minutes
DEMO = StudySettings(
    tasks=("qa", "creative", "reasoning"), n=8, limit=8, budgets=dict(TOY_BUDGETS), validate=1,
    validate_samples=2,
)  # fmt: skip
