"""The CRC proxy task, estimated exactly from the first answer token; the ``crc`` command.

Why exact: CRC's answer is one token, so instead of sampling answers we read the model's
next-token distribution after the chat prompt once per prompt, and V_end's at one more
position per valid token (V, H and V_end as defined in
:mod:`layergraft.slr.proxy.crc_scoring`). :func:`crc_exact` is a pure function of ``(model,
tokenizer, prompts)``: the prompts are packed as token trees and run once through the
model's layers (:class:`~layergraft.models.runner.LayerRunner`), no sampling, no files.
:class:`CrcProxy` is the same scoring as the sweep sees it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.errors import InputError
from layergraft.gen.ends import EndMarkers, find_end_markers
from layergraft.models.load import load_with_tokenizer
from layergraft.models.packing import DEFAULT_ATTENTION_RATIO
from layergraft.models.runner import LayerRunner
from layergraft.slr.proxy.crc_prompts import CrcPrompt, load_crc_prompts
from layergraft.slr.proxy.crc_sampled import crc_sampled
from layergraft.slr.proxy.crc_scoring import (
    CrcBatch,
    CrcItem,
    CrcResult,
    in_order,
    prepare_batches,
    reader,
    result_of,
    score_items,
)
from layergraft.slr.proxy.ends import check_v_end


def attention_ratio(model: Any) -> float:
    """Attention's cost per (query, key) pair relative to one token's linear layers in
    ``model`` (about ``2 * hidden / parameters per layer``): how long packed rows may grow."""
    try:
        adapter = adapter_for_model(model)
        per_layer = sum(p.numel() for p in adapter.layers(model)[0].parameters())
        return 2 * adapter.hidden_size / max(per_layer, 1)
    except Exception:  # an exotic model: any ratio packs correctly, this one packs well
        return DEFAULT_ATTENTION_RATIO


def score_batch(model: Any, adapter: Any, batch: CrcBatch) -> list[CrcItem]:
    """One packed batch through the whole model: the per-prompt scores."""
    run = LayerRunner(model, adapter, batch.packed)
    final = run.run_from(0, run.hidden0, adapter.layers(model))
    return score_items(batch, reader(run, final, batch))


def crc_exact(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[CrcPrompt | dict[str, Any]],
    batch_size: int = 64,
    *,
    ends: EndMarkers | Sequence[int] | None = None,
    v_end: str = "strict",
    layout: str = "shared",
) -> CrcResult:
    """Score ``prompts`` by the model's exact next-token distributions after the chat prompt,
    ``batch_size`` prompts per packed forward pass (the numbers do not depend on it).
    ``ends``: the end markers (default: the model's own, :func:`find_end_markers`)."""
    device = next(iter(model.parameters())).device
    if ends is None:
        ends = find_end_markers(tokenizer, model) if v_end != "off" else EndMarkers(())
    end_ids = ends.ids if isinstance(ends, EndMarkers) else tuple(ends)
    adapter = adapter_for_model(model)
    parts = [
        (b, score_batch(model, adapter, b))
        for b in prepare_batches(
            tokenizer, prompts, batch_size=batch_size, device=device, ends=end_ids, v_end=v_end,
            layout=layout, attention_ratio=attention_ratio(model),
        )
    ]  # fmt: skip
    return result_of(in_order(parts))


# ---------------------------------------------------------------------------- the sweep's proxy


@dataclass
class CrcProxy:
    """CRC as a sweep proxy: packed batches of prompts, per-batch scores, one row per hybrid.

    Picklable (prompts and end-marker ids are data), so a worker process can rebuild the
    batches with its own tokenizer and device. ``ends`` are found once, on the driver."""

    prompts: list[CrcPrompt]
    source: str = "all"
    batch_size: int = 64
    ends: EndMarkers = field(default_factory=lambda: EndMarkers(()))
    v_end: str = "strict"
    layout: str = "shared"
    kind: str = "crc"
    per_prompt: bool = False  # rows also carry every prompt's scores (for --search halving)
    indices: tuple[int, ...] | None = None  # where self.prompts sit in the whole set

    def subset(self, positions: Sequence[int]) -> CrcProxy:
        """The same proxy on ``self.prompts[positions]``, reporting per-prompt scores."""
        return dataclasses.replace(
            self, prompts=[self.prompts[i] for i in positions], indices=tuple(positions),
            per_prompt=True,
        )  # fmt: skip

    def batches(self, tokenizer: Any, device: Any, model: Any = None) -> list[CrcBatch]:
        return prepare_batches(
            tokenizer, self.prompts, batch_size=self.batch_size, device=device,
            ends=self.ends.ids, v_end=self.v_end, layout=self.layout,
            attention_ratio=attention_ratio(model) if model is not None else None,
        )  # fmt: skip

    def score(
        self, batch: CrcBatch, run: LayerRunner, final: Any, *, read_all: bool = False
    ) -> tuple[CrcBatch, list[CrcItem]]:
        """``read_all``: read every V_end continuation, however unlikely (the plan's upper
        bound of the head's cost; the scores move by less than ``MIN_READ`` per token)."""
        read = reader(run, final, batch)
        return batch, score_items(batch, read, 0.0) if read_all else score_items(batch, read)

    def combine(self, parts: list[tuple[CrcBatch, list[CrcItem]]]) -> dict[str, Any]:
        items = in_order(parts)
        res = result_of(items)
        out = {
            **{k: res.mean[k] for k in ("V", "H", "H_norm", "V_end")},
            "by_category": res.by_category,
        }
        if self.per_prompt:
            where = self.indices if self.indices is not None else range(len(items))
            out["items"] = {
                "index": list(where),
                "category": [i.category for i in items],
                "V": [i.validity for i in items],
                "H": [i.entropy for i in items],
                "H_norm": [i.entropy_norm for i in items],
                "V_end": [i.validity_end for i in items],
            }
        return out

    def summarize(self, items: dict[str, list[Any]]) -> dict[str, Any]:
        """A row's scores from per-prompt scores (``combine``'s ``items``, in prompt order):
        the same means a whole-set row has."""
        res = result_of([
            CrcItem(str(i), c, v, h, hn, {}, ve)
            for i, c, v, h, hn, ve in zip(items["index"], items["category"], items["V"], items["H"],
                                         items["H_norm"], items["V_end"], strict=True)
        ])  # fmt: skip
        return {
            **{k: res.mean[k] for k in ("V", "H", "H_norm", "V_end")},
            "by_category": res.by_category,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n": len(self.prompts),
            "categories": sorted({p.category for p in self.prompts}),
            "v_end": self.v_end if self.ends.ids else "unavailable",
            "end_markers": self.ends.as_json(),
        }

    def fingerprint(self) -> str:
        """sha256 of everything that decides the numbers: the prompts, the end markers and
        the V_end definition (batching and packing do not change them)."""
        body = json.dumps(
            [asdict(p) for p in self.prompts] + [list(self.ends.ids), self.v_end], sort_keys=True
        )
        return hashlib.sha256(body.encode()).hexdigest()


def crc(
    model: Any,
    tokenizer: Any = None,
    *,
    prompts: str | Path | Iterable[str] = "all",
    estimator: str = "exact",
    samples: int = 32,
    temperature: float = 1.0,
    min_p: float = 0.1,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    v_end: str = "strict",
) -> dict[str, Any]:
    """CRC validity, diversity and format (V, H, V_end) of one model: a path / hub id
    (``tokenizer``: another model's tokenizer, path or object, e.g. the post model's chat
    template for a base model), or a loaded model with its tokenizer. ``v_end``: how V_end
    is defined (:data:`~layergraft.slr.proxy.ends.V_END_MODES`)."""
    if estimator not in ("exact", "sample"):
        raise InputError(
            f"--estimator {estimator!r} is not 'exact' or 'sample'; choose one of them"
        )
    check_v_end(v_end)
    items = load_crc_prompts(prompts)  # a bad prompt file fails before the model loads
    if not hasattr(model, "forward"):
        model, tokenizer, _ = load_with_tokenizer(
            model, tokenizer=tokenizer, device=device, dtype=dtype, device_map=device_map
        )
    # the sampled estimator's replies end at the markers, whatever --v-end is
    found = v_end != "off" or estimator == "sample"
    ends = find_end_markers(tokenizer, model) if found else EndMarkers(())
    if estimator == "exact":
        res = crc_exact(model, tokenizer, items, batch_size=batch_size, ends=ends, v_end=v_end)
    else:  # "sample" (checked above)
        res = crc_sampled(
            model, tokenizer, items, samples=samples, temperature=temperature, min_p=min_p,
            seed=seed, batch_size=batch_size, ends=ends.ids, v_end=v_end,
        )  # fmt: skip
    out = res.to_dict()
    out["estimator"] = estimator
    out["v_end"] = {
        "definition": v_end if ends.ids else "unavailable",
        "end_markers": ends.as_json(),
    }
    if estimator == "sample":
        out["settings"] = {
            "samples": samples,
            "temperature": temperature,
            "min_p": min_p,
            "seed": seed,
        }
    return out
