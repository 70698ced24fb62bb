"""Labelled datasets for probing: built-in template generators and JSONL / CSV files.

Each example is a text, an integer (classification) or float (regression) label, and an
optional token position to read (default: the last token).

Example:
    >>> data = number_agreement(n=200)
    >>> data.texts[0], data.labels[0]
    ('The dog near the tables', 0)
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProbeDataset:
    """Texts with labels (and optional positions). ``label_names`` name the classes.

    ``types`` (optional) names each example's word type for Hewitt & Liang's control task
    (each type gets a random label); without it the token at the read position is the type.
    """

    texts: list[str]
    labels: list[int | float]
    positions: list[int] | None = None
    label_names: list[str] = field(default_factory=list)
    name: str = "custom"
    types: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.positions is not None and len(self.positions) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.positions)} positions")
        if self.types is not None and len(self.types) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.types)} types")

    def __len__(self) -> int:
        return len(self.texts)


# (singular, plural) subject nouns; both forms of a noun share one word type, so a
# type-disjoint split never shows the test nouns in training in either form
_NOUNS = [
    ("dog", "dogs"),
    ("cat", "cats"),
    ("teacher", "teachers"),
    ("child", "children"),
    ("doctor", "doctors"),
    ("bird", "birds"),
    ("farmer", "farmers"),
    ("student", "students"),
    ("king", "kings"),
    ("artist", "artists"),
    ("car", "cars"),
    ("tree", "trees"),
    ("river", "rivers"),
    ("house", "houses"),
    ("window", "windows"),
    ("author", "authors"),
    ("horse", "horses"),
    ("friend", "friends"),
    ("lawyer", "lawyers"),
    ("pilot", "pilots"),
    ("man", "men"),
    ("woman", "women"),
    ("mouse", "mice"),
    ("baby", "babies"),
    ("city", "cities"),
    ("box", "boxes"),
    ("boy", "boys"),
    ("girl", "girls"),
    ("nurse", "nurses"),
    ("singer", "singers"),
    ("painter", "painters"),
    ("soldier", "soldiers"),
    ("worker", "workers"),
    ("driver", "drivers"),
    ("player", "players"),
    ("writer", "writers"),
    ("baker", "bakers"),
    ("sailor", "sailors"),
    ("officer", "officers"),
    ("manager", "managers"),
    ("neighbor", "neighbors"),
    ("visitor", "visitors"),
    ("guest", "guests"),
    ("monkey", "monkeys"),
    ("rabbit", "rabbits"),
    ("tiger", "tigers"),
    ("book", "books"),
    ("chair", "chairs"),
    ("lamp", "lamps"),
    ("phone", "phones"),
    ("bottle", "bottles"),
    ("candle", "candles"),
    ("flower", "flowers"),
    ("ship", "ships"),
    ("train", "trains"),
    ("truck", "trucks"),
    ("bus", "buses"),
    ("church", "churches"),
    ("leaf", "leaves"),
    ("wolf", "wolves"),
    ("knife", "knives"),
    ("person", "people"),
    ("goose", "geese"),
    ("fox", "foxes"),
    ("dish", "dishes"),
    ("story", "stories"),
    ("lady", "ladies"),
    ("party", "parties"),
    ("country", "countries"),
    ("queen", "queens"),
    ("chef", "chefs"),
    ("judge", "judges"),
]
_PLACES = ["table", "tables", "door", "doors", "bridge", "bridges", "garden", "gardens", "wall", "walls"]
_PREPOSITIONS = ["near", "behind", "beside", "under", "by"]


def number_agreement(n: int = 400, *, seed: int = 0) -> ProbeDataset:
    """Is the sentence's subject singular (0) or plural (1)? After a distracting prepositional
    phrase whose noun has random number, every text ends in the same word (" today"), which is
    where it is read: the label is only available from context. The word type is the subject
    noun (both of its forms), so type-disjoint splits test on nouns never seen in training."""
    rng = random.Random(seed)
    texts, labels, lemmas = [], [], []
    for _ in range(n):
        plural = rng.random() < 0.5
        forms = rng.choice(_NOUNS)
        texts.append(f"The {forms[plural]} {rng.choice(_PREPOSITIONS)} the {rng.choice(_PLACES)} today")
        labels.append(int(plural))
        lemmas.append(forms[0])
    return ProbeDataset(
        texts, labels, label_names=["singular", "plural"], name="number_agreement", types=lemmas
    )


_CATEGORIES = {
    "animal": [
        "lion",
        "tiger",
        "horse",
        "rabbit",
        "eagle",
        "shark",
        "wolf",
        "bear",
        "mouse",
        "whale",
        "monkey",
        "snake",
        "zebra",
        "camel",
        "deer",
        "goat",
        "giraffe",
        "elephant",
        "fox",
        "owl",
        "parrot",
        "frog",
        "turtle",
        "dolphin",
        "penguin",
        "kangaroo",
        "squirrel",
        "donkey",
        "leopard",
        "cheetah",
        "gorilla",
        "hippo",
        "crocodile",
        "lizard",
        "spider",
        "beetle",
        "butterfly",
        "duck",
        "swan",
        "pigeon",
        "hawk",
        "raccoon",
        "otter",
        "beaver",
        "moose",
        "sheep",
        "cow",
        "pig",
    ],
    "food": [
        "bread",
        "cheese",
        "apple",
        "rice",
        "pasta",
        "butter",
        "banana",
        "carrot",
        "soup",
        "cake",
        "pizza",
        "salad",
        "honey",
        "grape",
        "onion",
        "potato",
        "tomato",
        "lemon",
        "cookie",
        "sandwich",
        "cucumber",
        "peach",
        "cherry",
        "mango",
        "yogurt",
        "sausage",
        "bacon",
        "pancake",
        "muffin",
        "biscuit",
        "pie",
        "steak",
        "burger",
        "waffle",
        "pear",
        "plum",
        "melon",
        "broccoli",
        "spinach",
        "lettuce",
        "garlic",
        "cabbage",
        "oatmeal",
        "cereal",
        "chocolate",
        "donut",
        "bagel",
        "avocado",
    ],
}
_FRAMES = [
    "I saw a picture of the {} today",
    "She talked about the {} today",
    "We found the {} today",
    "There was a {} here today",
    "He pointed at the {} today",
    "Look at this {} today",
]


def entity_category(n: int = 400, *, seed: int = 0) -> ProbeDataset:
    """Is the sentence's object an animal (0) or a food (1)? Read at the final " today",
    which is the same token in every text, so the category must come from context. The word
    type is the object, so type-disjoint splits test on words never seen in training."""
    rng = random.Random(seed)
    names = list(_CATEGORIES)
    texts, labels, entities = [], [], []
    for _ in range(n):
        label = rng.randrange(2)
        entity = rng.choice(_CATEGORIES[names[label]])
        texts.append(rng.choice(_FRAMES).format(entity))
        labels.append(label)
        entities.append(entity)
    return ProbeDataset(texts, labels, label_names=names, name="entity_category", types=entities)


BUILT_IN = {"number_agreement": number_agreement, "entity_category": entity_category}


def load_probe_dataset(path: str | Path) -> ProbeDataset:
    """A JSONL file (one ``{"text": ..., "label": ..., "position": ...}`` per line) or a CSV
    file with columns ``text``, ``label`` and optionally ``position``."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with open(path, newline="") as handle:
            records = list(csv.DictReader(handle))
    else:
        raise ValueError(f"{path}: expected a .jsonl or .csv file")
    for i, record in enumerate(records):
        if "text" not in record or "label" not in record:
            raise ValueError(f"{path}: record {i} lacks 'text' or 'label': {record}")
    labels = [float(r["label"]) for r in records]
    labels = [int(v) if all(float(x).is_integer() for x in labels) else v for v in labels]
    has_position = all(r.get("position") not in (None, "") for r in records)
    positions = [int(r["position"]) for r in records] if has_position else None
    return ProbeDataset([r["text"] for r in records], labels, positions, name=path.stem)
