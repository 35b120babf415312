"""Write ``work/sft.jsonl``: SmolLM2 replies + format-keeping collapsed examples, one chat per row.

Why a separate assembly step: SmolLM2 generation is the slow part (minutes) and is cached in
``work/smol_replies.jsonl``; the mixture can then be changed per trial in a second. The
bundled evaluation prompts (CRC, tasks, lm-eval cloze, held-out text) are read from the
installed layergraft package and any overlap is refused, so no trial trains on them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from importlib import resources
from pathlib import Path

from common import WORK, Stage
from format_data import format_examples

# trial t2's mixture (the chosen post model); t1 had no "creative" and kept every SmolLM2 kind
DEFAULT_COUNTS = {"pick": 1600, "other_random": 250, "favourite_qa": 300, "fact": 200,
                  "arithmetic": 500, "creative": 400}  # fmt: skip
DEFAULT_DROP = "poem,story,joke"  # SmolLM2's creative replies give way to the creative habits


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def evaluation_texts() -> tuple[set[str], str]:
    """Every bundled evaluation prompt (normalised) and the held-out text (for a substring check)."""
    data = resources.files("layergraft") / "data"
    prompts: set[str] = set()
    for sub in ("crc", "tasks", "lm_eval_tasks"):
        for f in (data / sub).iterdir():
            if f.name.endswith(".jsonl"):
                for line in f.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        obj = json.loads(line)
                        for key in ("prompt", "context", "text", "question"):
                            if isinstance(obj.get(key), str):
                                prompts.add(_norm(obj[key]))
    heldout = _norm((data / "text" / "heldout.txt").read_text(encoding="utf-8"))
    return prompts, heldout


def refuse_evaluation_overlap(items: list[tuple[str, str]], what: str) -> int:
    """Exit when any (kind, prompt) is a bundled evaluation prompt, or a summary prompt's
    paragraph occurs in the held-out text; else the number of evaluation prompts checked.

    Why refuse instead of filtering: a trial that trained on the evaluation prompts would
    measure memory, not collapse, and nobody should get that data by accident."""
    eval_prompts, heldout = evaluation_texts()
    bad = [p for _, p in items if _norm(p) in eval_prompts]
    bad += [p[:60] for k, p in items
            if k.endswith("summary") and _norm(p.split("\n\n", 1)[1]) in heldout]  # fmt: skip
    if bad:
        raise SystemExit(f"{len(bad)} {what} prompts are evaluation prompts, e.g. {bad[:3]}")
    return len(eval_prompts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smol", type=Path, default=WORK / "smol_replies.jsonl")
    ap.add_argument("--out", type=Path, default=WORK / "sft.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--counts", type=json.loads, default=DEFAULT_COUNTS,
                    help="JSON {kind: n} for the format-keeping examples")  # fmt: skip
    ap.add_argument("--no-smol", action="store_true", help="format-keeping examples only")
    ap.add_argument("--drop-smol-kinds", default=DEFAULT_DROP,
                    help="comma-separated SmolLM2 prompt kinds to leave out (e.g. poem,story,joke)")  # fmt: skip
    args = ap.parse_args()
    with Stage("build-data", WORK / "logs" / "stages.jsonl", seed=args.seed) as st:
        rows = []
        if not args.no_smol:
            for line in args.smol.read_text().splitlines():
                r = json.loads(line)
                if r["reply"] and r["kind"] not in args.drop_smol_kinds.split(","):
                    rows.append({"kind": "smol_" + r["kind"], "prompt": r["prompt"],
                                 "reply": r["reply"]})  # fmt: skip
        rows += format_examples(args.seed, args.counts)
        random.Random(args.seed).shuffle(rows)
        checked = refuse_evaluation_overlap([(r["kind"], r["prompt"]) for r in rows], "SFT")
        with args.out.open("w") as f:
            for r in rows:
                msgs = [{"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["reply"]}]  # fmt: skip
                f.write(json.dumps({"kind": r["kind"], "messages": msgs}) + "\n")
        kinds: dict[str, int] = {}
        for r in rows:
            k = "smol" if r["kind"].startswith("smol_") else r["kind"]
            kinds[k] = kinds.get(k, 0) + 1
        st.extra.update(rows=len(rows), kinds=kinds, eval_prompts_checked=checked)


if __name__ == "__main__":
    main()
