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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class DemoSettings:
    """How much work each step does (``quick`` is the test-suite variant)."""

    crc_prompts: int | None  # None: all bundled CRC prompts
    tasks: tuple[str, ...]
    task_limit: int | None
    samples: int
    max_new_tokens: int
    prune_blocks: tuple[int, ...]
    calib_tokens: int
    ppl_max_tokens: int

    @staticmethod
    def make(quick: bool) -> DemoSettings:
        if quick:
            return DemoSettings(12, ("qa",), 6, 4, 24, (2,), 2048, 4096)
        return DemoSettings(None, ("qa", "creative", "reasoning"), 12, 16, 48, (2, 4), 8192, 16384)


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
    from layergraft.proxy.crc import load_crc_prompts

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


def run_demo(
    out: PathLike = "demo-out", *, quick: bool = False, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run every step on the toy pair and write ``out/`` (atomically): results.json,
    report.md, report.html, plots, the restored/souped models and the generations."""
    from layergraft.io.atomic import atomic_dir, check_output_target
    from layergraft.toy import toy_paths

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
    with atomic_dir(out, force=force) as tmp:
        results["inspect"] = steps.run(lambda: _inspect(base, post))
        results["sweep"] = steps.run(lambda: _sweep(base, post, tmp, cfg, progress))
        results["restore"] = steps.run(lambda: _restore(base, post, tmp, results["sweep"]))
        results["compare"] = steps.run(lambda: _compare(tmp, results, cfg, progress))
        results["pruning"] = steps.run(lambda: _prune(base, cfg, progress))
        results["timing_s"] = steps.timing

        def report() -> None:
            from layergraft.demo_report import write_reports

            write_reports(tmp, results)

        steps.run(report)
        results["timing_s"] = steps.timing
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def _inspect(base: Path, post: Path) -> dict[str, Any]:
    from layergraft.inspect import inspect_model

    return {"base": inspect_model(base), "post": inspect_model(post)}


def _sweep(base: Path, post: Path, tmp: Path, cfg: DemoSettings, progress: bool) -> dict[str, Any]:
    from layergraft.slr_api import sweep

    prompts = _crc_subset(cfg.crc_prompts, tmp / "crc_prompts.jsonl")
    res = sweep(base, post, tmp / "sweep", prompts=prompts, method="both", progress=progress)
    return res


def _restore(base: Path, post: Path, tmp: Path, sweep_res: dict[str, Any]) -> dict[str, Any]:
    """Write the selected hybrid and the best soup, reload the hybrid with plain transformers
    and check its logits against the in-memory swap the sweep scored."""
    import torch

    from layergraft.api import restore, soup
    from layergraft.loading import load_causal_lm
    from layergraft.surgery.swap import swapped_layers

    sel = sweep_res.get("selected")
    if not sel:
        return {"selected": None, "note": "no interval met the validity threshold"}
    interval = sel["interval"]
    slr_dir, soup_dir = tmp / "models" / "slr", tmp / "models" / "soup"
    restore(base, post, interval, slr_dir, progress=False)
    alpha = (sweep_res.get("soup") or {}).get("selected", {}) or {}
    if alpha:
        soup(base, post, alpha["alpha"], soup_dir, progress=False)
    hybrid, _, _ = load_causal_lm(slr_dir, device="cpu", with_tokenizer=False)
    mp, _, _ = load_causal_lm(post, device="cpu", with_tokenizer=False)
    mb, _, _ = load_causal_lm(base, device="cpu", with_tokenizer=False)
    ids = torch.arange(8, 40).reshape(1, -1)
    s, e = (int(x) for x in interval.split(":"))
    with torch.no_grad(), swapped_layers(mp, mb, [(s, e)]):
        ref = mp(ids).logits
    with torch.no_grad():
        got = hybrid(ids).logits
    return {
        "selected": interval,
        "slr_dir": "models/slr",
        "soup_dir": "models/soup" if alpha else None,
        "soup_alpha": alpha.get("alpha") if alpha else None,
        "reload_max_abs_logit_diff": float((got - ref).abs().max()),
    }


def _compare(
    tmp: Path, results: dict[str, Any], cfg: DemoSettings, progress: bool
) -> dict[str, Any]:
    from layergraft.generate import SamplingSettings
    from layergraft.generation_api import compare

    models: dict[str, Any] = {"post": results["models"]["post"], "base": results["models"]["base"]}
    r = results["restore"]
    if r.get("selected"):
        models["slr"] = str(tmp / r["slr_dir"])
    if r.get("soup_dir"):
        models["soup"] = str(tmp / r["soup_dir"])
    out: dict[str, Any] = {}
    for task in cfg.tasks:
        res = compare(
            models,
            task,
            tmp / "compare" / task,
            n=cfg.samples,
            limit=cfg.task_limit,
            settings=SamplingSettings(max_new_tokens=cfg.max_new_tokens),
            progress=progress,
        )
        out[task] = res
    return out


def _prune(base: Path, cfg: DemoSettings, progress: bool) -> dict[str, Any]:
    from layergraft.pruning_api import compare_recovery

    out: dict[str, Any] = {}
    for n in cfg.prune_blocks:
        out[f"remove_{n}"] = compare_recovery(
            str(base),
            auto=n,
            metric="angular",
            calib_tokens=cfg.calib_tokens,
            ppl_max_tokens=cfg.ppl_max_tokens,
        )
    return out
