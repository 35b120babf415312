"""``layergraft slr``: the whole SLR study on any base/post pair, as one resumable job.

Why one job: restoring layers is only worth it when the pick is trusted, and trusting it takes
five tools in a row (the CRC of both models, the sweep with both rules and validation by
generation, the hybrids written, the generations compared on three tasks, a report). Chained
by hand, each needs its own flags and a kill costs the lot. Here each is a step of a
:class:`~layergraft.study.job.Job` in its own folder of ``DIR``:

=============  ====================================================================
``check``      both models open, are one architecture, and their weights digests
``crc``        CRC validity, diversity and format of base and post (a first look)
``sweep``      every interval, interval soup, part and whole-model soup on the CRC
               proxy; both rules; the best candidates validated by generation
``hybrids``    the written hybrid (``DIR/hybrid``, a normal model directory) and the
               other hybrids compared (paper rule's pick, best soup), reloaded and
               checked against the in-memory hybrid the sweep scored
``compare/T``  generations of post, base, the hybrids and two decoding baselines on
               task T, scored for diversity and format
=============  ====================================================================

then ``results.json``, ``report.md`` and ``report.html`` from the steps' results. The same
command after a kill continues; a step reruns only when its settings or its inputs changed
(:mod:`layergraft.study.job`). ``layergraft demo`` is this job on the toy pair, plus pruning.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layergraft.checkpoint.atomic import write_json_atomic
from layergraft.checkpoint.describe import inspect_model
from layergraft.gen.compare import compare, safe_name
from layergraft.gen.records import weights_digest
from layergraft.gen.sampling import SamplingSettings
from layergraft.models.load import load_model, open_loadable
from layergraft.models.placement import check_placement
from layergraft.models.threads import apply_threads
from layergraft.report.demo import write_reports
from layergraft.slr.hybrid import candidate
from layergraft.slr.hybrid.pair import check_compatible
from layergraft.slr.proxy.crc import crc
from layergraft.slr.sweep.config import SELECTION_FIELDS
from layergraft.slr.sweep.journal import JOURNAL
from layergraft.slr.sweep.run import make_config, sweep
from layergraft.study.inputs import (
    JOB_FILE,
    check_also,
    check_chat_tokenizer,
    jsonable,
    model_spec,
    open_job_dir,
    prompt_subset,
)
from layergraft.study.job import Job, Step, empty
from layergraft.study.selection import ROLE_LABELS, ROLES, compared_roles, crc_line, selection
from layergraft.study.settings import DEFAULT, QUICK, StudySettings

PathLike = str | os.PathLike[str]


class SlrStudy:
    """The SLR study of one pair in one job directory (module doc): the steps in order."""

    def __init__(
        self,
        base: PathLike,
        post: PathLike,
        root: Path,
        settings: StudySettings,
        *,
        tokenizer: PathLike | None = None,
        placement: dict[str, Any] | None = None,
        progress: bool = True,
        executor: Any = None,
        gen_executor: Any = None,
        say: Callable[[str], None] = print,
        also: dict[str, PathLike] | None = None,
        roles: tuple[str, ...] = ROLES,
    ) -> None:
        self.also = {k: model_spec(v) for k, v in (also or {}).items()}
        self.roles = roles
        self.base, self.post = model_spec(base), model_spec(post)
        self.root, self.cfg = root, settings
        self.tokenizer = model_spec(tokenizer) if tokenizer is not None else None
        self.placement = placement or {"device": None, "dtype": "auto", "device_map": None}
        self.progress, self.executor, self.gen_executor = progress, executor, gen_executor
        self.say = say
        self.job = Job(root, say=say)
        self.digests: dict[str, str | None] = {}

    def open_pair(self) -> int:
        """Open both models (configs only), check they are one architecture, and record their
        weights digests, the inputs of every step; the number of decoder layers."""
        base_ck, post_ck = open_loadable(self.base), open_loadable(self.post)
        check_compatible(base_ck, post_ck)
        self.digests = {"base": weights_digest(self.base), "post": weights_digest(self.post)}
        return post_ck.adapter.num_layers

    # -- steps --------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """Both models open and are one architecture; their weights digests (the inputs of
        every later step: a model trained again at its path reruns them)."""
        self.open_pair()
        step = Step(
            "check", {}, {"models": {"base": self.base, "post": self.post}, **self.digests},
            lambda folder: {"base": inspect_model(self.base), "post": inspect_model(self.post)},
        )  # fmt: skip
        return self.job.run(step)

    def crc(self, prompts: str) -> dict[str, Any]:
        """CRC of base (in the post model's chat format) and post: is the post model collapsed,
        and does it answer in format? Cheap, and said before the long sweep."""

        def run(folder: Path) -> dict[str, Any]:
            out = {}
            for name, path in (("post", self.post), ("base", self.base), *self.also.items()):
                res = crc(path, self.tokenizer or self.post, prompts=prompts, **self.placement)
                out[name] = {**res["mean"], "v_end": res["v_end"]}
            write_json_atomic(folder / "results.json", out)
            return out

        return self.job.run(Step("crc", self.crc_settings(prompts), self.crc_inputs(), run))

    def crc_inputs(self) -> dict[str, Any]:
        return {**self.digests, **{k: weights_digest(v) for k, v in self.also.items()}}

    def crc_settings(self, prompts: str) -> dict[str, Any]:
        # the count names the subset's content: its file has one path for every count
        return {"prompts": prompts, "crc_prompts": self.cfg.crc_prompts,
                "tokenizer": self.tokenizer, "v_end": "strict",
                "placement": jsonable(self.placement)}  # fmt: skip

    def sweep_config(self, prompts: str) -> Any:
        c = self.cfg
        return make_config({
            "prompts": prompts, "method": "both", "parts": c.parts, "alphas": c.alphas,
            "rule": c.rule, "validate": c.validate, "validate_samples": c.validate_samples,
            "search": c.search, "seed": c.seed,
        })  # fmt: skip

    def sweep_settings(self, cfg: Any) -> dict[str, Any]:
        return {"sweep": cfg.as_json(), "crc_prompts": self.cfg.crc_prompts,
                "tokenizer": self.tokenizer,
                "placement": jsonable(self.placement)}  # fmt: skip

    def sweep(self, prompts: str) -> dict[str, Any]:
        """The sweep with validation; its rows resume from their journal after a kill."""
        cfg = self.sweep_config(prompts)
        settings = self.sweep_settings(cfg)

        def run(folder: Path) -> dict[str, str]:
            out = folder / "out"
            resume = (out / JOURNAL).is_file()
            sweep(
                self.base, self.post, out, config=cfg, tokenizer=self.tokenizer, resume=resume,
                force=not resume, progress=self.progress, executor=self.executor,
                **self.placement,
            )  # fmt: skip
            return {"results": "sweep/out/results.json"}

        def prepare(folder: Path, old: dict[str, Any] | None) -> None:
            """Keep the scored rows when only what is selected from them changed (the rule,
            validation): the journal's own check refuses them otherwise."""
            keep = (
                old is not None
                and old.get("inputs") == dict(self.digests)
                and _rows_key(old["settings"]) == _rows_key(settings)
            )
            journal = folder / "out" / JOURNAL
            if keep and journal.is_file():
                for p in (folder / "out").iterdir():
                    if p.name != JOURNAL:
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
                for p in folder.iterdir():
                    if p.name != "out":
                        p.unlink()
            else:
                empty(folder)

        self.job.run(Step("sweep", settings, dict(self.digests), run, prepare))
        return json.loads((self.root / "sweep" / "out" / "results.json").read_text())

    def hybrids(self, roles: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Write each hybrid compared (the written one to ``DIR/hybrid``), with the commands a
        user would run, and check the written one: reloaded with plain transformers, its logits
        must equal the in-memory hybrid's the sweep scored."""
        todo = {role: r for role, r in roles.items() if "run" in r}

        def where(role: str) -> Path:
            return self.root / "hybrid" if role == "written" else self.root / "hybrids" / role

        def run(folder: Path) -> dict[str, Any]:
            picks: dict[str, Any] = {}
            for role, r in roles.items():
                if "same_as" in r:
                    picks[role] = {**picks[r["same_as"]], "same_as": r["same_as"]}
                    continue
                candidate.write(r["row"], self.base, self.post, where(role), force=True,
                                progress=False)  # fmt: skip
                picks[role] = {"hybrid": r["label"], "what": r["what"],
                               "dir": str(where(role).relative_to(self.root)),
                               "family": r["row"].get("family")}  # fmt: skip
            out: dict[str, Any] = {"picks": picks}
            if todo:
                check = "written" if "written" in todo else next(iter(todo))
                out["checked"] = check
                out["reload_max_abs_logit_diff"] = self._reload_diff(
                    todo[check]["row"], where(check)
                )
            return out

        def prepare(folder: Path, old: dict[str, Any] | None) -> None:
            empty(folder)
            shutil.rmtree(self.root / "hybrid", ignore_errors=True)

        inputs = {**self.digests, "roles": {k: _row_id(v) for k, v in roles.items()}}
        return self.job.run(Step("hybrids", {}, inputs, run, prepare))

    def _reload_diff(self, row: dict[str, Any], path: Path) -> float:
        import torch

        mp = load_model(self.post, **self.placement)
        mb = load_model(self.base, **self.placement)
        ids = torch.arange(8, 40).reshape(1, -1).to(next(mp.parameters()).device)
        with torch.no_grad(), candidate.in_memory(row, mp, mb):
            ref = mp(ids).logits.float().cpu()
        del mp, mb
        hybrid = load_model(path, **self.placement)
        with torch.no_grad():
            got = hybrid(ids).logits.float().cpu()
        return float((got - ref).abs().max())

    def compare(self, task: str, models: dict[str, str]) -> dict[str, Any]:
        """Generations of every model on ``task``; each model's file resumes after a kill and
        is kept when only other models changed."""
        c = self.cfg
        sampling = SamplingSettings(max_new_tokens=c.budgets[task], seed=c.seed)
        settings = {"n": c.n, "limit": c.limit, "sampling": sampling.to_json(),
                    "tokenizer": self.tokenizer, "placement": jsonable(self.placement)}  # fmt: skip
        digests = {k: self.digests.get(k) or weights_digest(v) for k, v in models.items()}
        name = f"compare/{task}"

        def run(folder: Path) -> dict[str, Any]:
            compare(
                models, task, folder, n=c.n, limit=c.limit, settings=sampling,
                tokenizer=self.tokenizer, progress=self.progress, seed=c.seed,
                executor=self.gen_executor, **self.placement,
            )  # fmt: skip
            return {"results": f"{name}/results.json"}

        def prepare(folder: Path, old: dict[str, Any] | None) -> None:
            """Keep the generations of models whose weights and sampling did not change."""
            same = old is not None and old["settings"]["sampling"] == settings["sampling"]
            gens = folder / "gens"
            for p in list(folder.iterdir()):
                if p != gens:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            if not same or not gens.is_dir():
                shutil.rmtree(gens, ignore_errors=True)
                return
            old_digests = old.get("inputs", {})
            for label in set(old_digests) | set(digests):
                if old_digests.get(label) != digests.get(label):
                    safe = safe_name(label)
                    for f in [*gens.glob(f"{safe}.jsonl"), *gens.glob(f"{safe}@*.jsonl")]:
                        f.unlink()

        self.job.run(Step(name, settings, digests, run, prepare))
        return json.loads((self.root / name / "results.json").read_text())

    # -- the whole job ------------------------------------------------------------------
    def run(
        self, extra: Callable[[SlrStudy], dict[str, Any]] | None = None, job: str = "slr"
    ) -> dict[str, Any]:
        """Every step, then results.json and the reports (``extra``: more results, e.g. the
        demo's pruning, computed after the comparison; ``job`` names the job in them)."""
        c = self.cfg
        write_json_atomic(self.root / JOB_FILE, {"job": job, "base": self.base, "post": self.post})
        inspect = self.check()
        prompts = prompt_subset(c.crc_prompts, self.root / "inputs" / "crc_prompts.jsonl")
        crc_res = self.crc(prompts)
        self.say(crc_line(crc_res))
        sw = self.sweep(prompts)
        sel = selection(sw)
        roles = compared_roles(sel, sw, self.roles)
        restored = self.hybrids(roles)
        models = {"post": self.post, "base": self.base, **self.also}
        for role, r in roles.items():
            if "run" in r:
                models[r["run"]] = str(self.root / restored["picks"][role]["dir"])
        sel["compared"] = {"post": "post", "base": "base", **{
            role: ROLE_LABELS[r.get("same_as", role)] for role, r in roles.items()}}  # fmt: skip
        results: dict[str, Any] = {
            "job": job,
            "quick": c == QUICK,
            "models": {
                "base": self.base,
                "post": self.post,
                "tokenizer": self.tokenizer,
                "also": self.also,
            },
            "settings": c.as_json(),
            "inspect": inspect,
            "crc": crc_res,
            "sweep": sw,
            "selection": sel,
            "restore": {
                **restored,
                "picks": {ROLE_LABELS[k]: v for k, v in restored["picks"].items()},
            },
            "compare": {task: self.compare(task, models) for task in c.tasks},
        }
        if extra is not None:
            results.update(extra(self))
        results["timing_s"] = self.job.timing()
        write_reports(self.root, results)
        write_json_atomic(self.root / "results.json", results)
        write_json_atomic(self.root / "job.log.json", self.job.log)
        return results


def _rows_key(settings: dict[str, Any]) -> Any:
    sw = dict(settings.get("sweep") or {})
    rest = {k: v for k, v in settings.items() if k != "sweep"}
    return {**rest, "sweep": {k: v for k, v in sw.items() if k not in SELECTION_FIELDS}}


def _row_id(role: dict[str, Any]) -> Any:
    """What identifies a compared hybrid: its label and its run (or the role it repeats)."""
    return {"label": role["label"], "run": role.get("run"), "same_as": role.get("same_as")}


def open_study(
    base: PathLike,
    post: PathLike,
    out: PathLike,
    *,
    settings: StudySettings | None = None,
    quick: bool = False,
    tokenizer: PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    executor: Any = None,
    gen_executor: Any = None,
    say: Callable[[str], None] = print,
    also: dict[str, PathLike] | None = None,
    roles: tuple[str, ...] = ROLES,
    threads: int | str | None = "auto",
    **changes: Any,
) -> SlrStudy:
    """The SLR study of ``base``/``post`` in the job directory ``out``, every check that needs
    only the arguments, paths and configs done and the directory opened: :meth:`SlrStudy.run`
    runs (or continues) it. For callers that append steps (``layergraft demo``, experiments).

    ``settings``: a :class:`~layergraft.study.settings.StudySettings` (default
    :data:`~layergraft.study.settings.DEFAULT`, or ``QUICK`` with ``quick``); ``changes``
    override single fields (``n=16``, ``tasks=("qa",)``). ``also``: more models, by
    name, measured on CRC and compared beside base and post (e.g. an SFT-only stage);
    ``roles``: which hybrids are compared (:func:`~layergraft.study.selection.compared_roles`).
    ``threads``: torch's CPU threads for the job, as ``--threads`` (``auto``: the cores other
    processes leave free, :mod:`layergraft.models.threads`; torch's own default of one thread
    per core ran a toy job 7x slower on a busy machine); None leaves torch's setting alone.
    """
    if threads is not None:
        apply_threads(threads)
    cfg = (settings or (QUICK if quick else DEFAULT)).replace(**changes)
    # everything that needs only the arguments, the paths and the configs, before any work
    base_ck, post_ck = open_loadable(base), open_loadable(post)
    check_compatible(base_ck, post_ck)
    also = check_also(also or {})
    check_chat_tokenizer(tokenizer, post)
    check_placement(device, dtype, device_map, models=[base_ck, post_ck])
    root = open_job_dir(out, [base_ck, post_ck, tokenizer, *also.values()], force)
    root.mkdir(exist_ok=True)
    study = SlrStudy(
        base, post, root, cfg, tokenizer=tokenizer, progress=progress, executor=executor,
        gen_executor=gen_executor, say=say, also=also, roles=roles,
        placement={"device": device, "dtype": dtype, "device_map": device_map},
    )  # fmt: skip
    return study


def slr(base: PathLike, post: PathLike, out: PathLike, **kwargs: Any) -> dict[str, Any]:
    """Run (or continue) the SLR study of ``base``/``post`` in ``out`` (module doc); the
    keyword arguments are :func:`open_study`'s (``quick``, ``settings``, single settings such
    as ``n=16``, ``tokenizer``, placement, ``threads``, ``also``, ...). Returns the results
    dict, also written to ``out/results.json`` beside ``report.html``; the written hybrid is
    ``out/hybrid`` (see ``results["selection"]["written"]``)."""
    return open_study(base, post, out, **kwargs).run()
