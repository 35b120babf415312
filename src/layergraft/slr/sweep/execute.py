"""Running a sweep's units: where the worker comes from, and where each unit's rows go.

Why one object: a sweep runs units in up to three rounds (the sweep, or halving's two
stages, then validation), on one process or on Ray, with or without a journal. The models
are loaded once, and only when a round has work; every finished unit is recorded before the
next one starts (the journal's contract).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from layergraft.errors import InputError
from layergraft.slr.sweep.engines import Unit
from layergraft.slr.sweep.journal import Journal, row_key
from layergraft.slr.sweep.worker import SweepWorker, WorkerSpec


class LocalExecutor:
    """Units scored one after another by one in-process worker."""

    name = "local"

    def __init__(self, worker: SweepWorker) -> None:
        self.worker = worker

    def run(self, units: Sequence[Unit], num_layers: int) -> Iterable[list[dict[str, Any]]]:
        for u in units:
            yield self.worker.run(u)


class Execution:
    """The units of one sweep: ``run`` scores the ones not yet recorded."""

    def __init__(
        self,
        *,
        spec: WorkerSpec | None,
        pair: tuple[Any, Any, Any] | None,
        proxy: Any,
        prefix_reuse: bool,
        executor: Any,
        journal: Journal | None,
        rows: list[dict[str, Any]],
        num_layers: int,
        progress: bool,
    ) -> None:
        if executor is not None and pair is not None:
            raise InputError(
                "a distributed sweep loads the models on its workers: give paths, not models"
            )
        self.spec, self.pair, self.proxy, self.prefix_reuse = spec, pair, proxy, prefix_reuse
        self.executor, self.journal, self.rows = executor, journal, rows
        self.num_layers, self.progress = num_layers, progress
        self.worker: SweepWorker | None = None
        self.prepared = False
        self.stages: dict[int, tuple[int, ...]] = {}
        self.units_run = 0

    @property
    def name(self) -> str:
        return getattr(self.executor, "name", "local")

    def _ready(self) -> Any:
        if self.executor is None:
            if self.pair is not None:
                self.worker = SweepWorker(*self.pair, self.proxy, prefix_reuse=self.prefix_reuse)
            else:
                assert self.spec is not None
                self.worker = SweepWorker.from_spec(self.spec)
            self.worker.stages = dict(self.stages)
            self.executor = LocalExecutor(self.worker)
        elif self.worker is None and not self.prepared and self.spec is not None:
            self.executor.prepare(self.spec)
        self.prepared = True
        return self.executor

    def run(self, units: Sequence[Unit]) -> None:
        """Score the units whose rows are not recorded yet, recording each as it finishes."""
        from tqdm.auto import tqdm

        done = {row_key(r) for r in self.rows}
        pending = [u for u in units if not set(u.keys) <= done]
        if not pending:
            return
        executor = self._ready()
        total = sum(len(u.keys) for u in pending)
        with tqdm(total=total, desc="sweep", unit="hybrid", disable=not self.progress) as bar:
            for unit_rows in executor.run(pending, self.num_layers):
                if self.journal is not None:
                    self.journal.append(unit_rows)
                else:
                    self.rows.extend(json.loads(json.dumps(r)) for r in unit_rows)
                bar.update(len(unit_rows))
        self.units_run += len(pending)
