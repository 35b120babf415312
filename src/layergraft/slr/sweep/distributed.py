"""Sweeps on a Ray cluster: one long-lived actor per worker, units handed out as actors free up.

Why actors and a pull queue: each actor (:class:`UnitActor`) loads the base/post pair once from
its paths (paths are shipped, never weights: every node must see the checkpoints at the same
path) and then scores any number of units with :meth:`SweepWorker.run
<layergraft.slr.sweep.worker.SweepWorker.run>`, the code a local sweep runs, so the rows are the
same. The driver keeps every actor busy with the most expensive pending unit (longest first,
by :meth:`Unit.cost <layergraft.slr.sweep.engines.Unit.cost>`: early starts cost the most) and
yields each finished unit's rows to :func:`~layergraft.slr.sweep.run.sweep`, which appends them
durably to ``OUT/intervals.jsonl`` as on one machine; ``results.json`` is assembled from that
journal in canonical order, so it does not depend on which worker scored what, or when.

A worker that dies (killed process, lost node) costs only its unit in flight: the unit goes
back to the front of the queue and a fresh actor, placed wherever Ray finds room, takes that
slot. A unit that kills ``max_unit_retries + 1`` workers ends the sweep with an error naming
it; an error raised by the scoring code itself (a bug, a bad input) is not retried.

Joining the cluster and sizing workers: :mod:`layergraft.cluster`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from layergraft.cluster import (
    check_address,
    check_worker_options,
    connect,
    import_ray,
    last_line,
    plan_workers,
)
from layergraft.errors import InputError, LayergraftError
from layergraft.slr.sweep.engines import Unit
from layergraft.slr.sweep.worker import SweepWorker, WorkerSpec

log = logging.getLogger(__name__)


class UnitActor:
    """The body of one Ray actor: a :class:`SweepWorker` loaded once, units in, rows out."""

    def __init__(self, spec: WorkerSpec) -> None:
        for p in (spec.base, spec.post):
            if not Path(p).exists():
                raise InputError(
                    f"{p} is not there on Ray node {socket.gethostname()}: every node must see "
                    "the checkpoints at the same path (a shared filesystem)"
                )
        self.worker = SweepWorker.from_spec(spec)

    def pid(self) -> int:
        return os.getpid()

    def run(self, unit: Unit) -> list[dict[str, Any]]:
        return self.worker.run(unit)


class RayExecutor:
    """``sweep(..., executor=RayExecutor(...))``: the units scored by actors on a Ray cluster
    (module doc). ``address``: see :func:`connect`; ``workers``: actors (default: one per GPU,
    or per CPU); ``gpus_per_worker``: each actor's GPUs (default 1 where the cluster has GPUs,
    else 0); ``actor``: the actor body (:class:`UnitActor`; benchmarks swap in a trivial one)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = "auto",
        *,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        max_unit_retries: int = 3,
        actor: type = UnitActor,
    ) -> None:
        check_worker_options(workers, gpus_per_worker)
        check_address(address)
        self.ray = import_ray()
        self.address, self.workers, self.gpus = address, workers, gpus_per_worker
        self.max_unit_retries, self.actor = max_unit_retries, actor
        self.spec: WorkerSpec | None = None
        self.requeued = 0  # units given back to the queue after their worker died
        self._actors: dict[int, Any] = {}
        self._pids: dict[int, Any] = {}

    def prepare(self, spec: WorkerSpec) -> None:
        self.spec = spec

    def worker_pids(self) -> dict[int, int]:
        """Process id of each live actor, by slot (waits until each has loaded its models)."""
        return {slot: self.ray.get(ref) for slot, ref in list(self._pids.items())}

    def run(self, units: Sequence[Unit], num_layers: int) -> Iterator[list[dict[str, Any]]]:
        """Each finished unit's journal rows, in the order they finish."""
        if self.spec is None:
            raise RuntimeError("RayExecutor.run before prepare(spec)")
        if not units:
            return
        started = connect(self.ray, self.address)
        try:
            yield from self._schedule(list(units), num_layers)
        finally:
            for a in self._actors.values():
                self.ray.kill(a)
            self._actors.clear()
            self._pids.clear()
            if started:
                self.ray.shutdown()

    def _schedule(self, units: list[Unit], num_layers: int) -> Iterator[list[dict[str, Any]]]:
        ray, spec = self.ray, self.spec
        assert spec is not None
        n, gpus = plan_workers(ray.cluster_resources(), self.workers, self.gpus, len(units))
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(self.actor)
        # longest first (LPT); sorted() is stable, so equal costs keep the plan's order
        queue = sorted(units, key=lambda u: -u.cost(num_layers, spec.prefix_reuse))
        # ref -> (slot, unit); unit None: the actor's "ready" call (models loaded)
        inflight: dict[Any, tuple[int, Unit | None]] = {}
        tries: Counter[Unit] = Counter()
        lost_starts = 0

        def start(slot: int) -> None:  # a unit is given once the actor is ready, so a
            self._actors[slot] = remote.remote(spec)  # replacement's loading delays nothing
            self._pids[slot] = self._actors[slot].pid.remote()
            inflight[self._pids[slot]] = (slot, None)

        log.info("sweep on Ray: %d workers (%g GPUs each), %d units", n, gpus, len(units))
        for slot in range(n):
            start(slot)
        while queue or any(u is not None for _, u in inflight.values()):
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            slot, unit = inflight.pop(ref)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the scoring code's own error: no retry
                cause = getattr(e, "cause", None)
                if isinstance(cause, LayergraftError):
                    raise cause from None
                raise
            except ray.exceptions.RayError as e:  # worker killed, node lost, object lost
                if getattr(e, "actor_init_failed", False):  # loading failed: so would a retry
                    raise InputError(f"a Ray worker could not start: {last_line(e)}") from None
                if unit is None:
                    lost_starts += 1
                    if lost_starts > self.max_unit_retries * n:
                        raise LayergraftError(
                            f"Ray workers keep dying while loading the models ({last_line(e)}); "
                            "check the workers' memory and logs"
                        ) from None
                else:
                    self._lost(slot, unit, e, tries, queue)
                self.ray.kill(self._actors[slot], no_restart=True)
                start(slot)
                continue
            if unit is not None:
                yield rows
            if queue:  # the most expensive unit left
                nxt = queue.pop(0)
                inflight[self._actors[slot].run.remote(nxt)] = (slot, nxt)

    def _lost(
        self, slot: int, unit: Unit, e: BaseException, tries: Counter[Unit], queue: list[Unit]
    ) -> None:
        """A worker died with ``unit`` in flight: the unit goes back to the front of the queue
        (the caller replaces the actor in ``slot``)."""
        tries[unit] += 1
        what = unit.keys[0] if len(unit.keys) == 1 else f"start {unit.start}"
        if tries[unit] > self.max_unit_retries:
            raise LayergraftError(
                f"sweep unit {what} lost its Ray worker {tries[unit]} times (last: "
                f"{last_line(e)}); check the workers' memory and logs, then --resume"
            ) from None
        log.warning("Ray worker %d died while scoring %s; scoring it again", slot, what)
        self.requeued += 1
        queue.insert(0, unit)
