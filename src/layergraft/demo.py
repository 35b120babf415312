"""``layergraft demo``: the main job (``layergraft slr``) on the bundled toy pair, plus pruning.

Why the demo is the main job and not a script of its own: it is the first thing a new user
runs, so it must show exactly what ``layergraft slr`` does on their own pair (the same steps,
the same report, the same words for what was selected), offline on 2 CPU cores, in about two
minutes. Pruning of the toy base with every recovery method is appended as one more step.
Every number in ``report.md`` / ``report.html`` comes from ``results.json`` of the run; like
any job directory, running it again reuses what is done (``--force`` starts over).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layergraft.prune.compare import compare_recovery
from layergraft.study.job import Step
from layergraft.study.settings import DEMO, QUICK
from layergraft.study.slr import SlrStudy, open_study
from layergraft.toy import toy_paths

PathLike = str | os.PathLike[str]

#: the toy pair's context (max_position_embeddings): the perplexity chunk length of the demo
TOY_CONTEXT = 512


@dataclass(frozen=True)
class PruneDemo:
    """How much pruning the demo does (``quick``: the test suite's)."""

    blocks: tuple[int, ...]  # layers removed, one comparison each
    calib_tokens: int
    ppl_max_tokens: int

    @staticmethod
    def make(quick: bool) -> PruneDemo:
        return PruneDemo((2,), 2048, 4096) if quick else PruneDemo((2, 4), 8192, 16384)


def _pruning(cfg: PruneDemo, progress: bool, placement: dict[str, Any]) -> Any:
    """The pruning step: every recovery method on the toy base, per number of layers removed."""

    def extra(study: SlrStudy) -> dict[str, Any]:
        def run(folder: Path) -> dict[str, Any]:
            return {
                f"remove_{n}": compare_recovery(
                    study.base,
                    auto=n,
                    metric="angular",
                    calib_tokens=cfg.calib_tokens,
                    ppl_max_tokens=cfg.ppl_max_tokens,
                    ppl_seqlen=TOY_CONTEXT,  # the papers' 2048 does not fit the toy's context
                    progress=progress,
                    **placement,
                )  # fmt: skip
                for n in cfg.blocks
            }

        step = Step("pruning", asdict(cfg), {"base": study.digests["base"]}, run)
        return {"pruning": study.job.run(step), "prune_settings": asdict(cfg)}

    return extra


def run_demo(
    out: PathLike = "demo-out",
    *,
    quick: bool = False,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    threads: int | str | None = "auto",
) -> dict[str, Any]:
    """Run (or continue) the demo job in ``out``: results.json, report.md, report.html,
    plots, the written hybrid (``out/hybrid``) and the generations. ``threads``: as
    :func:`layergraft.study.slr.open_study`'s."""
    base, post = toy_paths()
    study = open_study(
        base, post, out, settings=QUICK if quick else DEMO, force=force, progress=progress,
        device=device, dtype=dtype, device_map=device_map, threads=threads,
        say=print if progress else (lambda s: None),
    )  # fmt: skip
    placement = {"device": device, "dtype": dtype, "device_map": device_map}
    return study.run(extra=_pruning(PruneDemo.make(quick), progress, placement), job="demo")
