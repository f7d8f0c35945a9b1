"""The project's own example datasets: a seeded, stdlib-only generator for the files in examples/.

Writes four files next to this script (or into ``--out-dir``):

- ``sentiment.jsonl``  ``{"text", "label"}`` short reviews, labels ``positive`` / ``negative``;
- ``topic.csv``        ``text,label`` news-style headlines, labels ``sports`` / ``technology`` /
  ``food`` / ``finance``;
- ``paraphrase.jsonl`` ``{"text", "text_pair", "label"}`` sentence pairs, labels ``same`` /
  ``different``;
- ``bad_lines.jsonl``  a small upload with known invalid lines (3: not JSON, 5: no label,
  7: empty text) that the API rejects with a 422 naming those lines.

Every template and word list below is written for this project. The output depends only on the
seed: running the script twice writes byte-identical files (no set iteration, no hashing, no clock).

    python examples/make_examples.py [--out-dir DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SEED = 20240611
SENTIMENT_ROWS_PER_LABEL = 200
TOPIC_ROWS_PER_LABEL = 115
PARAPHRASE_ROWS_PER_LABEL = 200

# Line numbers (1-based) of the invalid lines in bad_lines.jsonl, and why each is invalid.
BAD_LINE_NUMBERS: dict[int, str] = {3: "not JSON", 5: "missing label", 7: "empty text"}

# --------------------------------------------------------------------------------------------
# Sentiment: short product, movie and restaurant reviews.
# Each domain has its own subjects and opinion predicates so every sentence reads naturally.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewDomain:
    subjects: tuple[str, ...]
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    positive_endings: tuple[str, ...]
    negative_endings: tuple[str, ...]


REVIEW_DOMAINS: dict[str, ReviewDomain] = {
    "product": ReviewDomain(
        subjects=(
            "The blender",
            "This vacuum cleaner",
            "The new phone",
            "The coffee maker",
            "The wireless speaker",
            "The air fryer",
            "This desk lamp",
            "The electric kettle",
            "This keyboard",
            "The robot mop",
            "The smart thermostat",
            "The hair dryer",
        ),
        positive=(
            "works exactly as described",
            "feels solid and well made",
            "is easy to use",
            "has held up well after months of daily use",
            "is worth every penny",
            "arrived early and works great",
            "is quiet and very efficient",
            "exceeded my expectations",
            "is the best purchase I have made this year",
            "does its job perfectly",
        ),
        negative=(
            "stopped working after a week",
            "feels cheap and flimsy",
            "broke the second time I used it",
            "is much slower than advertised",
            "arrived damaged and missing parts",
            "is a complete waste of money",
            "overheats after a few minutes",
            "fell apart within a month",
            "is the worst purchase I have made this year",
            "makes a strange rattling noise",
        ),
        positive_endings=("Would buy again.", "Highly recommended.", "Five stars."),
        negative_endings=("I returned it.", "Save your money.", "One star."),
    ),
    "movie": ReviewDomain(
        subjects=(
            "The movie",
            "This film",
            "The sequel",
            "The documentary",
            "The new thriller",
            "The animated feature",
            "This comedy",
            "The season finale",
            "The remake",
            "This period drama",
        ),
        positive=(
            "kept me hooked from start to finish",
            "was beautifully shot and well acted",
            "made me laugh out loud",
            "has a clever and moving story",
            "is the best thing I have seen this year",
            "had the whole theater cheering",
            "is funny, warm and surprisingly smart",
            "deserves every award it gets",
            "left me smiling for days",
        ),
        negative=(
            "dragged on far too long",
            "was boring and predictable",
            "had a plot full of holes",
            "felt like a waste of two hours",
            "put me to sleep halfway through",
            "has wooden acting and a messy script",
            "is the worst thing I have seen this year",
            "was loud, dull and forgettable",
            "made me want to walk out",
        ),
        positive_endings=("I would happily watch it again.", "Go see it.", "A must watch."),
        negative_endings=("Skip this one.", "What a letdown.", "Not worth the ticket."),
    ),
    "dish": ReviewDomain(
        subjects=(
            "The pasta",
            "The ramen",
            "The pizza",
            "The chocolate cake",
            "The burger",
            "The seafood platter",
            "The pad thai",
            "The lamb curry",
            "The breakfast burrito",
            "The mushroom risotto",
        ),
        positive=(
            "was fresh and full of flavor",
            "was cooked to perfection",
            "tasted amazing",
            "came out hot and generously portioned",
            "was the best I have had in years",
            "was rich, tasty and beautifully presented",
        ),
        negative=(
            "was cold and bland",
            "tasted stale",
            "was overcooked and far too salty",
            "came out lukewarm after a long wait",
            "was the worst I have had in years",
            "was greasy and tasteless",
        ),
        positive_endings=("I will definitely be back.", "Highly recommended.", "Delicious."),
        negative_endings=("We won't be back.", "Never again.", "Very disappointing."),
    ),
    "venue": ReviewDomain(
        subjects=(
            "This little bistro",
            "The new taco place",
            "The diner on Main Street",
            "The sushi bar downtown",
            "The café near our office",
            "This family-run pizzeria",
            "The rooftop bar",
            "The vegan place on the corner",
        ),
        positive=(
            "has friendly staff and great food",
            "is my new favorite spot for dinner",
            "was cozy, clean and reasonably priced",
            "serves the best brunch in town",
            "is a hidden gem",
            "gets everything right",
        ),
        negative=(
            "was dirty and overpriced",
            "had rude staff and a long wait",
            "is a tourist trap",
            "gets everything wrong",
            "was noisy, cramped and slow",
            "charged us for dishes we never got",
        ),
        positive_endings=("I will definitely be back.", "Five stars.", "Book a table."),
        negative_endings=("We won't be back.", "Avoid.", "One star."),
    ),
    "service": ReviewDomain(
        subjects=("The service", "Our server", "The staff", "The host", "The bartender"),
        positive=(
            "was friendly and attentive",
            "was quick and professional",
            "made us feel welcome",
            "could not do enough for us",
            "was polite and fast",
        ),
        negative=(
            "was slow and careless",
            "left us waiting twenty minutes for menus",
            "was rude when we asked for the bill",
            "got our order wrong twice",
            "was unhelpful and impatient",
        ),
        positive_endings=("Great experience.", "Thank you!", "Five stars."),
        negative_endings=("Terrible experience.", "Avoid.", "One star."),
    ),
}

OPENERS = ("", "", "", "Honestly, ", "Overall, ", "I have to say, ", "In my opinion, ", "Frankly, ")

# Negated phrasings, so the labels do not hinge on "not" alone.
NEGATED_PREDICATES = {
    "positive": (
        "did not disappoint",
        "never fails to impress",
        "could not have been better",
        "was nothing short of excellent",
        "was not bad at all, in fact it was great",
    ),
    "negative": (
        "did not live up to the hype",
        "was not worth the money",
        "was not good at all",
        "was not what I hoped for",
        "was nothing special",
    ),
}
NEGATED_SENTENCES = {
    "positive": (
        "I have no complaints about {s}.",
        "I can't find a single fault with {s}.",
        "There is nothing I would change about {s}.",
        "I could not be happier with {s}.",
    ),
    "negative": (
        "I would not recommend {s} to anyone.",
        "I can't believe how bad {s} was.",
        "There is nothing good to say about {s}.",
        "I could not be more disappointed with {s}.",
    ),
}


def _lower_first(s: str) -> str:
    return s[0].lower() + s[1:]


def _review(rng: random.Random, label: str) -> str:
    domain = REVIEW_DOMAINS[rng.choice(sorted(REVIEW_DOMAINS))]
    subject = rng.choice(domain.subjects)
    endings = domain.positive_endings if label == "positive" else domain.negative_endings
    ending = (" " + rng.choice(endings)) if rng.random() < 0.35 else ""
    kind = rng.random()
    if kind < 0.15:
        sentence = rng.choice(NEGATED_SENTENCES[label]).format(s=_lower_first(subject))
        return sentence + ending
    if kind < 0.30:
        predicate = rng.choice(NEGATED_PREDICATES[label])
    else:
        predicate = rng.choice(domain.positive if label == "positive" else domain.negative)
    opener = rng.choice(OPENERS)
    head = opener + (_lower_first(subject) if opener else subject)
    return f"{head} {predicate}.{ending}"


def make_sentiment(rng: random.Random) -> list[dict[str, str]]:
    return _balanced(
        rng,
        ("positive", "negative"),
        SENTIMENT_ROWS_PER_LABEL,
        lambda label: {"text": _review(rng, label), "label": label},
    )


# --------------------------------------------------------------------------------------------
# Topic: news-style headlines. Names are invented; each topic keeps its own name pools.
# --------------------------------------------------------------------------------------------

TEAMS = (
    "Riverton United",
    "Harbor City FC",
    "Northgate Rovers",
    "Lakeside Athletic",
    "Westfield Wanderers",
    "Port Ellis Town",
    "Kingsbury Lions",
    "Ashford Rangers",
    "Millbrook City",
    "Eastbay Falcons",
)
ATHLETES = (
    "Maria Alvarez",
    "Tomas Berg",
    "Aiko Tanaka",
    "Daniel Okafor",
    "Sofia Lindqvist",
    "Lucas Moreau",
    "Priya Raman",
    "Jonah Whitaker",
    "Elena Petrova",
    "Kofi Mensah",
)
SPORT_EVENTS = (
    "the Open",
    "the indoor championships",
    "the season opener",
    "the marathon",
    "the grand prix",
    "the world cup qualifier",
    "the national trials",
)
SPORTS_TEMPLATES = (
    "{team} beat {team2} {score} to reach the {stage}",
    "{team} held to a {draw} draw by {team2}",
    "{athlete} wins {event} in a thrilling finish",
    "{athlete} sets new {discipline} record at {meet}",
    "Injury rules {athlete} out of {event}",
    "{team} sign {position} on a {n}-year deal",
    "{team} sack manager after {n} straight defeats",
    "{athlete} retires from {sport} after {n2} seasons",
    "Late goal sends {team} past {team2} in the {stage}",
    "{athlete} and {athlete2} advance to the {tournament} semi-finals",
)
SPORTS_SLOTS = {
    "stage": ("cup final", "semi-finals", "quarter-finals", "playoffs", "league final"),
    "score": ("2-1", "3-0", "1-0", "4-2", "3-1"),
    "draw": ("1-1", "0-0", "2-2"),
    "discipline": ("100m", "long jump", "400m hurdles", "high jump", "1500m", "pole vault"),
    "meet": ("the world championships", "the national trials", "the indoor championships"),
    "sport": ("tennis", "cycling", "rowing", "athletics", "swimming", "boxing"),
    "tournament": ("Open", "indoor championship", "national championship", "Masters"),
    "position": ("striker", "goalkeeper", "veteran defender", "teenage midfielder", "winger"),
    "n": ("two", "three", "four", "five", "six"),
    "n2": ("ten", "twelve", "fifteen", "eighteen"),
}

TECH_COMPANIES = (
    "Nimbus Labs",
    "Quantix",
    "Brightwave",
    "Corelink",
    "Vantor Systems",
    "Pixelforge",
    "Helix Robotics",
    "Orbital Software",
    "Lumen AI",
    "Stackline",
)
TECHNOLOGY_TEMPLATES = (
    "{company} unveils {device} with {feature}",
    "{company} patches security flaw affecting millions of {device} users",
    "New {chip} chip promises {pct}% longer battery life",
    "{company} opens its {platform} to outside developers",
    "{company} rolls out {feature} in latest {device} update",
    "Researchers demo {tech} breakthrough that could {benefit}",
    "{company} releases open-source toolkit for {tech}",
    "Review: the new {device} from {company} is fast but pricey",
    "{company} delays launch of its {device} over software bugs",
    "Startup uses {tech} to cut data center power use by {pct}%",
)
TECHNOLOGY_SLOTS = {
    "device": (
        "smartphone",
        "laptop",
        "smartwatch",
        "tablet",
        "VR headset",
        "wireless earbuds",
        "smart speaker",
        "e-reader",
    ),
    "feature": (
        "on-device AI assistant",
        "foldable display",
        "satellite messaging",
        "faster charging",
        "end-to-end encryption",
        "a new camera sensor",
    ),
    "chip": ("laptop", "smartphone", "3-nanometer", "low-power", "AI accelerator"),
    "platform": ("app store", "cloud platform", "developer toolkit", "robotics SDK", "API"),
    "tech": (
        "quantum computing",
        "solid-state batteries",
        "machine learning",
        "edge computing",
        "photonic chips",
        "5G networking",
    ),
    "benefit": ("speed up data centers", "make phones last longer", "cut cloud costs"),
    "pct": ("20", "30", "40", "50", "60"),
}

CHEFS = (
    "Chef Rosa Delgado",
    "Chef Marco Bellini",
    "Chef Hana Kim",
    "Chef Samuel Adeyemi",
    "Chef Ines Duarte",
    "Chef Oliver Grant",
)
CITIES = ("Lisbon", "Portland", "Melbourne", "Toronto", "Edinburgh", "Austin", "Osaka", "Cape Town")
FOOD_TEMPLATES = (
    "{chef} opens {cuisine} restaurant in {city}",
    "{n} easy {dish} recipes for busy weeknights",
    "Why {ingredient} is showing up on every menu this {season}",
    "Taste test: we tried {n} supermarket {product} so you don't have to",
    "{city} bakery wins award for the best {baked}",
    "How to make perfect {dish} at home",
    "The secret to crispy {side}, according to {chef}",
    "{cuisine} street food festival returns to {city} this {season}",
    "{chef} shares a {season} recipe for {dish} with {ingredient}",
    "Food critics rank the {n} best {cuisine} restaurants in {city}",
)
FOOD_SLOTS = {
    "cuisine": ("Peruvian", "Korean", "Lebanese", "Ethiopian", "Sicilian", "Vietnamese", "Mexican"),
    "dish": (
        "pasta",
        "curry",
        "stir-fry",
        "soup",
        "risotto",
        "salad",
        "chili",
        "ramen",
        "paella",
        "dumplings",
    ),
    "ingredient": ("miso", "sumac", "black garlic", "yuzu", "fermented chili", "tahini", "saffron"),
    "season": ("spring", "summer", "autumn", "winter"),
    "product": ("pizzas", "olive oils", "chocolate bars", "coffees", "veggie burgers", "pestos"),
    "baked": ("sourdough", "croissant", "cinnamon bun", "rye bread", "apple pie"),
    "side": ("roast potatoes", "fried rice", "chickpeas", "tofu", "french fries"),
    "n": ("5", "7", "10", "12", "15"),
}

FIRMS = (
    "Granite Holdings",
    "Meridian Bank",
    "Atlas Insurance",
    "Northstar Capital",
    "Bluefield Retail Group",
    "Sterling Energy",
    "Crestview Partners",
    "Harbor Trust",
)
FINANCE_TEMPLATES = (
    "Central bank {rate_move} interest rates by {bp} basis points",
    "Shares of {firm} {move} {pct}% after {quarter} earnings",
    "Stock markets {market_move} as inflation {inflation}",
    "{currency} falls to {months}-month low against the dollar",
    "{firm} agrees {amount} billion takeover of {firm2}",
    "Mortgage rates hit {months}-year high as lenders tighten credit",
    "Oil prices {market_move} on supply worries",
    "{firm} cuts profit forecast, sending its stock {direction}",
    "Bond yields {market_move} after {report} report",
    "Investors pull {amount} billion from {fund} funds in {month}",
)
FINANCE_SLOTS = {
    "rate_move": ("raises", "cuts", "lifts", "trims"),
    "bp": ("25", "50", "75"),
    "move": ("climb", "slide", "tumble", "jump", "drop"),
    "market_move": ("rally", "slide", "edge higher", "tumble", "recover"),
    "pct": ("3", "4", "6", "8", "12"),
    "quarter": ("strong quarterly", "weak quarterly", "record annual", "disappointing"),
    "inflation": ("eases", "cools more than expected", "stays stubbornly high"),
    "currency": ("The euro", "The yen", "The pound", "The Swiss franc"),
    "months": ("six", "ten", "twelve", "eighteen"),
    "amount": ("$2", "$4.5", "$7", "$12"),
    "direction": ("lower", "sharply lower", "down 9%"),
    "report": ("the jobs", "the inflation", "the retail sales"),
    "fund": ("equity", "bond", "money market", "emerging market"),
    "month": ("March", "June", "September", "December"),
}

TOPICS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "sports": (
        SPORTS_TEMPLATES,
        {**SPORTS_SLOTS, "team": TEAMS, "athlete": ATHLETES, "event": SPORT_EVENTS},
    ),
    "technology": (TECHNOLOGY_TEMPLATES, {**TECHNOLOGY_SLOTS, "company": TECH_COMPANIES}),
    "food": (FOOD_TEMPLATES, {**FOOD_SLOTS, "chef": CHEFS, "city": CITIES}),
    "finance": (FINANCE_TEMPLATES, {**FINANCE_SLOTS, "firm": FIRMS}),
}


def _fill(rng: random.Random, template: str, slots: dict[str, tuple[str, ...]]) -> str:
    """Fill ``{name}`` and ``{name2}`` slots; ``name2`` is drawn from ``name``'s list, distinct."""
    values: dict[str, str] = {}
    for name in sorted(slots):
        values[name] = rng.choice(slots[name])
    for name in sorted(slots):
        if f"{{{name}2}}" in template and f"{name}2" not in slots:
            values[f"{name}2"] = rng.choice([v for v in slots[name] if v != values[name]])
    text = template.format(**values)
    return text[0].upper() + text[1:]


def _headline(rng: random.Random, label: str) -> str:
    templates, slots = TOPICS[label]
    return _fill(rng, rng.choice(templates), slots)


def make_topic(rng: random.Random) -> list[dict[str, str]]:
    return _balanced(
        rng,
        tuple(TOPICS),
        TOPIC_ROWS_PER_LABEL,
        lambda label: {"text": _headline(rng, label), "label": label},
    )


# --------------------------------------------------------------------------------------------
# Paraphrase: sentence pairs. A frame is a small scene; each slot is a list of meaning groups
# and each group a list of interchangeable wordings. "same" pairs realise one choice of groups
# twice (other wordings, time phrase moved to the front, or passive voice); "different" pairs
# pair it with a scene from another frame, or the same frame with another subject and object.
# --------------------------------------------------------------------------------------------

# A verb wording: (active past tense, passive participle or None when it has no natural passive).
Verb = tuple[str, str | None]


@dataclass(frozen=True)
class Frame:
    subjects: tuple[tuple[str, ...], ...]
    verbs: tuple[tuple[Verb, ...], ...]
    objects: tuple[tuple[str, ...], ...]
    times: tuple[tuple[str, ...], ...]


FRAMES: tuple[Frame, ...] = (
    Frame(
        subjects=(
            ("the city council", "the town council", "city councillors"),
            ("the mayor", "the city's mayor"),
            ("the school board", "the board of education"),
        ),
        verbs=(
            (("approved", "approved"), ("signed off on", None), ("gave the green light to", None)),
            (
                ("rejected", "rejected"),
                ("turned down", "turned down"),
                ("voted down", "voted down"),
            ),
        ),
        objects=(
            ("the new budget", "the proposed budget"),
            ("the plan for a new park", "the proposal for a new park"),
            ("the bike lane project", "the cycle lane scheme"),
        ),
        times=(
            ("on Monday", "on Monday evening"),
            ("after a long debate", "following a lengthy debate"),
        ),
    ),
    Frame(
        subjects=(
            ("the tech company", "the technology firm"),
            ("the startup", "the young company"),
        ),
        verbs=(
            (("launched", "launched"), ("released", "released"), ("rolled out", "rolled out")),
            (("withdrew", "withdrawn"), ("pulled", "pulled"), ("discontinued", "discontinued")),
        ),
        objects=(
            ("a new smartphone", "a new phone"),
            ("a fitness tracking app", "an app for tracking workouts"),
            ("a budget laptop", "a low-cost laptop"),
        ),
        times=(("last week", "a week ago"), ("in several countries", "in a number of countries")),
    ),
    Frame(
        subjects=(
            ("the storm", "the severe storm"),
            ("heavy snow", "a heavy snowfall"),
            ("the flooding", "the floods"),
        ),
        verbs=(
            (("closed", "closed"), ("shut", "shut")),
            (("damaged", "damaged"), ("wrecked", "wrecked")),
        ),
        objects=(
            ("the main highway", "the main motorway"),
            ("dozens of homes", "many houses"),
            ("the local airport", "the nearby airport"),
        ),
        times=(("overnight", "during the night"), ("on Tuesday morning", "early on Tuesday")),
    ),
    Frame(
        subjects=(
            ("a team of scientists", "a group of researchers"),
            ("marine biologists", "ocean researchers"),
        ),
        verbs=(
            (("discovered", "discovered"), ("found", "found"), ("identified", "identified")),
            (("photographed", "photographed"), ("filmed", "filmed")),
        ),
        objects=(
            ("a new species of crab", "a previously unknown crab species"),
            ("a rare deep-sea fish", "an unusual fish from the deep ocean"),
            ("an ancient shipwreck", "the wreck of an old ship"),
        ),
        times=(
            ("during a recent expedition", "on a recent expedition"),
            ("this spring", "in the spring"),
        ),
    ),
    Frame(
        subjects=(
            ("the home team", "the local side"),
            ("the visiting team", "the away side"),
        ),
        verbs=(
            (("won", "won"), ("secured", "secured"), ("clinched", "clinched")),
            (("lost", "lost"), ("threw away", "thrown away")),
        ),
        objects=(
            ("the championship final", "the title decider"),
            ("the opening match", "the first game of the season"),
        ),
        times=(
            ("on Saturday", "on Saturday afternoon"),
            ("in front of a sold-out crowd", "before a packed stadium"),
        ),
    ),
    Frame(
        subjects=(
            ("the hospital", "the regional hospital"),
            ("the health ministry", "the ministry of health"),
        ),
        verbs=(
            (("opened", "opened"), ("launched", "launched")),
            (("closed", "closed"), ("shut down", "shut down")),
        ),
        objects=(
            ("a new children's clinic", "a new clinic for children"),
            ("a walk-in vaccination center", "a drop-in vaccination site"),
            ("the emergency ward", "the accident and emergency department"),
        ),
        times=(
            ("this month", "earlier this month"),
            ("after years of planning", "after several years of planning"),
        ),
    ),
    Frame(
        subjects=(
            ("the airline", "the carrier"),
            ("the rail operator", "the train company"),
        ),
        verbs=(
            (("cancelled", "cancelled"), ("called off", "called off"), ("scrapped", "scrapped")),
            (("delayed", "delayed"), ("postponed", "postponed"), ("held up", "held up")),
        ),
        objects=(
            ("hundreds of services", "several hundred services"),
            ("all routes to the coast", "every route to the coast"),
            ("the new timetable", "the new schedule"),
        ),
        times=(("because of a strike", "due to a strike"), ("on Friday", "on Friday morning")),
    ),
    Frame(
        subjects=(
            ("the university", "the college"),
            ("the city library", "the public library"),
        ),
        verbs=(
            (("introduced", "introduced"), ("started", "started"), ("set up", "set up")),
            (("ended", "ended"), ("discontinued", "discontinued"), ("cancelled", "cancelled")),
        ),
        objects=(
            ("free evening classes", "free night classes"),
            ("a coding course for adults", "a programming course for grown-ups"),
            ("the summer reading program", "the summer reading scheme"),
        ),
        times=(("this autumn", "this fall"), ("after strong demand", "because of high demand")),
    ),
    Frame(
        subjects=(
            ("the bakery", "the local bakery"),
            ("the café", "the coffee shop"),
        ),
        verbs=(
            (("introduced", "introduced"), ("launched", "launched"), ("started selling", None)),
            (("dropped", "dropped"), ("discontinued", "discontinued"), ("stopped selling", None)),
        ),
        objects=(
            ("a vegan sandwich", "a plant-based sandwich"),
            ("gluten-free bread", "bread without gluten"),
            ("a classic apple pie", "a traditional apple pie"),
        ),
        times=(
            ("last month", "a month ago"),
            ("after customer requests", "after customers asked for it"),
        ),
    ),
)


# Object wordings that take "were" in the passive shape.
PLURAL_OBJECTS = frozenset(
    {
        "dozens of homes",
        "many houses",
        "hundreds of services",
        "several hundred services",
        "all routes to the coast",
        "free evening classes",
        "free night classes",
    }
)


@dataclass(frozen=True)
class Scene:
    frame: int
    subject: int
    verb: int
    obj: int
    time: int


def _random_scene(rng: random.Random, frame: int | None = None) -> Scene:
    index = rng.randrange(len(FRAMES)) if frame is None else frame
    f = FRAMES[index]
    return Scene(
        frame=index,
        subject=rng.randrange(len(f.subjects)),
        verb=rng.randrange(len(f.verbs)),
        obj=rng.randrange(len(f.objects)),
        time=rng.randrange(len(f.times)),
    )


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _realise(rng: random.Random, scene: Scene, avoid: str | None = None) -> str:
    """One wording of ``scene``: synonyms drawn at random, and one of three sentence shapes."""
    f = FRAMES[scene.frame]
    for _ in range(100):
        subject = rng.choice(f.subjects[scene.subject])
        active, passive = rng.choice(f.verbs[scene.verb])
        obj = rng.choice(f.objects[scene.obj])
        time = rng.choice(f.times[scene.time])
        shapes = ["active", "fronted"] + (["passive"] if passive else [])
        shape = rng.choice(shapes)
        if shape == "active":
            text = f"{_cap(subject)} {active} {obj} {time}."
        elif shape == "fronted":
            text = f"{_cap(time)}, {subject} {active} {obj}."
        else:
            aux = "were" if obj in PLURAL_OBJECTS else "was"
            text = f"{_cap(obj)} {aux} {passive} by {subject} {time}."
        if text != avoid:
            return text
    raise RuntimeError(f"no second wording for {scene}")  # pragma: no cover - frames allow many


def _different_scene(rng: random.Random, scene: Scene) -> Scene:
    """A scene about another subject: another frame, or the same frame with new subject+object."""
    if rng.random() < 0.7:
        other = rng.choice([i for i in range(len(FRAMES)) if i != scene.frame])
        return _random_scene(rng, other)
    f = FRAMES[scene.frame]
    return Scene(
        frame=scene.frame,
        subject=rng.choice([i for i in range(len(f.subjects)) if i != scene.subject]),
        verb=rng.randrange(len(f.verbs)),
        obj=rng.choice([i for i in range(len(f.objects)) if i != scene.obj]),
        time=rng.randrange(len(f.times)),
    )


def _pair(rng: random.Random, label: str) -> dict[str, str]:
    scene = _random_scene(rng)
    text = _realise(rng, scene)
    if label == "same":
        pair = _realise(rng, scene, avoid=text)
    else:
        pair = _realise(rng, _different_scene(rng, scene))
    return {"text": text, "text_pair": pair, "label": label}


def make_paraphrase(rng: random.Random) -> list[dict[str, str]]:
    return _balanced(
        rng, ("same", "different"), PARAPHRASE_ROWS_PER_LABEL, lambda label: _pair(rng, label)
    )


# --------------------------------------------------------------------------------------------
# Shared helpers and output.
# --------------------------------------------------------------------------------------------


def _balanced(
    rng: random.Random,
    labels: Sequence[str],
    per_label: int,
    make_row: Callable[[str], dict[str, str]],
) -> list[dict[str, str]]:
    """``per_label`` distinct rows for every label, shuffled; texts never repeat across labels."""
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, ...]] = set()
    for label in labels:
        made, attempts = 0, 0
        while made < per_label:
            attempts += 1
            if attempts > per_label * 200:
                raise RuntimeError(f"templates too narrow for {per_label} distinct {label!r} rows")
            row = make_row(label)
            key = tuple(v for k, v in row.items() if k != "label")
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
            made += 1
    rng.shuffle(rows)
    return rows


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["text", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def bad_lines() -> str:
    """A small sentiment upload whose lines 3, 5 and 7 are invalid (see BAD_LINE_NUMBERS)."""
    lines = [
        json.dumps({"text": "The blender works exactly as described.", "label": "positive"}),
        json.dumps({"text": "The pasta was cold and bland.", "label": "negative"}),
        '{"text": "Great value for the price.", "label": "positive"',  # 3: not JSON
        json.dumps(
            {"text": "Our server was rude when we asked for the bill.", "label": "negative"}
        ),
        json.dumps({"text": "This film kept me hooked from start to finish."}),  # 5: no label
        json.dumps({"text": "The air fryer stopped working after a week.", "label": "negative"}),
        json.dumps({"text": "", "label": "positive"}),  # 7: empty text
        json.dumps({"text": "The sushi bar downtown is a hidden gem.", "label": "positive"}),
    ]
    return "".join(line + "\n" for line in lines)


def render(seed: int = DEFAULT_SEED) -> dict[str, str]:
    """File name -> file content. Each dataset has its own generator seeded from ``seed``."""
    return {
        "sentiment.jsonl": _jsonl(make_sentiment(random.Random(f"{seed}:sentiment"))),
        "topic.csv": _csv(make_topic(random.Random(f"{seed}:topic"))),
        "paraphrase.jsonl": _jsonl(make_paraphrase(random.Random(f"{seed}:paraphrase"))),
        "bad_lines.jsonl": bad_lines(),
    }


def main(out_dir: Path | str | None = None, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write every example file into ``out_dir`` (default: this script's folder)."""
    target = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent
    target.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, content in render(seed).items():
        path = target / name
        path.write_bytes(content.encode("utf-8"))
        written[name] = path
    return written


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="default: examples/")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    for name, path in main(args.out_dir, args.seed).items():
        sys.stdout.write(f"{name}: {path.stat().st_size} bytes -> {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
