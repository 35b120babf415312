"""``layergraft demo``: the whole toolkit, end to end, on the bundled toy pair.

Why a demo command and not a notebook: it is the first thing a new user runs and the answer
to "does this work and what does it show?", so it must run offline on 2 CPU cores, measure
everything it reports in this very run, and leave a report a person would rather look at than
read. Every number in ``report.md`` / ``report.html`` comes from ``results.json`` of the run.

Steps: inspect both models -> CRC sweep + selection (+ soup baseline) -> restore the selected
interval to disk and reload it -> compare base / post / SLR / best soup on generation tasks
-> prune the toy base model with every recovery method -> report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layergraft.checkpoint.atomic import atomic_dir, check_output_target
from layergraft.checkpoint.describe import inspect_model
from layergraft.gen.compare import compare
from layergraft.gen.sampling import SamplingSettings
from layergraft.models.load import load_model
from layergraft.prune.compare import compare_recovery
from layergraft.report.demo import write_reports
from layergraft.slr.hybrid import candidate
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.slr.sweep.run import sweep
from layergraft.slr.sweep.selection import label as label_of
from layergraft.toy import toy_paths

PathLike = str | os.PathLike[str]


#: characters (the toy's tokens) per reply: the post model's longest replies, measured with a
#: 600-token budget on the bundled prompts, are 65 (qa), 77 (creative) and 65 (reasoning), so
#: these budgets cut none of them; the base model, which never learned to stop, runs to them
TOY_BUDGETS = {"qa": 96, "creative": 128, "reasoning": 96}

#: the toy pair's context (max_position_embeddings): the perplexity chunk length of the demo
TOY_CONTEXT = 512


@dataclass(frozen=True)
class DemoSettings:
    """How much work each step does (``quick`` is the test-suite variant)."""

    crc_prompts: int | None  # None: all bundled CRC prompts
    tasks: tuple[str, ...]
    task_limit: int | None
    samples: int
    budgets: dict[str, int]  # max new tokens per task: long enough for the post model's replies
    prune_blocks: tuple[int, ...]
    calib_tokens: int
    ppl_max_tokens: int
    alphas: tuple[float, ...] = (0.5, 1.0)  # interval soups at alpha 0.5 beside SLR itself
    validate: int = 1  # candidates per family validated by generation
    validate_samples: int = 2

    @staticmethod
    def make(quick: bool) -> DemoSettings:
        if quick:
            return DemoSettings(
                12, ("qa",), 6, 4, TOY_BUDGETS, (2,), 2048, 4096, validate_samples=1
            )
        return DemoSettings(
            None, ("qa", "creative", "reasoning"), 12, 16, TOY_BUDGETS, (2, 4), 8192, 16384
        )


class _Steps:
    """One line per step with its name, number and elapsed time (bars come from the steps)."""

    def __init__(self, names: list[str], enabled: bool) -> None:
        self.names, self.enabled, self.i = names, enabled, 0
        self.timing: dict[str, float] = {}
        self.t_start = time.perf_counter()

    def run(self, fn: Callable[[], Any]) -> Any:
        name = self.names[self.i]
        self.i += 1
        if self.enabled:
            print(f"[{self.i}/{len(self.names)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        self.timing[name] = round(dt, 2)
        if self.enabled:
            total = time.perf_counter() - self.t_start
            print(
                f"[{self.i}/{len(self.names)}] {name}: done in {dt:.1f}s (elapsed {total:.1f}s)",
                flush=True,
            )
        return out


def _crc_subset(n: int | None, path: Path) -> str | Path:
    """The bundled CRC prompts, or an even subset of both categories for --quick."""
    if n is None:
        return "all"
    items = load_crc_prompts("all")
    cats = sorted({p.category for p in items})
    picked = [p for c in cats for p in [x for x in items if x.category == c][: n // len(cats)]]
    path.write_text(
        "".join(
            json.dumps(
                {"id": p.id, "category": p.category, "prompt": p.prompt, "valid": list(p.valid)}
            )
            + "\n"
            for p in picked
        )
    )
    return path


@dataclass
class _Run:
    """What every step of one demo run shares: the pair, the temp output dir, the settings."""

    base: Path
    post: Path
    tmp: Path
    cfg: DemoSettings
    progress: bool
    placement: dict[str, Any] = field(default_factory=dict)

    def inspect(self) -> dict[str, Any]:
        return {"base": inspect_model(self.base), "post": inspect_model(self.post)}

    def sweep(self) -> dict[str, Any]:
        """The sweep a user should trust: every family (intervals, interval soups at alpha
        0.5, part restores, whole-model soups), the format rule, and the best candidates of
        each family validated by generation."""
        prompts = _crc_subset(self.cfg.crc_prompts, self.tmp / "crc_prompts.jsonl")
        return sweep(
            self.base, self.post, self.tmp / "sweep", prompts=prompts, method="both",
            parts="attn,mlp,all", alphas=self.cfg.alphas, rule="format",
            validate=self.cfg.validate, validate_samples=self.cfg.validate_samples,
            progress=self.progress, **self.placement,
        )  # fmt: skip

    def restore(self, sweep_res: dict[str, Any]) -> dict[str, Any]:
        """Write the hybrids the comparison generates from — the paper rule's pick, the
        format rule's pick, the validated choice and the best soup (each once) — with the
        commands a user would run, reload the validated one with plain transformers and
        check its logits against the in-memory hybrid the sweep scored."""
        import torch

        picks = demo_picks(sweep_res)
        if not picks:
            return {"picks": {}, "note": "no hybrid met the rules"}
        (self.tmp / "models").mkdir()  # outputs need an existing parent (checkpoint.outputs)
        written: dict[str, dict[str, Any]] = {}
        for label, row in picks.items():
            same = next((k for k, v in written.items() if v["hybrid"] == row["label"]), None)
            if same is not None:
                written[label] = {**written[same], "same_as": same}
                continue
            out = self.tmp / "models" / label
            candidate.write(row, self.base, self.post, out, progress=False)
            written[label] = {"hybrid": row["label"], "what": candidate.describe(row),
                              "dir": f"models/{label}", "family": row["family"]}  # fmt: skip
        check = picks.get("validated") or next(iter(picks.values()))
        mp = load_model(self.post, device="cpu")
        mb = load_model(self.base, device="cpu")
        ids = torch.arange(8, 40).reshape(1, -1)
        with torch.no_grad(), candidate.in_memory(check, mp, mb):
            ref = mp(ids).logits
        label = next(k for k, v in picks.items() if v is check)
        hybrid = load_model(self.tmp / written[label]["dir"], device="cpu")
        with torch.no_grad():
            got = hybrid(ids).logits
        return {
            "picks": written,
            "checked": label,
            "reload_max_abs_logit_diff": float((got - ref).abs().max()),
        }

    def compare(self, restored: dict[str, Any]) -> dict[str, Any]:
        models: dict[str, Any] = {"post": str(self.post), "base": str(self.base)}
        for label, w in restored.get("picks", {}).items():
            if "same_as" not in w:
                models[label] = str(self.tmp / w["dir"])
        (self.tmp / "compare").mkdir()  # outputs need an existing parent (checkpoint.outputs)
        return {
            task: compare(
                models,
                task,
                self.tmp / "compare" / task,
                n=self.cfg.samples,
                limit=self.cfg.task_limit,
                settings=SamplingSettings(max_new_tokens=self.cfg.budgets[task]),
                progress=self.progress,
                **self.placement,
            )  # fmt: skip
            for task in self.cfg.tasks
        }

    def prune(self) -> dict[str, Any]:
        return {
            f"remove_{n}": compare_recovery(
                str(self.base),
                auto=n,
                metric="angular",
                calib_tokens=self.cfg.calib_tokens,
                ppl_max_tokens=self.cfg.ppl_max_tokens,
                ppl_seqlen=TOY_CONTEXT,  # the papers' 2048 does not fit the toy's context
                progress=self.progress,
                **self.placement,
            )  # fmt: skip
            for n in self.cfg.prune_blocks
        }


def demo_picks(sweep_res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The hybrids the demo writes and compares, by label: the paper rule's and the format
    rule's most diverse over every family, the validated choice, and the best soup."""
    best = sweep_res.get("best") or {}
    out: dict[str, dict[str, Any]] = {}
    for label, row in (
        ("paper", best.get("paper")),
        ("format", best.get("format")),
        ("validated", (sweep_res.get("validation") or {}).get("chosen")),
        ("soup", (sweep_res.get("soup") or {}).get("selected")),
    ):
        if row:
            row = {**row, "family": row.get("family", "soup")}
            row.setdefault("label", label_of(row))
            out[label] = row
    return out


def run_demo(
    out: PathLike = "demo-out",
    *,
    quick: bool = False,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> dict[str, Any]:
    """Run every step on the toy pair and write ``out/`` (atomically): results.json,
    report.md, report.html, plots, the restored/souped models and the generations."""
    check_output_target(out, force=force)
    cfg = DemoSettings.make(quick)
    base, post = toy_paths()
    steps = _Steps(
        ["inspect", "CRC sweep", "restore + reload", "generation compare", "pruning", "report"],
        progress,
    )
    results: dict[str, Any] = {
        "quick": quick,
        "settings": cfg.__dict__,
        "models": {"base": str(base), "post": str(post)},
    }
    placement = {"device": device, "dtype": dtype, "device_map": device_map}
    with atomic_dir(out, force=force) as tmp:
        run = _Run(base, post, tmp, cfg, progress, placement)
        results["inspect"] = steps.run(run.inspect)
        results["sweep"] = steps.run(run.sweep)
        results["restore"] = steps.run(lambda: run.restore(results["sweep"]))
        results["compare"] = steps.run(lambda: run.compare(results["restore"]))
        results["pruning"] = steps.run(run.prune)
        results["timing_s"] = steps.timing
        steps.run(lambda: write_reports(tmp, results))
        results["timing_s"] = steps.timing
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results
