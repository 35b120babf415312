"""A user's own score function as a sweep proxy.

Why: the CRC task is one proxy among possible ones; a user with their own measure of
diversity (a classifier, a reward model, a sampled metric) passes ``score_model=`` to
:func:`~layergraft.slr.sweep.run.sweep`, and every hybrid is built with the in-memory swap
and handed to it whole.
"""

from __future__ import annotations

from typing import Any

from layergraft.errors import InputError


class CustomProxy:
    """A user's ``score(model) -> {"V", "H", "H_norm"}`` (optionally ``"V_end"``) as a proxy:
    whole models only (the swap engine), in this process only."""

    kind = "custom"

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def batches(self, tokenizer: Any, device: Any, model: Any = None) -> list[Any]:
        return []

    def score_model(self, model: Any) -> dict[str, Any]:
        d = self.fn(model)
        missing = [k for k in ("V", "H", "H_norm") if k not in d]
        if missing:
            raise InputError(
                f"custom score function must return V, H and H_norm; {missing[0]} is missing"
            )
        v_end = d.get("V_end")
        return {k: float(d[k]) for k in ("V", "H", "H_norm")} | {
            "V_end": float(v_end) if v_end is not None else None,
            "by_category": d.get("by_category", {}),
        }

    def describe(self) -> dict[str, Any]:
        return {"source": "custom"}

    def fingerprint(self) -> str:
        return "custom"
