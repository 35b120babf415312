"""Write ``work/pref.jsonl``: preference pairs that reward helpfulness and format, not diversity.

Why these pairs (issue 23): vendors follow broad SFT with preference optimisation, and the
literature blames that stage for most of the lost diversity. To see whether it collapses a
model *without* being asked to, the pairs must say nothing about diversity: the chosen reply
is a SmolLM2-135M-Instruct reply that ended by itself (``work/smol_replies.jsonl``, not cut
to a sentence), and the rejected reply to the same prompt is worse in a way a labeller would
mark down:

* ``truncated``: the chosen reply stopped after 30-60% of its words, mid-sentence (trailing
  punctuation dropped), so the answer is unfinished;
* ``off_request``: a finished reply to a prompt of another kind (a poem where a definition was
  asked), so the answer misses the request.

One pair of each kind per prompt, drawn from one seeded generator; the output is TRL's
conversational preference format (``prompt`` / ``chosen`` / ``rejected`` as message lists)
plus ``kind`` and ``reject_kind`` for the record. Like ``build_data.py`` it refuses data in
which any prompt equals a bundled evaluation prompt.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from build_data import refuse_evaluation_overlap
from common import WORK, Stage

KINDS = ("truncated", "off_request")


def truncate(reply: str, rng: random.Random) -> str | None:
    """The reply's first 30-60% of words, without the sentence end it would have had.

    None for replies under 12 words: cutting them leaves too little to be a reply at all."""
    words = reply.split()
    if len(words) < 12:
        return None
    keep = max(3, round(len(words) * rng.uniform(0.3, 0.6)))
    return " ".join(words[:keep]).rstrip(".!?,;:")


def pairs(rows: list[dict], kinds: tuple[str, ...], seed: int) -> list[dict]:
    """Preference pairs from finished replies, deterministic in ``seed`` (see the module doc)."""
    rng = random.Random(seed)
    done = [r for r in rows if r["reply"] and not r["truncated"]]
    out = []
    for r in done:
        user = [{"role": "user", "content": r["prompt"]}]
        chosen = [{"role": "assistant", "content": r["reply"]}]
        for kind in kinds:
            if kind == "truncated":
                bad = truncate(r["reply"], rng)
            else:
                others = [o for o in done if o["kind"] != r["kind"]]
                bad = rng.choice(others)["reply"] if others else None
            if bad:
                out.append({"kind": r["kind"], "reject_kind": kind, "prompt": user,
                            "chosen": chosen,
                            "rejected": [{"role": "assistant", "content": bad}]})  # fmt: skip
    rng.shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smol", type=Path, default=WORK / "smol_replies.jsonl")
    ap.add_argument("--out", type=Path, default=WORK / "pref.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated rejected kinds")
    args = ap.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or set(kinds) - set(KINDS):
        raise SystemExit(f"--kinds must be a subset of {','.join(KINDS)}, got {args.kinds!r}")
    if args.out.resolve() == args.smol.resolve():
        raise SystemExit(f"--out {args.out} is the input --smol: choose another file")
    with Stage("build-pref", WORK / "logs" / "stages.jsonl", seed=args.seed) as st:
        rows = [json.loads(line) for line in args.smol.read_text().splitlines()]
        out = pairs(rows, kinds, args.seed)
        refuse_evaluation_overlap(
            [(p["kind"], p["prompt"][0]["content"]) for p in out], "preference"
        )
        tmp = args.out.with_name(args.out.name + ".tmp")
        with tmp.open("w") as f:
            for p in out:
                f.write(json.dumps(p) + "\n")
        tmp.rename(args.out)
        by: dict[str, int] = {}
        for p in out:
            by[p["reject_kind"]] = by.get(p["reject_kind"], 0) + 1
        st.extra.update(
            pairs=len(out), reject_kinds=by, prompts=len({p["prompt"][0]["content"] for p in out})
        )


if __name__ == "__main__":
    main()
