"""``layergraft slr --dry-run``: what every step of the job will do and cost, before it runs.

Why measured and not guessed: the job's cost is the sweep (planned by
:mod:`layergraft.slr.sweep.plan`, which times the post model's layers and head on the real
batches) and the generations (validation and the task comparison), whose cost is decode steps.
So the post model is loaded once more, one batch of generation is timed, and every step's
count is multiplied by what was measured. Generation time is an upper bound: it assumes every
reply runs to its token budget (a post model that stops early costs less). What the job
directory already holds is said per step (reused, continued, or run).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from layergraft.gen.tasks import load_task
from layergraft.models.load import load_model, load_tokenizer
from layergraft.models.placement import check_placement
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.slr.sweep.run import sweep
from layergraft.slr.sweep.validate import VALIDATION_SET, VALIDATION_TOKENS
from layergraft.study.inputs import open_job_dir, prompt_subset
from layergraft.study.job import Job, Step
from layergraft.study.settings import StudySettings
from layergraft.study.slr import SlrStudy

PathLike = str | os.PathLike[str]
_GIB = 1024**3
#: the batch of generation the engine uses (compare's and validation's default)
GEN_BATCH = 16


def time_decode(
    post: PathLike, tokenizer: PathLike | None, placement: dict[str, Any]
) -> dict[str, float]:
    """Seconds of one decode step for a batch of :data:`GEN_BATCH` rows (median of a short
    sampled generation, after a warm-up), and the model's bytes and KV-cache bytes per token."""
    import torch

    model = load_model(post, **placement)
    tok = load_tokenizer(tokenizer or post)
    ids = tok(["Tell me a short story about a lighthouse."] * GEN_BATCH, return_tensors="pt")
    ids = {k: v.to(next(model.parameters()).device) for k, v in ids.items()}
    steps = 8

    def run() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=True,
                           pad_token_id=tok.pad_token_id or tok.eos_token_id or 0)  # fmt: skip
        return time.perf_counter() - t0

    run()
    step_s = sorted(run() for _ in range(3))[1] / steps
    cfg = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    kv_per_token = 2 * cfg.num_hidden_layers * heads * head_dim * elem
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"decode_step_s": step_s, "kv_bytes_per_token": kv_per_token, "weights_bytes": weights}


def _gen_cost(runs: int, rows: int, budget: int, m: dict[str, float]) -> dict[str, Any]:
    batches = runs * math.ceil(rows / GEN_BATCH)
    return {
        "generations": runs * rows,
        "decode_steps": batches * budget,
        "estimated_seconds_at_most": round(batches * budget * m["decode_step_s"], 1),
        "estimated_peak_memory_gib": round(
            (m["weights_bytes"] + GEN_BATCH * (budget + 64) * m["kv_bytes_per_token"]) / _GIB, 2
        ),
    }


def plan_slr(
    base: PathLike,
    post: PathLike,
    out: PathLike,
    settings: StudySettings,
    *,
    tokenizer: PathLike | None = None,
    also: dict[str, PathLike] | None = None,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> dict[str, Any]:
    """The plan of every step as data (:func:`format_job_plan` prints it). Nothing is written."""
    placement = {"device": device, "dtype": dtype, "device_map": device_map}
    also = also or {}
    check_placement(device, dtype, device_map, models=[])
    root = Path(out).absolute()
    if root.exists():
        open_job_dir(out, [base, post, tokenizer], force=False)
    study = SlrStudy(base, post, root, settings, tokenizer=tokenizer, placement=placement,
                     also=also, say=lambda s: None)  # fmt: skip
    num_layers = study.open_pair()
    prompts, scratch = "all", None
    if settings.crc_prompts is not None:  # the subset the job would write, in a scratch file
        scratch = Path(tempfile.mkdtemp(prefix="layergraft-plan-"))
        prompts = prompt_subset(settings.crc_prompts, scratch / "crc_prompts.jsonl")
    cfg = study.sweep_config(prompts)
    # the job's keys name the prompt file the job writes in its directory, not the scratch copy
    keyed = prompts if settings.crc_prompts is None else str(root / "inputs" / "crc_prompts.jsonl")
    n_crc = len(load_crc_prompts(prompts))
    try:
        sw = sweep(base, post, None, config=cfg, tokenizer=tokenizer, dry_run=True, progress=False,
                   **placement)["plan"]  # fmt: skip
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    m = time_decode(post, tokenizer, placement)
    job = Job(root, say=lambda s: None)

    def status(name: str, s: dict[str, Any], inputs: dict[str, Any]) -> str:
        if not root.exists():
            return "run"
        state = job.state(Step(name, s, inputs, lambda f: None))
        return {"done": "reused", "resume": "continued"}.get(state, "run")

    steps: dict[str, Any] = {}
    steps["check"] = {"what": "open both models, same architecture, weights digests",
                      "estimated_seconds": 1.0}  # fmt: skip
    layer_s, head_s = sw["measured"]["layer_s"], sw["measured"]["head_s"]
    steps["crc"] = {
        "what": f"CRC of base and post on {n_crc} prompts",
        "forwards": 2 * sw["batches"],
        "estimated_seconds": round(
            2 * (num_layers * layer_s + head_s) + sw["measured"]["setup_s"], 1
        ),  # fmt: skip
        "status": status("crc", study.crc_settings(keyed), study.crc_inputs()),
    }
    sweep_s = sw["estimated_seconds"]["prefix-reuse"]
    steps["sweep"] = {
        "what": f"{sw['intervals']} hybrids in {sw['units']} units, plus "
        f"{sw['references_and_soups']} references and soups",
        "layer_forwards": sw["layer_forwards"]["prefix-reuse"],
        "head_calls": sw["head_calls"],
        "estimated_seconds": sweep_s,
        "estimated_peak_memory_gib": sw["estimated_peak_memory_gib"],
        "status": status(
            "sweep", study.sweep_settings(study.sweep_config(keyed)), dict(study.digests)
        ),
        "plan": sw,
    }
    if settings.validate is not None:
        families = len(settings.parts) * len(settings.alphas) + 1  # + whole-model soups
        cands = 1 + settings.validate * families  # + the post model
        rows = len(load_task(VALIDATION_SET)) * settings.validate_samples
        steps["sweep"]["validation"] = {"candidates_at_most": cands,
                                        **_gen_cost(cands, rows, VALIDATION_TOKENS, m)}  # fmt: skip
    steps["hybrids"] = {
        "what": "write at most 3 hybrids (the written one, the paper rule's pick, the best soup) "
        "and reload the written one",
        "bytes_written_at_most": 3 * int(m["weights_bytes"]),
    }
    runs = 5 + 2 + len(also)  # post, base, 3 hybrids, 2 decoding baselines, the --also models
    for task in settings.tasks:
        rows = len(load_task(task, limit=settings.limit)) * settings.n
        steps[f"compare/{task}"] = {
            "what": f"{runs} runs x {rows} generations of at most {settings.budgets[task]} tokens",
            **_gen_cost(runs, rows, settings.budgets[task], m),
        }
    total = sum(
        s.get("estimated_seconds", s.get("estimated_seconds_at_most", 0.0))
        + (s.get("validation") or {}).get("estimated_seconds_at_most", 0.0)
        for s in steps.values()
    )
    return {
        "dry_run": True,
        "settings": settings.as_json(),
        "measured": {
            "decode_step_s": round(m["decode_step_s"], 5),
            "batch": GEN_BATCH,
            "weights_gib": round(m["weights_bytes"] / _GIB, 3),
        },  # fmt: skip
        "steps": steps,
        "estimated_total_seconds_at_most": round(total, 1),
    }


def format_job_plan(plan: dict[str, Any]) -> str:
    """A few readable lines per step."""
    lines = [f"plan of the SLR job (decode step of {plan['measured']['batch']} rows: "
             f"{plan['measured']['decode_step_s'] * 1e3:.1f} ms; weights "
             f"{plan['measured']['weights_gib']:.2f} GiB each)"]  # fmt: skip
    for name, s in plan["steps"].items():
        secs = s.get("estimated_seconds", s.get("estimated_seconds_at_most"))
        mem = s.get("estimated_peak_memory_gib")
        tail = []
        if secs is not None:
            tail.append(f"~{secs:.0f} s" if "estimated_seconds" in s else f"<= {secs:.0f} s")
        if mem is not None:
            tail.append(f"peak ~{mem:.2f} GiB")
        if s.get("status") in ("reused", "continued"):
            tail.append(s["status"])
        lines.append(f"  {name:<18} {s['what']}" + (f"  [{', '.join(tail)}]" if tail else ""))
        if name == "sweep":
            lines.append(f"  {'':<18} {s['layer_forwards']:,} decoder-layer forwards, "
                         f"{s['head_calls']:,} head calls")  # fmt: skip
            v = s.get("validation")
            if v:
                lines.append(f"  {'':<18} validation: at most {v['candidates_at_most']} models x "
                             f"{v['generations'] // v['candidates_at_most']} generations "
                             f"[<= {v['estimated_seconds_at_most']:.0f} s]")  # fmt: skip
    lines.append(f"total: at most ~{plan['estimated_total_seconds_at_most']:.0f} s "
                 "(generation assumes every reply runs to its budget)")  # fmt: skip
    return "\n".join(lines)
