"""What the SLR job reads and where it writes, checked before any work.

Why apart from the steps: every refusal here needs only the arguments, the paths and the
configs, so it comes in a second with one line, and the job directory is touched only after
all of them passed (a user's directory that is not a job is never emptied or written into).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from layergraft.checkpoint.outputs import check_output
from layergraft.errors import InputError, OutputError
from layergraft.models.load import load_tokenizer, open_loadable
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.study.job import empty
from layergraft.study.selection import ROLE_LABELS

PathLike = str | os.PathLike[str]

#: marks a directory as a job's, so that a rerun may continue in it and nothing else is touched
JOB_FILE = "job.json"


def prompt_subset(n: int | None, path: Path) -> str:
    """All bundled CRC prompts, or an even subset of both categories written to ``path``."""

    if n is None:
        return "all"
    items = load_crc_prompts("all")
    cats = sorted({p.category for p in items})
    picked = [p for c in cats for p in [x for x in items if x.category == c][: n // len(cats)]]
    text = "".join(
        json.dumps({"id": p.id, "category": p.category, "prompt": p.prompt, "valid": list(p.valid)})
        + "\n"
        for p in picked
    )
    path.parent.mkdir(exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return str(path)


def open_job_dir(out: PathLike, inputs: list[Any], force: bool) -> Path:
    """The job directory, checked before any work: not an input nor inside one, writable,
    and either new, empty, or a job's (``job.json``). ``force`` empties a job's directory."""
    target = check_output(out, inputs=inputs, kind="dir", flag="--out", reuse=True)
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"--out {out} is a file; give a directory for the job")
        if any(target.iterdir()) and not (target / JOB_FILE).is_file():
            raise OutputError(
                f"--out {out} exists and is not a layergraft job directory (no {JOB_FILE}); "
                "choose a new or empty directory"
            )
        if force:
            empty(target)
    return target


def check_chat_tokenizer(tokenizer: PathLike | None, post: PathLike) -> None:
    """The job reads replies in the chat format (CRC, validation, the tasks): the tokenizer it
    uses (``--tokenizer``, else the post model's) must have a chat template. Said before the
    job directory is touched, not in the CRC step."""
    tok = load_tokenizer(str(tokenizer or post))
    if getattr(tok, "chat_template", None) is None:
        flag = f"--tokenizer {tokenizer}" if tokenizer else f"the post model's tokenizer ({post})"
        raise InputError(
            f"{flag} has no chat template, and the job scores and generates chat replies; give "
            "--tokenizer T with one (e.g. the instruct model's)"
        )


def check_also(also: dict[str, PathLike]) -> dict[str, PathLike]:
    """More models to compare, refused before any work when a name is taken (base, post, a
    compared hybrid's label) or malformed, or a model does not open."""

    taken = {"base", "post", *ROLE_LABELS.values()}
    for name, path in also.items():
        if name in taken or not re.fullmatch(r"[\w.-]+", name):
            raise InputError(
                f"--also {name}={path}: the name {name!r} is taken or malformed; use letters, "
                f"digits, '-', '_' and '.', and none of {', '.join(sorted(taken))}"
            )
        open_loadable(path)
    return also


def model_spec(model: PathLike) -> str:
    """A model as the job records it: a local path made absolute (``./post`` and ``post`` are
    one model), a hub id as given."""
    p = Path(model)
    return str(p.absolute()) if p.exists() else str(model)


def jsonable(placement: dict[str, Any]) -> dict[str, Any]:
    """Placement settings as JSON (a torch dtype as its name), for step keys."""
    return {
        k: v if isinstance(v, (str, dict, type(None))) else str(v) for k, v in placement.items()
    }
