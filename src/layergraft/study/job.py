"""A job directory of steps, each skipped when nothing it depends on has changed.

Why: the main job runs for hours on a real pair (a sweep, validation, generations on three
tasks), so a kill, a new setting or a model trained again must cost only the steps they touch.
This is the sweep journal's contract one level up (mergekit's plan -> execute): each step works
in its own folder of the job directory and leaves a manifest, ``<step>/step.json``, with its
settings, its inputs (weights digests, the rows it was given) and its small JSON result.

- A step whose manifest carries the same *key* (a hash of settings and inputs) is skipped and
  its recorded result returned.
- A step that was started and killed (``<step>/.started.json`` with the same key, no manifest)
  runs again *in place*, so the tools it calls resume their own journals (the sweep's rows,
  each model's generations).
- A step whose key changed is prepared for a fresh run: by its own ``prepare`` (which keeps
  what is still valid, e.g. the sweep rows when only the selection changed) or by emptying
  its folder.

The manifest is written last and atomically, so it exists only for a finished step.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layergraft.checkpoint.atomic import write_json_atomic
from layergraft.version import __version__

MANIFEST = "step.json"
STARTED = ".started.json"


def step_key(settings: dict[str, Any], inputs: dict[str, Any]) -> str:
    """The identity of one step's work: the same settings on the same inputs."""
    text = json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Step:
    """One step: its folder name, what it computes with, what it reads, and the work.

    ``run(folder)`` writes into ``folder`` (created) and returns a JSON-able result.
    ``prepare(folder, old)`` (optional) is called when the folder holds the work of another
    key (``old`` is that manifest, or None when unknown) and removes what is no longer valid;
    without it the folder is emptied.
    """

    name: str
    settings: dict[str, Any]
    inputs: dict[str, Any]
    run: Callable[[Path], Any]
    prepare: Callable[[Path, dict[str, Any] | None], None] | None = None

    @property
    def key(self) -> str:
        return step_key(self.settings, self.inputs)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or cut by a kill before the atomic rename: not a record


def empty(folder: Path) -> None:
    """Remove everything in ``folder`` (the folder stays)."""
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


class Job:
    """Runs steps in a job directory and keeps a log of what ran and what was reused."""

    def __init__(self, root: Path, *, say: Callable[[str], None] = print) -> None:
        self.root = root
        self.say = say
        self.log: dict[str, dict[str, Any]] = {}
        self.t0 = time.perf_counter()

    def state(self, step: Step) -> str:
        """``done`` (same key, finished), ``resume`` (same key, killed), ``changed`` or ``new``."""
        folder = self.root / step.name
        done, started = _read(folder / MANIFEST), _read(folder / STARTED)
        if done is not None and done.get("key") == step.key:
            return "done"
        if started is not None and started.get("key") == step.key:
            return "resume"
        return "changed" if folder.exists() else "new"

    def run(self, step: Step) -> Any:
        """Run ``step`` unless its manifest says it is done with the same key; its result."""
        folder = self.root / step.name
        state = self.state(step)
        n = len(self.log) + 1
        if state == "done":
            rec = _read(folder / MANIFEST) or {}
            self.log[step.name] = {"status": "reused", "seconds": rec.get("seconds")}
            self.say(f"[{n}] {step.name}: unchanged since the last run, reused")
            return rec.get("result")
        if state == "changed":
            old = _read(folder / MANIFEST) or _read(folder / STARTED)
            (folder / MANIFEST).unlink(missing_ok=True)
            if step.prepare is not None and old is not None:
                step.prepare(folder, old)
            else:
                empty(folder)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"step": step.name, "key": step.key, "settings": step.settings,
                  "inputs": step.inputs}  # fmt: skip
        write_json_atomic(folder / STARTED, record)
        verb = {"resume": "continuing", "changed": "settings or inputs changed, running"}
        self.say(f"[{n}] {step.name}: {verb.get(state, 'running')} ...")
        t0 = time.perf_counter()
        result = step.run(folder)
        seconds = round(time.perf_counter() - t0, 2)
        write_json_atomic(
            folder / MANIFEST,
            {**record, "result": result, "seconds": seconds, "layergraft": __version__},
        )
        self.log[step.name] = {"status": "resumed" if state == "resume" else "ran",
                               "seconds": seconds}  # fmt: skip
        elapsed = time.perf_counter() - self.t0
        self.say(f"[{n}] {step.name}: done in {seconds:.1f}s (elapsed {elapsed:.1f}s)")
        return result

    def timing(self) -> dict[str, float | None]:
        """Seconds each step took when it last ran (a reused step: its recorded time)."""
        return {k: v["seconds"] for k, v in self.log.items()}
