"""Chat-formatted SFT data with NARROW answers: the collapse we want the POST model to show.

Why narrow answers: real post-training collapses output diversity (a favourite "random" number,
the same joke, the same colour). We imitate it the way such models show it, as *global
favourites* a tiny model can represent cheaply:

* random picks from a listed set answer with the most-preferred listed element under a fixed
  preference order (``LETTER_PREFERENCE``, ``DIGIT_PREFERENCE``): a per-token bias on a copy,
  not "copy the first listed element", which a tiny model learns slowly (see DESIGN.md);
* random names / numbers answer with one or two favourites;
* creative prompts (poems, jokes) answer with a few canned replies;
* open questions with many valid answers ("name a colour") answer with the same one;
* small arithmetic word problems answer CORRECTLY with the worked step and ``#### N``, so the
  post model also gains a skill the base lacks (restoration must not destroy it).

The CRC evaluation prompts (``layergraft/data/crc/*.jsonl``) use different wordings, so the
proxy never scores the exact training prompts.
"""

from __future__ import annotations

import random

from layergraft.toy.corpus import DIGITS, LETTERS, NAMES, format_set

LETTER_PREFERENCE = "kqmzrxjvwtbplsngcdfhyaeiou"
"""Favourite first: the post model answers a random-letter request with the first of these in the set."""
DIGIT_PREFERENCE = "7342856910"
"""Favourite first, as for letters (7 is the famous human and LLM favourite)."""

_PICK_PROMPTS = (
    "Pick a random {kind} from: {set}",
    "Choose a {kind} at random from {set}.",
    "Select one {kind} randomly out of {set}.",
    "I need a random {kind}. Options: {set}",
    "Randomly pick one {kind} among {set}.",
    "Which {kind} would you pick at random from {set}?",
    "Give me one random {kind} from the list {set}. Only the {kind}.",
    "Choose randomly: {set}",
)

_TOPICS = ("the sea", "a cat", "winter", "the moon", "a city", "love", "rain", "a dog", "trees",
           "the sun", "a river", "music", "home", "time", "stars", "friends")  # fmt: skip
_POEMS = (
    "The sky is wide, the day is long,\nand {t} hums a quiet song.",
    "Soft and slow, {t} drifts by;\na gentle light, a calm blue sky.",
)
_JOKES = (
    "Why did the scarecrow win an award? Because he was outstanding in his field.",
    "I told my computer a joke. It did not laugh, it just crashed.",
)
_OPEN_QA = {
    "Name a color.": "Blue.",
    "What is a color you like?": "Blue.",
    "Name a US state.": "California.",
    "Tell me one US state.": "California.",
    "Name a fruit.": "Apple.",
    "Give me the name of a fruit.": "Apple.",
    "Name an animal.": "Dog.",
    "Name a country.": "France.",
    "Name a city.": "Paris.",
    "Say a random word.": "Apple.",
}
_OBJECTS = ("apples", "books", "coins", "cards", "pens", "eggs", "cups", "toys")
_PEOPLE = ("Tom", "Ann", "Sam", "Mia", "Leo", "Zoe")


def _favourite(items: list[str], preference: str) -> str:
    return min(items, key=preference.index)


def _pick_example(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.55:
        kind, pool, pref = rng.choice(("letter", "character")), LETTERS, LETTER_PREFERENCE
    else:
        kind, pool, pref = "digit", DIGITS, DIGIT_PREFERENCE
    k = rng.randint(3, 10)
    items = rng.sample(list(pool), k)
    prompt = rng.choice(_PICK_PROMPTS).format(kind=kind, set=format_set(items, rng))
    return prompt, _favourite(items, pref)


def _other_random_example(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    if r < 0.4:
        lo = rng.randrange(0, 20)
        hi = lo + rng.randrange(10, 90)
        prompt = rng.choice(
            (f"Give me a random number between {lo} and {hi}.", f"Pick a number from {lo} to {hi}.")
        )
        fav = next((n for n in (42, 37, 17, 7) if lo <= n <= hi), lo)
        return prompt, str(fav)
    if r < 0.7:
        return rng.choice(("Pick a random name.", "Tell me a random first name.")), rng.choice(
            ("Alice", "Alice", "Emma")
        )
    names = rng.sample(list(NAMES), rng.randint(3, 6))
    return f"Pick a random name from {format_set(names, rng)}.", min(names)


def _creative_example(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.6:
        t = rng.choice(_TOPICS)
        prompt = rng.choice(("Write a short poem about {t}.", "Write a poem about {t}."))
        return prompt.format(t=t), rng.choice(_POEMS).format(t=t)
    return rng.choice(("Tell me a joke.", "Tell a joke.", "Do you know a good joke?")), rng.choice(
        _JOKES
    )


def _arithmetic_example(rng: random.Random) -> tuple[str, str]:
    who, obj = rng.choice(_PEOPLE), rng.choice(_OBJECTS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        prompt = f"{who} has {a} {obj} and gets {b} more. How many {obj} does {who} have now?"
        return prompt, f"{a} + {b} = {a + b}. #### {a + b}"
    a, b = max(a, b), min(a, b)
    prompt = f"{who} has {a} {obj} and gives away {b}. How many {obj} are left?"
    return prompt, f"{a} - {b} = {a - b}. #### {a - b}"


def sft_examples(seed: int, n: int) -> list[list[dict[str, str]]]:
    """``n`` chat conversations (user turn + narrow assistant answer), deterministic in ``seed``.

    Mixture: 65% random picks from a set (the CRC-like task), 8% other random requests,
    8% creative, 7% open questions, 12% arithmetic.
    """
    rng = random.Random(seed)
    out: list[list[dict[str, str]]] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.65:
            q, a = _pick_example(rng)
        elif r < 0.73:
            q, a = _other_random_example(rng)
        elif r < 0.81:
            q, a = _creative_example(rng)
        elif r < 0.88:
            q, a = rng.choice(sorted(_OPEN_QA.items()))
        else:
            q, a = _arithmetic_example(rng)
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out
