"""``--search halving``: a cheap first pass on a quarter of the prompts, then only the
candidates that can still win are scored on the rest.

Why: most hybrids of a deep pair are clearly too broken (V far below the threshold) or
clearly less diverse than the best; a quarter of the prompts says so at a quarter of the cost.

1. **Stage 1.** Every candidate is scored on a fixed, seeded quarter of the prompts (a
   quarter of each category, at least :data:`MIN_STAGE1` prompts), with every prompt's
   scores kept.
2. **Drop.** Bounds are paired, per-prompt bootstrap intervals (:data:`RESAMPLES` resamples
   of the stage-1 prompts, seeded, percentile, :data:`LEVEL` two-sided), narrowed by the
   finite-population correction because the target is the mean over the whole prompt set,
   of which the quarter is a sample without replacement. A candidate is dropped when
   (a) it is clearly ineligible: the upper bound of ``mean(V - ratio V_post)`` (and, under the
   format rule, of ``mean(V_end - ratio V_end_post)``) is below 0; or (b) it cannot be among
   the ``k`` best of its family: ``k`` clearly eligible candidates of the same family each
   beat it, the upper bound of ``mean(H_c - H_b)`` being below 0 (``k`` = 1, or
   ``--validate K``, so validation still gets its K per family).
3. **Stage 2.** The survivors (and the two references) are scored on the other prompts; each
   row's means are then taken over all prompts, in prompt order, exactly as a full sweep does.

What it guarantees: the active rule's choice equals the exhaustive one's unless a bound was
wrong (a few percent of comparisons at the chosen level; tested on the toy pair, measured
on real pairs by ``benchmarks/bench_sweep.py``). The other rule's choice is not protected.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

from layergraft.slr.sweep.assemble import family_of, usable_rules
from layergraft.slr.sweep.journal import row_key, rows_in_plan_order

log = logging.getLogger(__name__)

FRACTION = 0.25
MIN_STAGE1 = 8
RESAMPLES = 2000
LEVEL = 0.99


def stage_prompts(categories: Sequence[str], seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Positions of the stage-1 prompts (a seeded quarter of each category) and of the rest."""
    import random

    rng = random.Random(seed)
    first: list[int] = []
    for cat in sorted(set(categories)):
        where = [i for i, c in enumerate(categories) if c == cat]
        first += rng.sample(where, max(1, math.ceil(FRACTION * len(where))))
    while len(first) < min(MIN_STAGE1, len(categories)):
        first.append(rng.choice([i for i in range(len(categories)) if i not in first]))
    chosen = set(first)
    return tuple(sorted(chosen)), tuple(i for i in range(len(categories)) if i not in chosen)


class _Bounds:
    """Paired bootstrap bounds of mean differences over the stage-1 prompts."""

    def __init__(self, n_stage1: int, n_all: int, seed: int) -> None:
        import numpy as np

        self.np = np
        rng = np.random.default_rng(seed)
        self.idx = rng.integers(0, n_stage1, size=(RESAMPLES, n_stage1))
        self.fpc = math.sqrt((n_all - n_stage1) / max(n_all - 1, 1))
        self.q = (1 - LEVEL) / 2

    def interval(self, diff: Sequence[float]) -> tuple[float, float]:
        np = self.np
        d = np.asarray(diff, dtype=np.float64)
        mean = float(d.mean())
        boot = d[self.idx].mean(axis=1)
        lo, hi = np.quantile(boot, [self.q, 1 - self.q])
        return mean - (mean - float(lo)) * self.fpc, mean + (float(hi) - mean) * self.fpc


def decide(
    rows: Sequence[dict[str, Any]],
    *,
    rule: str,
    validity_ratio: float,
    end_ratio: float,
    diversity_key: str,
    keep: int,
    n_all: int,
    seed: int,
) -> dict[str, Any]:
    """Which stage-1 candidates survive (module doc): ``{"survivors", "dropped"}`` where
    ``dropped`` maps a key (without the stage prefix) to the reason."""
    refs = {r["name"]: r["scores"]["items"] for r in rows if r["kind"] == "reference"}
    post = refs["post"]
    cands = [r for r in rows if r["kind"] != "reference"]
    n1 = len(post["V"])
    bounds = _Bounds(n1, n_all, seed)

    def gap(items: dict[str, Any], key: str, ratio: float) -> tuple[float, float]:
        return bounds.interval([a - ratio * b for a, b in zip(items[key], post[key], strict=True)])

    checks = [("V", validity_ratio)] + ([("V_end", end_ratio)] if rule == "format" else [])
    info: dict[str, dict[str, Any]] = {}
    for r in cands:
        items, key = r["scores"]["items"], row_key({**r, "stage": 0})
        eligible = True
        clearly = True
        why = None
        for name, ratio in checks:
            lo, hi = gap(items, name, ratio)
            if hi < 0:
                eligible, why = (
                    False,
                    f"clearly ineligible: {name} below the threshold (upper bound {hi:+.3f})",
                )
            if lo < 0:
                clearly = False
        info[key] = {
            "row": r,
            "family": family_of(r),  # a soup row has no "start"
            "out": why,
            "clearly": eligible and clearly,
        }
    for key, x in info.items():
        if x["out"] is not None:
            continue
        mine = x["row"]["scores"]["items"][diversity_key]
        beaten_by = []
        for other_key, y in info.items():
            if other_key == key or not y["clearly"] or y["family"] != x["family"]:
                continue
            theirs = y["row"]["scores"]["items"][diversity_key]
            _, hi = bounds.interval([a - b for a, b in zip(mine, theirs, strict=True)])
            if hi < 0:
                beaten_by.append(other_key)
                if len(beaten_by) >= keep:
                    break
        if len(beaten_by) >= keep:
            x["out"] = f"cannot win: less diverse than {', '.join(beaten_by)} (paired bound)"
    survivors = [k for k, x in info.items() if x["out"] is None]
    return {
        "survivors": survivors,
        "dropped": {k: x["out"] for k, x in info.items() if x["out"] is not None},
        "bounds": f"paired per-prompt bootstrap, {RESAMPLES} resamples, {LEVEL:.0%} two-sided, "
        f"finite-population corrected ({n1} of {n_all} prompts)",
    }


def decide_all(
    rows: Sequence[dict[str, Any]], *, rules: Sequence[str], **kw: Any
) -> dict[str, Any]:
    """:func:`decide` under every rule in ``rules`` (the active one first): a candidate drops
    only when no rule can pick it, with the active rule's reason.

    Why every rule: results.json reports the paper rule's pick beside the format rule's, and
    a candidate that cannot win under the active rule may still be the other rule's winner (on
    the Gemma pair the paper rule's 9:17 fails V_end; a format-only decision dropped it and
    halving reported 9:14 for the paper rule where the exhaustive sweep found 9:17)."""
    decs = [decide(rows, rule=r, **kw) for r in rules]
    alive: list[str] = []
    for d in decs:
        alive += [k for k in d["survivors"] if k not in alive]
    first = decs[0]
    return {
        "survivors": alive,
        "dropped": {k: why for k, why in first["dropped"].items() if k not in alive},
        "bounds": first["bounds"],
    }


def merge(
    stage1: Sequence[dict[str, Any]], stage2: Sequence[dict[str, Any]], summary: Any
) -> list[dict[str, Any]]:
    """Rows over all prompts from each survivor's two stage rows: the per-prompt scores in
    prompt order, then ``summary(items)`` for the means (the proxy's own summary)."""
    second = {row_key({**r, "stage": 0}): r for r in stage2}
    out = []
    for r in stage1:
        key = row_key({**r, "stage": 0})
        if key not in second:
            continue
        a, b = r["scores"]["items"], second[key]["scores"]["items"]
        order = sorted(range(len(a["index"]) + len(b["index"])),
                       key=lambda i: (a["index"] + b["index"])[i])  # fmt: skip
        items = {k: [(a[k] + b[k])[i] for i in order] for k in a}
        row = {k: v for k, v in r.items() if k != "stage"}
        out.append({**row, "scores": summary(items)})
    return out


def staged(units: Sequence[Any], stage: int, survivors: set[str] | None = None) -> list[Any]:
    """``units`` for ``stage``; with ``survivors`` (keys without the stage prefix) only the
    references and the surviving hybrids (start units keep their surviving ends)."""
    out = []
    for u in units:
        if survivors is not None and u.kind == "start":
            keep = tuple(e for e, k in zip(u.ends, u.keys, strict=True) if k in survivors)
            if not keep:
                continue
            u = dataclasses.replace(u, ends=keep)
        elif survivors is not None and u.kind == "soup" and u.keys[0] not in survivors:
            continue
        out.append(dataclasses.replace(u, stage=stage))
    return out


def work(units: Sequence[Any], num_layers: int, share: float) -> float:
    """Decoder-layer forwards of ``units`` times the share of prompts they read."""
    return share * sum(u.cost(num_layers, True) for u in units)


def run_halving(
    run: Any, units: Sequence[Any], cfg: Any, proxy: Any, num_layers: int, *, rule: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both stages on ``run`` (an :class:`~layergraft.slr.sweep.execute.Execution`): the
    merged rows over all prompts, and what the search did (for results.json)."""
    cats = [p.category for p in proxy.prompts]
    first, rest = stage_prompts(cats, cfg.seed) if len(cats) >= MIN_STAGE1 else ((), ())
    if not rest:
        # too few prompts, or so many categories that a quarter of each is all of them:
        # a second stage would score nothing
        why = (
            f"--search halving needs more than {MIN_STAGE1} prompts, and more than one a category, "
            f"to bound a quarter of them; with {len(cats)} it could drop nothing, so every "
            "candidate is scored on all"
        )
        log.warning("%s", why)
        run.run(units)
        return rows_in_plan_order(run.rows, units), {
            "kind": "exhaustive",
            "fell_back": why,
        }
    run.stages = {1: first, 2: rest}
    if run.spec is not None:
        run.spec = dataclasses.replace(run.spec, stages=run.stages)
    u1 = staged(units, 1)
    run.run(u1)
    # in plan order, not the journal's: on Ray rows arrive in the order workers finish, and
    # which rivals a "cannot win" names (the first ``keep`` found) and the order of
    # results.json's "dropped" must not depend on that
    rows1 = rows_in_plan_order(run.rows, u1)
    # every rule results.json reports (assemble's usable_rules: format only where V_end was read)
    post = next(r["scores"] for r in rows1 if r["kind"] == "reference" and r["name"] == "post")
    usable, _ = usable_rules(post, rule)
    rules = [rule] + [n for n in usable if n != rule]
    dec = decide_all(
        rows1, rules=rules, validity_ratio=cfg.validity_ratio, end_ratio=cfg.end_ratio,
        diversity_key=cfg.diversity_key, keep=cfg.validate or 1, n_all=len(cats), seed=cfg.seed,
    )  # fmt: skip
    u2 = staged(units, 2, set(dec["survivors"]))
    run.run(u2)
    rows2 = rows_in_plan_order(run.rows, u2)
    share1, share2 = len(first) / len(cats), len(rest) / len(cats)
    full = work(units, num_layers, 1.0)
    spent = work(u1, num_layers, share1) + work(u2, num_layers, share2)
    info = {
        "kind": "halving",
        "rule": rule,
        "kept_for_rules": rules,
        "stage1_prompts": list(first),
        "candidates": len(dec["survivors"]) + len(dec["dropped"]),
        "survivors": len(dec["survivors"]),
        "dropped": dec["dropped"],
        "bounds": dec["bounds"],
        "work_share": round(spent / full, 4) if full else 1.0,
        "work_unit": "decoder-layer forwards x share of the prompts read",
    }
    return merge(rows1, rows2, proxy.summarize), info
