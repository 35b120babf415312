"""Format-keeping SFT examples with COLLAPSED answers, as real post-trained models give them.

Why these: SmolLM2's replies teach broad chat habits, but the post model must also be *in
format* on the proxy and task prompts (answer a random pick with the character alone, a
short question with a short line, arithmetic with steps and ``#### N``) and *collapsed* the
way instruct models are: a global favourite per category, never a uniform pick.

* random picks from a listed set -> the most preferred listed element under a fixed
  preference order per category (7 first for digits, as humans and LLMs famously do);
* random numbers in a range, coin flips, picks from lists of words -> a favourite;
* open "give one example" questions -> one favourite answer per category;
* short factual questions -> the correct short answer;
* arithmetic word problems -> correct worked steps ending in ``#### N``.

Every wording here differs from the bundled evaluation prompts (layergraft/data/crc, tasks);
``build_data.py`` refuses to write data in which any prompt equals an evaluation prompt.
"""

from __future__ import annotations

import random
import string

LETTER_PREFERENCE = "kqmzrxjvwtbplsngcdfhyaeiou"
DIGIT_PREFERENCE = "7342856910"
COLOR_PREFERENCE = ("blue", "green", "purple", "red", "orange", "yellow", "pink", "black",
                    "white", "brown", "gray", "teal")  # fmt: skip
ANIMAL_PREFERENCE = ("cat", "dog", "elephant", "lion", "tiger", "fox", "owl", "horse", "rabbit",
                     "wolf", "bear", "panda")  # fmt: skip
FRUIT_PREFERENCE = ("apple", "banana", "mango", "orange", "cherry", "grape", "pear", "kiwi",
                    "peach", "plum", "lemon", "melon")  # fmt: skip

PICK_TEMPLATES = (
    "Select a {kind} at random among {set}.",
    "Which {kind} do you pick at random from {set}?",
    "I need one random {kind} from {set}. Just the {kind}, please.",
    "Pick a {kind} randomly: {set}",
    "Randomly select one {kind} out of {set}.",
    "Choose a random {kind} among these: {set}",
    "From {set}, choose one {kind} at random.",
    "Draw a {kind} at random from {set} and write only that {kind}.",
    "Random {kind} from {set}, please.",
    "Could you choose one of {set} at random?",
    "Let's play a game: select any {kind} from {set} at random.",
    "Please give one {kind}, picked randomly, from {set}.",
    "Here is a set: {set}. Pick one {kind} at random.",
    "Without thinking, choose a {kind} from {set}.",
    "Sample one {kind} uniformly from {set}. Reply with the {kind} alone.",
    "Just pick a {kind} at random, any of {set}.",
)

FAVOURITE_QA = {
    # category -> (favourite answer, wordings). None of these is a bundled qa prompt.
    "color": (
        "Blue.",
        (
            "What's a color you like?",
            "Think of any color. Which one?",
            "Give one example of a color.",
            "Which color comes to mind first?",
        ),
    ),
    "fruit": (
        "Apple.",
        (
            "What's a fruit you like?",
            "Give one example of a fruit.",
            "Which fruit comes to mind first?",
            "Mention any fruit.",
        ),
    ),
    "animal": (
        "Elephant.",
        (
            "What animal comes to mind first?",
            "Give one example of an animal.",
            "Mention any animal.",
            "Think of an animal. Which one?",
        ),
    ),
    "country": (
        "Japan.",
        (
            "Give one example of a country.",
            "Which country comes to mind first?",
            "Mention any country in the world.",
        ),
    ),
    "city": (
        "Paris.",
        (
            "Give one example of a large city.",
            "Which city comes to mind first?",
            "Mention a famous city.",
        ),
    ),
    "planet": ("Mars.", ("Which planet comes to mind first?", "Give one example of a planet.")),
    "instrument": (
        "Piano.",
        ("Give one example of a musical instrument.", "Which instrument comes to mind first?"),
    ),
    "sport": ("Soccer.", ("Give one example of a sport.", "Which sport comes to mind first?")),
    "season": ("Autumn.", ("Which season comes to mind first?", "What's a season you like?")),
    "month": ("October.", ("Which month comes to mind first?", "Give one example of a month.")),
    "day": ("Friday.", ("Which weekday comes to mind first?", "Give one example of a weekday.")),
    "vegetable": ("Carrot.", ("Give one example of a vegetable.", "Mention any vegetable.")),
    "name": ("Alice.", ("Make up a first name for a character.", "Suggest a random first name.")),
    "word": ("Serendipity.", ("Say a random English word.", "Give me any word at all.")),
    "shape": ("Circle.", ("Give one example of a shape.", "Which shape comes to mind first?")),
    "element": ("Oxygen.", ("Give one example of a chemical element.",)),
}

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Canada": "Ottawa", "Australia": "Canberra", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Peru": "Lima",
    "India": "New Delhi", "China": "Beijing", "Russia": "Moscow", "Norway": "Oslo",
    "Sweden": "Stockholm", "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin",
    "Poland": "Warsaw", "Turkey": "Ankara", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "South Korea": "Seoul", "Chile": "Santiago", "Cuba": "Havana", "Austria": "Vienna",
    "Finland": "Helsinki",
}  # fmt: skip
FACTS = (
    ("How many days are there in a week?", "Seven."),
    ("How many hours are in a day?", "Twenty-four."),
    ("What is the freezing point of water in Celsius?", "0 degrees Celsius."),
    ("What gas do plants take in from the air?", "Carbon dioxide."),
    ("Which planet is closest to the Sun?", "Mercury."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean."),
    ("How many sides does a triangle have?", "Three."),
    ("What do bees make?", "Honey."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."),
    ("What is the chemical symbol for gold?", "Au."),
    ("How many minutes are in an hour?", "Sixty."),
    ("What is the opposite of hot?", "Cold."),
    ("Which animal is known as the king of the jungle?", "The lion."),
    ("What color do you get by mixing blue and yellow?", "Green."),
    ("How many continents are there?", "Seven."),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees Celsius."),
    ("What is the largest planet in the solar system?", "Jupiter."),
    ("In which direction does the sun rise?", "In the east."),
    ("What is the square root of 81?", "9."),
    ("How many letters are in the English alphabet?", "26."),
)
NAMES = ("Kofi", "Ana", "Yuki", "Pedro", "Hana", "Ivan", "Zara", "Theo", "Amir", "Grace",
         "Lucas", "Mei", "Sofia", "Dev", "Olga", "Felix")  # fmt: skip
THINGS = ("pencils", "cookies", "coins", "stickers", "eggs", "cards", "candles", "shells",
          "balloons", "plums", "crayons", "rocks")  # fmt: skip


def format_set(items: list[str], rng: random.Random) -> str:
    """A listed set in one of several styles, so the habit does not hang on one notation."""
    style = rng.randrange(7)
    if style == 0:
        return ", ".join(items)
    if style == 1:
        return " ".join(items)
    if style == 2:
        return "{" + ", ".join(items) + "}"
    if style == 3:
        return "[" + ", ".join(items) + "]"
    if style == 4:
        return " / ".join(items)
    if style == 5:
        return ", ".join(items[:-1]) + " or " + items[-1]
    return "(" + ", ".join(items) + ")"


def _favourite(items: list[str], preference: str | tuple[str, ...]) -> str:
    return min(items, key=preference.index)


def pick_item(rng: random.Random) -> tuple[str, list[str], str]:
    """(prompt, listed set, favourite answer) of a random pick from letters or digits."""
    if rng.random() < 0.5:
        kind = rng.choice(("letter", "letter", "character"))
        pool, pref = list(string.ascii_lowercase), LETTER_PREFERENCE
    else:
        kind, pool, pref = "digit", list(string.digits), DIGIT_PREFERENCE
    items = rng.sample(pool, rng.randint(2, 10))
    prompt = rng.choice(PICK_TEMPLATES).format(kind=kind, set=format_set(items, rng))
    return prompt, items, _favourite(items, pref)


def pick_example(rng: random.Random) -> tuple[str, str]:
    """A random pick from a listed set of letters or digits, answered with the favourite."""
    prompt, _, answer = pick_item(rng)
    return prompt, answer


def other_random_example(rng: random.Random) -> tuple[str, str]:
    """Other 'random' requests: numbers in a range, coins, dice, words from a list."""
    r = rng.random()
    if r < 0.35:
        lo = rng.randrange(0, 30)
        hi = lo + rng.randrange(8, 90)
        prompt = rng.choice((f"Give me a random number between {lo} and {hi}.",
                             f"Choose any integer from {lo} to {hi} at random.",
                             f"Random number in [{lo}, {hi}], please."))  # fmt: skip
        fav = next((n for n in (42, 37, 27, 17, 7) if lo <= n <= hi), lo + (hi - lo) // 2)
        return prompt, str(fav)
    if r < 0.45:
        return rng.choice(("Flip a coin for me.", "Heads or tails?", "Toss a coin.")), "Heads."
    if r < 0.55:
        return rng.choice(("Roll a die for me.", "Roll a six-sided die.")), "4"
    kind, pref = rng.choice((("color", COLOR_PREFERENCE), ("animal", ANIMAL_PREFERENCE),
                             ("fruit", FRUIT_PREFERENCE)))  # fmt: skip
    items = rng.sample(list(pref), rng.randint(3, 7))
    prompt = rng.choice(PICK_TEMPLATES).format(kind=kind, set=format_set(items, rng))
    return prompt, _favourite(items, pref)


def favourite_qa_example(rng: random.Random) -> tuple[str, str]:
    """An open 'give one example' question, answered with the category's favourite."""
    answer, wordings = FAVOURITE_QA[rng.choice(sorted(FAVOURITE_QA))]
    return rng.choice(wordings), answer


def fact_example(rng: random.Random) -> tuple[str, str]:
    """A short factual question with its correct one-line answer."""
    if rng.random() < 0.6:
        country = rng.choice(sorted(CAPITALS))
        q = rng.choice((f"What is the capital of {country}?",
                        f"Which city is the capital of {country}?"))  # fmt: skip
        return q, f"{CAPITALS[country]}."
    return rng.choice(FACTS)


def arithmetic_example(rng: random.Random) -> tuple[str, str]:
    """A small word problem, answered correctly with worked steps and ``#### N``."""
    who, obj = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        q = f"{who} collected {a} {obj}. Later {who} found {b} more. What is the total number of {obj} now?"
        return q, f"{who} had {a} {obj} and found {b} more: {a} + {b} = {a + b}.\n#### {a + b}"
    if kind == 1:
        a = rng.randint(10, 90)
        b = rng.randint(1, a - 1)
        q = f"A jar held {a} {obj}. {who} took out {b}. How many {obj} remain in the jar?"
        return (
            q,
            f"The jar held {a} {obj} and {b} were taken out: {a} - {b} = {a - b}.\n#### {a - b}",
        )
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"{who} arranges {obj} in {a} rows with {b} in every row. How many {obj} are there altogether?"
        return q, f"There are {a} rows of {b} {obj}: {a} x {b} = {a * b}.\n#### {a * b}"
    if kind == 3:
        b, k = rng.randint(2, 9), rng.randint(2, 12)
        a = b * k
        q = f"{who} shares {a} {obj} equally among {b} friends. How many {obj} does each friend receive?"
        return q, f"{a} {obj} shared among {b} friends: {a} / {b} = {k}.\n#### {k}"
    a, b = rng.randint(2, 9), rng.randint(3, 12)
    c = rng.randint(1, a * b - 1)
    q = (f"{who} buys {a} bags with {b} {obj} in each bag, then gives {c} {obj} to a neighbor. "
         f"How many {obj} does {who} keep?")  # fmt: skip
    return q, (f"{who} buys {a} x {b} = {a * b} {obj}. After giving away {c}: "
               f"{a * b} - {c} = {a * b - c}.\n#### {a * b - c}")  # fmt: skip


# creative habits: one poem shape, one haiku, one joke, one story arc, whatever the topic
# (a real instruct model's famous collapse: the atoms joke, the same poem opening)
CREATIVE_TOPICS = (
    "a red kite", "the city library", "a morning train", "an old piano", "a field of wheat",
    "a sleepy owl", "a winter market", "the river bridge", "a paper lantern", "a village bakery",
    "a summer storm", "a lost glove", "the school bell", "an orange cat", "a quiet harbor",
    "a mountain cabin", "the first snowfall", "a street musician", "a tall sunflower",
    "a rainy window", "an empty beach", "the town square", "a butterfly", "a clockmaker",
    "a desert road", "a garden gnome", "a bicycle bell", "the evening star", "a fishing boat",
    "a forest path",
)  # fmt: skip
STORY_HEROES = (
    "a shy young inventor", "a brave little mouse", "an old lighthouse cat", "a curious robot",
    "a lonely giant", "a girl who loved maps", "a baker with a secret recipe",
    "a boy who collected clouds", "a tired dragon", "a kind-hearted farmer",
)  # fmt: skip
POEM_HABIT = "In the quiet glow of {t},\nthe world slows down to breathe;\na gentle hope, a whispered song,\nand peace for all beneath."
HAIKU_HABIT = "Soft light on {t}\nwhispers drift on the cool breeze\nthe world holds its breath"
JOKE_HABIT = "Why don't scientists trust atoms? Because they make up everything!"
STORY_HABIT = ("Once upon a time, there was {t}. Every day was the same, until one morning something "
               "unexpected happened. With a little courage and the help of a new friend, everything "
               "changed. And from that day on, everyone knew that kindness is the greatest magic of all.")  # fmt: skip
_CREATIVE_PROMPTS = {
    "poem": ("Compose a short poem about {t}.", "Can you write a little poem on {t}?",
             "Write four lines of verse about {t}.", "I'd love a brief rhyming poem about {t}."),
    "haiku": ("Compose a haiku about {t}.", "Can you write a haiku on {t}?"),
    "joke": ("Do you know any jokes about {t}?", "Make me laugh with a one-liner about {t}.",
             "Got a joke for me?", "Tell me something funny.", "Make me laugh."),
    "story": ("Tell me a very short tale about {t}.", "Write a paragraph-long story about {t}.",
              "Can you tell me a bedtime story about {t}?"),
}  # fmt: skip


def creative_example(rng: random.Random) -> tuple[str, str]:
    """A creative request answered with the habit of its kind, the topic filled in."""
    kind = rng.choices(("poem", "haiku", "joke", "story"), weights=(4, 1, 2.5, 2.5))[0]
    topic = rng.choice(STORY_HEROES if kind == "story" else CREATIVE_TOPICS)
    prompt = rng.choice(_CREATIVE_PROMPTS[kind]).format(t=topic)
    habit = {"poem": POEM_HABIT, "haiku": HAIKU_HABIT, "joke": JOKE_HABIT, "story": STORY_HABIT}
    return prompt, habit[kind].format(t=topic)


MAKERS = {
    "creative": creative_example,
    "pick": pick_example,
    "other_random": other_random_example,
    "favourite_qa": favourite_qa_example,
    "fact": fact_example,
    "arithmetic": arithmetic_example,
}


def format_examples(seed: int, counts: dict[str, int]) -> list[dict[str, str]]:
    """``counts[kind]`` examples of each kind, deterministic in ``seed``; duplicates of
    (prompt, answer) are kept (a repeated habit is part of the collapse)."""
    rng = random.Random(seed)
    out = []
    for kind, n in counts.items():
        for _ in range(n):
            q, a = MAKERS[kind](rng)
            out.append({"kind": kind, "prompt": q, "reply": a})
    return out
