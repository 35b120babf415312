"""A sweep worker: the loaded base/post pair, the proxy's batches, and units in, rows out.

Why a class: one worker loads the two models once and then scores any number of units
(:class:`~layergraft.slr.sweep.engines.Unit`). The local sweep runs one in-process; a distributed
sweep runs one per Ray actor (:mod:`layergraft.slr.sweep.distributed`); both produce the same rows,
because the rows are computed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.gen.engine import run_generation
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.tasks import load_task
from layergraft.models.load import load_model, load_tokenizer
from layergraft.slr.hybrid import candidate
from layergraft.slr.hybrid.soup import souped
from layergraft.slr.sweep.engines import (
    PostPrefix,
    Unit,
    score_model,
    score_start,
    score_start_swap,
)


@dataclass
class WorkerSpec:
    """What a worker needs to build itself anywhere: paths (never weights), the placement,
    the proxy (picklable data) and the engine."""

    base: str
    post: str
    tokenizer: str
    proxy: Any
    placement: dict[str, Any]
    prefix_reuse: bool = True
    validation: dict[str, Any] | None = None  # generation settings of validation units
    stages: dict[int, tuple[int, ...]] | None = None  # --search halving: prompts per stage


class SweepWorker:
    """Scores units on one loaded base/post pair."""

    def __init__(
        self,
        base_model: Any,
        post_model: Any,
        tokenizer: Any,
        proxy: Any,
        *,
        prefix_reuse: bool = True,
    ) -> None:
        self.base, self.post, self.tokenizer, self.proxy = base_model, post_model, tokenizer, proxy
        self.adapter = adapter_for_model(post_model)
        self.fast = prefix_reuse and not hasattr(proxy, "score_model")
        self.device = next(post_model.parameters()).device
        self.batches = (
            proxy.batches(tokenizer, self.device, post_model) if proxy is not None else []
        )
        self.validation: dict[str, Any] | None = None
        self.stages: dict[int, tuple[int, ...]] = {}
        self._staged: dict[int, tuple[Any, list[Any]]] = {}
        # the post prefix carried across start units (engines.PostPrefix)
        self.prefix = PostPrefix(post_model, self.adapter)

    def for_stage(self, stage: int) -> tuple[Any, list[Any]]:
        """The proxy and batches of a unit's stage: all prompts (0), or --search halving's
        quarter (1) and the rest (2), each reporting per-prompt scores."""
        if stage == 0:
            return self.proxy, self.batches
        if stage not in self._staged:
            px = self.proxy.subset(self.stages[stage])
            self._staged[stage] = (px, px.batches(self.tokenizer, self.device, self.post))
        return self._staged[stage]

    @classmethod
    def from_spec(cls, spec: WorkerSpec) -> SweepWorker:
        post = load_model(spec.post, **spec.placement)
        base = load_model(spec.base, **spec.placement)
        tok = load_tokenizer(spec.tokenizer)
        worker = cls(base, post, tok, spec.proxy, prefix_reuse=spec.prefix_reuse)
        worker.validation = spec.validation
        worker.stages = dict(spec.stages or {})
        return worker

    @property
    def engine(self) -> str:
        return "prefix-reuse" if self.fast else "swap"

    def run(self, unit: Unit) -> list[dict[str, Any]]:
        """The journal rows of ``unit`` (see :mod:`layergraft.slr.sweep.journal`)."""
        if unit.kind == "validate":
            return [self.generate(unit)]
        proxy, batches = self.for_stage(unit.stage)
        stage = {"stage": unit.stage} if unit.stage else {}
        if unit.kind == "reference":
            model = self.post if unit.name == "post" else self.base
            scores = score_model(model, proxy, batches, self.adapter)
            return [{"kind": "reference", "name": unit.name, **stage, "scores": scores}]
        if unit.kind == "soup":
            with souped(self.post, self.base, unit.alpha):
                scores = score_model(self.post, proxy, batches, self.adapter)
            return [{"kind": "soup", "alpha": unit.alpha, **stage, "scores": scores}]
        args = (self.post, self.base, self.adapter, proxy, batches, unit.start, unit.ends,
                unit.parts, unit.alpha)  # fmt: skip
        rows = score_start(*args, prefix=self.prefix) if self.fast else score_start_swap(*args)
        extra: dict[str, Any] = {} if unit.parts == "all" else {"parts": unit.parts}
        if unit.alpha != 1.0:
            extra["alpha"] = unit.alpha
        return [
            {"kind": "interval", "start": unit.start, "end": e, **extra, **stage, "scores": rows[e]}
            for e in unit.ends
        ]

    def generate(self, unit: Unit) -> dict[str, Any]:
        """A validation unit's generations (:mod:`layergraft.slr.sweep.validate`): the post
        model itself, or the hybrid made in memory, sampled on the validation set."""
        if self.validation is None:
            raise RuntimeError("a validation unit reached a worker without validation settings")
        v = self.validation
        settings = SamplingSettings(max_new_tokens=v["max_new_tokens"], seed=v["seed"])
        row = validation_row(unit)
        ctx = candidate.in_memory(row, self.post, self.base) if row else candidate.nothing()
        with ctx:
            records = run_generation(
                self.post, self.tokenizer, load_task(v["task"]), n=v["n"], settings=settings,
                model_name=f"{unit.name}:in-memory", batch_size=v["batch_size"], progress=False,
            )  # fmt: skip
        return {"label": unit.name, "hybrid": row, "records": records}


def validation_row(unit: Unit) -> dict[str, Any] | None:
    """The hybrid a validation unit generates from (None: the post model itself)."""
    if unit.name == "post":
        return None
    if unit.start < 0:
        return {"alpha": unit.alpha}
    return {"start": unit.start, "end": unit.ends[0], "alpha": unit.alpha, "parts": unit.parts}
