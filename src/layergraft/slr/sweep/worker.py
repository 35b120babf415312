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
from layergraft.errors import InputError
from layergraft.models.load import load_model, load_tokenizer
from layergraft.slr.sweep.engines import Unit, score_model, score_start, score_start_swap
from layergraft.slr.hybrid.soup import souped


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


class CustomProxy:
    """A user's ``score(model) -> {"V", "H", "H_norm"}`` as a proxy: whole models only (the
    swap engine), in this process only."""

    kind = "custom"
    last_only = True

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def batches(self, tokenizer: Any, device: Any) -> list[Any]:
        return []

    def score_model(self, model: Any) -> dict[str, Any]:
        d = self.fn(model)
        missing = [k for k in ("V", "H", "H_norm") if k not in d]
        if missing:
            raise InputError(
                f"custom score function must return V, H and H_norm; {missing[0]} is missing"
            )
        return {k: float(d[k]) for k in ("V", "H", "H_norm")} | {
            "by_category": d.get("by_category", {})
        }

    def describe(self) -> dict[str, Any]:
        return {"source": "custom"}

    def fingerprint(self) -> str:
        return "custom"


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
        self.batches = proxy.batches(tokenizer, next(post_model.parameters()).device)

    @classmethod
    def from_spec(cls, spec: WorkerSpec) -> SweepWorker:
        post = load_model(spec.post, **spec.placement)
        base = load_model(spec.base, **spec.placement)
        tok = load_tokenizer(spec.tokenizer)
        return cls(base, post, tok, spec.proxy, prefix_reuse=spec.prefix_reuse)

    @property
    def engine(self) -> str:
        return "prefix-reuse" if self.fast else "swap"

    def run(self, unit: Unit) -> list[dict[str, Any]]:
        """The journal rows of ``unit`` (see :mod:`layergraft.slr.sweep.journal`)."""
        if unit.kind == "reference":
            model = self.post if unit.name == "post" else self.base
            scores = score_model(model, self.proxy, self.batches)
            return [{"kind": "reference", "name": unit.name, "scores": scores}]
        if unit.kind == "soup":
            with souped(self.post, self.base, unit.alpha):
                scores = score_model(self.post, self.proxy, self.batches)
            return [{"kind": "soup", "alpha": unit.alpha, "scores": scores}]
        engine = score_start if self.fast else score_start_swap
        rows = engine(
            self.post, self.base, self.adapter, self.proxy, self.batches, unit.start, unit.ends,
            unit.parts,
        )  # fmt: skip
        extra = {} if unit.parts == "all" else {"parts": unit.parts}
        return [
            {"kind": "interval", "start": unit.start, "end": e, **extra, "scores": rows[e]}
            for e in unit.ends
        ]
