"""Validation by generation: the sweep's best candidates must still chat before one is chosen.

Why: the proxy reads one or two tokens of a reply. A hybrid can score well there and still
never stop talking, or stop answering the question; only generating shows it. So the K most
diverse eligible candidates of each family (restored intervals, interval soups, part
restores, whole-model soups) and the post model itself generate a few replies to a small
held-out chat set (``data/tasks/validation.jsonl``: open QA and open-ended requests, none of
them a CRC prompt or a prompt of the three evaluation tasks), with the default decoding, in
memory (a swap or a blend of the loaded pair, nothing written). The gate, for every candidate:

* ``finished_rate`` (replies that end within the budget) >= ``ratio`` x the post model's, and
* ``valid_rate`` (QA replies that give a valid answer) >= ``ratio`` x the post model's.

The validated choice is the most diverse candidate (by the sweep's diversity score) that
passes; with none, the verdict says so and ``sweep --restore-best`` writes nothing.

Journaled like the sweep: ``OUT/validation.jsonl`` gets one line per candidate as it finishes
(same contract as the sweep journal), so a killed validation resumes with the candidates
still missing, and units run on the sweep's executor (one process, or Ray).

What ``sweep --resume`` reuses: a candidate's generations depend on the hybrid, the prompts
and the generation settings (``--validate-samples``, tokens, seed), not on which rule or
``--validate K`` chose it. So a resume with another rule, ratio or K keeps every journaled
candidate and generates only the ones it has not seen (rows of candidates no longer chosen
stay in the journal, unused); a resume with other generation settings or prompts validates
every candidate again from scratch (a warning names the setting), since old replies would
not be the replies the new settings give.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.score import make_embedder, score_records
from layergraft.gen.tasks import load_task
from layergraft.slr.hybrid.candidate import describe
from layergraft.slr.sweep.engines import Unit
from layergraft.slr.sweep.journal import Journal, read_journal, setting_differences
from layergraft.slr.sweep.worker import SweepWorker, validation_row

log = logging.getLogger(__name__)

#: the held-out chat set (a bundled task name, or a JSONL path)
VALIDATION_SET = "validation"
#: new tokens per reply: the set asks for short answers and one-sentence replies
VALIDATION_TOKENS = 96
#: the gate: a candidate keeps at least this share of the post model's finished/valid rate
GATE_RATIO = 0.9
#: family order in tables and ties
FAMILY_ORDER = ("interval", "interval_soup", "part:attn", "part:mlp", "part:norms", "soup")


class ValidationJournal(Journal):
    """``OUT/validation.jsonl``: one line per candidate's generations (module doc)."""

    name = "validation.jsonl"
    what = "validation"
    fix = "resume with the same --validate settings, or remove that file to validate again"
    #: what decides a candidate's generations; the rule and K only choose the candidates
    checked = ("prompts", "generation")

    @staticmethod
    def problem(row: Any) -> str | None:
        ok = isinstance(row, dict) and isinstance(row.get("label"), str)
        return (
            None
            if ok and isinstance(row.get("records"), list)
            else "is not a candidate's generations"
        )

    @staticmethod
    def key(row: dict[str, Any]) -> str:
        return row["label"]


def unit_of(label: str, row: dict[str, Any] | None) -> Unit:
    """A validation unit: the post model itself (``row`` None) or one candidate hybrid."""
    if row is None:
        return Unit("validate", name=label)
    if "start" not in row:  # a whole-model soup
        return Unit("validate", name=label, alpha=row["alpha"])
    return Unit(
        "validate", name=label, start=row["start"], ends=(row["end"],), alpha=row["alpha"],
        parts=row.get("parts", "all"),
    )  # fmt: skip


def settings_of(cfg: Any) -> dict[str, Any]:
    """What a worker needs to generate a validation unit (picklable)."""
    return {
        "task": VALIDATION_SET, "n": cfg.validate_samples, "max_new_tokens": VALIDATION_TOKENS,
        "seed": cfg.seed, "batch_size": 16,
    }  # fmt: skip


def choose_candidates(results: dict[str, Any], k: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The K most diverse eligible candidates of each family under the active rule, and a
    note per family that has fewer than K."""
    rule = results["rule"]["name"]
    pools = results.get("candidates", {}).get(rule, {})
    chosen, notes = [], []
    for fam in sorted(pools, key=lambda f: FAMILY_ORDER.index(f) if f in FAMILY_ORDER else 99):
        rows = pools[fam]
        if len(rows) < k:
            notes.append(
                f"{fam}: {len(rows)} eligible candidate(s), fewer than --validate {k}: all validated"
            )
        chosen += [{"family": fam, **r} for r in rows[:k]]
    return chosen, notes


def _metrics(records: list[dict[str, Any]], embedder: Any) -> dict[str, Any]:
    mean = score_records(records, embedder=embedder, bootstrap=0)["mean"]
    keep = ("finished_rate", "valid_rate", "format_validity", "distinct_valid_answers",
            "embedding_diversity", "mean_tokens")  # fmt: skip
    return {k: mean.get(k) for k in keep}


def _passes(m: dict[str, Any], post: dict[str, Any], ratio: float) -> tuple[bool, list[str]]:
    why = []
    for key in ("finished_rate", "valid_rate"):
        need = ratio * (post.get(key) or 0.0)
        got = m.get(key) or 0.0
        if got < need:
            why.append(f"{key} {got:.3f} < {need:.3f}")
    return not why, why


def validate_candidates(
    results: dict[str, Any],
    cfg: Any,
    *,
    out: Any,
    worker: Any,
    spec: Any,
    pair: Any,
    executor: Any,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate from the post model and every chosen candidate, score them, gate them and
    choose (module doc). Returns the ``validation`` section of results.json."""
    k = int(cfg.validate)
    cands, notes = choose_candidates(results, k)
    labels = ["post"] + [c["label"] for c in cands]
    units = [unit_of("post", None)] + [unit_of(c["label"], c) for c in cands]
    prompts = load_task(VALIDATION_SET)
    gen = settings_of(cfg)
    config = {
        "prompts": hashlib.sha256(
            json.dumps([p.to_json() for p in prompts], sort_keys=True).encode()
        ).hexdigest(),
        "generation": gen,
        # recorded, never compared (module doc: another rule or K reuses what it can)
        "selection": {"candidates": labels, "sweep": results.get("settings")},
    }
    journal: ValidationJournal | None = None
    rows: list[dict[str, Any]] = []
    if out is not None:
        resume = _reusable(Path(out) / ValidationJournal.name, config, units)
        journal = ValidationJournal.open(out, config, resume=resume, force=False)
        rows = journal.rows
    done = {r["label"] for r in rows}
    pending = [u for u in units if u.name not in done]
    if pending:
        if executor is None or getattr(executor, "name", "") == "local":
            if worker is None:
                worker = (
                    SweepWorker(pair[0], pair[1], pair[2], None) if pair is not None
                    else SweepWorker.from_spec(spec)
                )  # fmt: skip
            worker.validation = gen
            runs = (worker.run(u) for u in pending)
        else:
            executor.prepare(_with_validation(spec, gen))
            runs = executor.run(pending, results["num_layers"])
        from tqdm.auto import tqdm

        with tqdm(total=len(pending), desc="validate", unit="model", disable=not progress) as bar:
            for unit_rows in runs:
                if journal is not None:
                    journal.append(unit_rows)
                else:
                    rows.extend(unit_rows)
                bar.update(1)
    by_label = {r["label"]: r["records"] for r in rows}
    try:
        embedder = make_embedder("default")
    except (InputError, ImportError) as e:
        embedder = None
        notes.append(f"embedding diversity not measured ({e})")
    post = _metrics(by_label["post"], embedder)
    table = []
    for c in cands:
        m = _metrics(by_label[c["label"]], embedder)
        ok, why = _passes(m, post, GATE_RATIO)
        table.append({
            "label": c["label"], "family": c["family"], "what": describe(c),
            "V": c["V"], "V_end": c.get("V_end"), cfg.diversity_key: c[cfg.diversity_key],
            **m, "passes": ok, "fails": why,
        })  # fmt: skip
    passing = [(t, c) for t, c in zip(table, cands, strict=True) if t["passes"]]
    chosen = None
    if passing:
        t, c = max(passing, key=lambda tc: tc[1][cfg.diversity_key])
        chosen = {k2: v for k2, v in c.items()}
        verdict = (
            f"validated: {t['label']} ({t['what']}), the most diverse of {len(passing)} of "
            f"{len(table)} candidates that keep finished_rate and valid_rate >= "
            f"{GATE_RATIO:g} x the post model's"
        )
    else:
        verdict = (
            f"no candidate passed validation: none of {len(table)} kept finished_rate and "
            f"valid_rate >= {GATE_RATIO:g} x the post model's"
        )
    log.info("%s", verdict)
    return {
        "set": VALIDATION_SET,
        "prompts": len(prompts),
        "samples": gen["n"],
        "max_new_tokens": gen["max_new_tokens"],
        "gate": {"ratio": GATE_RATIO, "metrics": ["finished_rate", "valid_rate"]},
        "rule": results["rule"]["name"],
        "k": k,
        "post": post,
        "candidates": table,
        "chosen": chosen,
        "verdict": verdict,
        "notes": notes,
        "embedder": getattr(embedder, "name", None),
    }


def _reusable(path: Path, config: dict[str, Any], units: list[Unit]) -> bool:
    """Whether the validation journal at ``path`` can be continued: it exists, records the
    same prompts and generation settings, and each of its candidates is the hybrid the same
    label names now. Otherwise (with a warning when a journal was there) validation starts
    over. A malformed journal is refused by :func:`read_journal` (one line naming it)."""
    if not path.is_file() or b"\n" not in path.read_bytes():  # none, or killed in its header
        return False
    J = ValidationJournal
    contents = read_journal(path, J.problem, J.key, J.what)
    why = setting_differences(contents, json.loads(json.dumps(config)), J.checked)
    if not why:
        want = {u.name: validation_row(u) for u in units}
        why = [
            f"candidate {r['label']} (another hybrid there)"
            for r in contents.rows
            if r["label"] in want and r.get("hybrid", want[r["label"]]) != want[r["label"]]
        ]
    if why:
        log.warning(
            "%s records other validation settings: %s; validating every candidate again",
            path, why[0],
        )  # fmt: skip
        return False
    return True


def _with_validation(spec: Any, gen: dict[str, Any]) -> Any:
    return dataclasses.replace(spec, validation=gen)
