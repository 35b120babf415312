"""``compare`` on a Ray cluster: each (model, decoding setting) run still to do is a Ray task.

Why the driver writes the generations files: a task loads its model from the path (paths are
shipped, never weights; in-memory models are refused), generates the run's missing samples
batch by batch with the code and per-sample seeds of a local run (:mod:`layergraft.gen.engine`),
and streams each batch's JSON lines back; the driver appends them to ``DIR/gens/<run>.jsonl``
with one write per batch, as :func:`~layergraft.gen.engine.run_generation` does. So the file
is the same bytes as a local run's, only the driver needs the output directory (workers need
no shared filesystem for it), and a worker that dies costs only the batches it had not sent:
the run is submitted again with the samples already in the file marked done. Scoring stays on
the driver (:mod:`layergraft.gen.compare`), once, after every run is complete.

Joining the cluster and sizing workers: :mod:`layergraft.cluster`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
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
from layergraft.gen.ends import stop_token_ids
from layergraft.gen.engine import hf_generate_batch
from layergraft.gen.jobs import pending_jobs
from layergraft.gen.records import check_compatible, make_record, read_records
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.tasks import TaskPrompt
from layergraft.gen.vllm import VllmEngine, resolve_backend
from layergraft.models.load import load_model, local_dir

log = logging.getLogger(__name__)


@dataclass
class GenRun:
    """One run to generate: where its file is, the model's path, the tokenizer to use (the
    object: it may be borrowed from another model for its chat template), settings, name."""

    name: str
    out: Path
    model: str
    tokenizer: Any
    settings: SamplingSettings
    model_name: str
    weights: str | None = None


def generate_lines(
    run: GenRun, prompts: Sequence[TaskPrompt], n: int, done: set[tuple[str, int]],
    batch_size: int, chat_template: bool, backend: str, placement: dict[str, Any],
) -> Iterator[str]:  # fmt: skip
    """On a worker: the records of ``run``'s samples not in ``done``, one string of JSON
    lines per batch (the batches and bytes :func:`run_generation` writes)."""
    tok = run.tokenizer
    jobs = pending_jobs(tok, prompts, n, done, chat_template=chat_template)
    if not jobs:
        return
    chosen = resolve_backend(backend, run.model)
    model = engine = None
    eos = stop_token_ids(run.model, tok)  # the model's end markers, read from its files
    if chosen == "vllm":
        engine = VllmEngine(run.model)
    else:
        model = load_model(run.model, **placement)
        model.eval()
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i : i + batch_size]
        if engine is not None:
            res = engine.generate(tok, batch, run.settings, eos)
        else:
            res = hf_generate_batch(model, tok, batch, run.settings, eos)
        yield "".join(
            json.dumps(
                make_record(j.prompt, j.sample, text, ntok, fin, run.settings, run.model_name, chosen,
                            run.weights),
                ensure_ascii=False,
            ) + "\n"
            for j, (text, ntok, fin) in zip(batch, res, strict=True)
        )  # fmt: skip


class RayGenerator:
    """``compare(..., executor=RayGenerator(...))``: the runs still to do generated as Ray
    tasks, at most ``workers`` at once (default: one per GPU, or per CPU, of the cluster), each
    with ``gpus_per_worker`` GPUs (default 1 where the cluster has GPUs). See the module doc."""

    name = "ray"

    def __init__(
        self,
        address: str | None = "auto",
        *,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        max_retries: int = 3,
    ) -> None:
        check_worker_options(workers, gpus_per_worker)
        check_address(address)
        self.ray = import_ray()
        self.address, self.workers, self.gpus, self.max_retries = (
            address, workers, gpus_per_worker, max_retries,
        )  # fmt: skip
        self.retried = 0  # runs submitted again after their worker died

    def generate(
        self, todo: Sequence[tuple[str, Path, str, SamplingSettings]], cache: Any,
        prompts: Sequence[TaskPrompt], *, n: int, batch_size: int, chat_template: bool,
        backend: str, progress: bool = True,
    ) -> None:  # fmt: skip
        """Generate every ``(run name, file, model label, settings)`` of ``todo`` into its
        file; ``cache`` (:class:`~layergraft.gen.model_cache.ModelCache`) knows each label's
        model, tokenizer and record name."""
        if not todo:
            return
        runs = []
        for name, out, label, s in todo:
            spec = cache.models[label]
            if isinstance(spec, tuple):
                raise InputError(
                    f"compare --ray loads every model on its worker: give {label}=PATH, not an "
                    "in-memory model"
                )
            runs.append(GenRun(name, Path(out), str(local_dir(spec)), cache.tokenizer(label), s,
                               cache.record_name(label), cache.weights(label)))  # fmt: skip
        from tqdm.auto import tqdm

        ray = self.ray
        started = connect(ray, self.address)
        try:
            workers, gpus = plan_workers(
                ray.cluster_resources(), self.workers, self.gpus, len(runs)
            )
            task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0, num_returns="streaming")(
                generate_lines
            )
            total = sum(_missing(r, prompts, n) for r in runs)
            stop = threading.Event()
            args = (prompts, n, batch_size, chat_template, backend, cache.placement)
            with (
                tqdm(total=total, desc="generate (ray)", unit="gen", disable=not progress) as bar,
                ThreadPoolExecutor(workers) as pool,
            ):
                futures = [pool.submit(self._drive, task, r, args, bar, stop) for r in runs]
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                if any(f.exception() for f in finished):
                    stop.set()  # the other runs stop after their current batch
                for f in futures:
                    f.result()
        finally:
            if started:
                ray.shutdown()

    def _drive(self, task: Any, run: GenRun, args: tuple, bar: Any, stop: Any) -> None:
        """Submit ``run``, append each batch it streams back to its file; after a lost
        worker, submit it again for the samples not yet in the file."""
        ray = self.ray
        tries = 0
        while not stop.is_set():  # set: another run failed, the comparison ends
            existing = read_records(run.out, repair=True)
            check_compatible(existing, run.settings, run.model_name, run.out, run.weights)
            done = {(r["prompt_id"], int(r["sample"])) for r in existing}
            prompts, n, *rest = args
            stream = task.remote(run, prompts, n, done, *rest)
            try:
                run.out.parent.mkdir(parents=True, exist_ok=True)
                with open(run.out, "a", encoding="utf-8") as fh:
                    for ref in stream:
                        lines = ray.get(ref)
                        fh.write(lines)  # one write per batch: a kill leaves one partial line
                        fh.flush()
                        bar.update(lines.count("\n"))
                        if stop.is_set():  # another run failed: the comparison ends
                            ray.cancel(stream)
                            return
                return
            except ray.exceptions.RayTaskError as e:  # the generating code's own error
                cause = getattr(e, "cause", None)
                if isinstance(cause, LayergraftError):
                    raise cause from None
                raise
            except ray.exceptions.RayError as e:  # worker killed, node lost
                tries += 1
                self.retried += 1
                if tries > self.max_retries:
                    raise LayergraftError(
                        f"run {run.name} lost its Ray worker {tries} times ({last_line(e)}); "
                        "check the workers' memory and logs, then run compare again (it resumes)"
                    ) from None
                log.warning("Ray worker of run %s died; generating the rest again", run.name)


def _missing(run: GenRun, prompts: Sequence[TaskPrompt], n: int) -> int:
    have = {(r["prompt_id"], int(r["sample"])) for r in read_records(run.out)}
    return sum((p.id, i) not in have for p in prompts for i in range(n))
