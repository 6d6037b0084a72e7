"""Writes train.jsonl, dev.jsonl and test.jsonl for the sentiment task: one-sentence reviews, positive or
negative. Deterministic: `python generate.py` rewrites the same files; no review appears in two splits."""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
THINGS = ["phone", "laptop", "kettle", "jacket", "novel", "blender", "hotel", "pizza", "headphones", "chair"]
PRAISE = [
    "I love this {t}, it works perfectly.",
    "The {t} is excellent and worth every penny.",
    "Great {t}, I would buy it again.",
    "This {t} made me very happy.",
    "Wonderful {t}, highly recommended.",
]
COMPLAINTS = [
    "I hate this {t}, it broke after a day.",
    "The {t} is terrible and a waste of money.",
    "Awful {t}, I want a refund.",
    "This {t} made me very angry.",
    "Horrible {t}, do not buy it.",
]
SIZES = {"train": 20, "dev": 16, "test": 30}


def main() -> None:
    rows = [
        {"review": template.format(t=thing), "sentiment": label}
        for label, templates in (("positive", PRAISE), ("negative", COMPLAINTS))
        for template in templates
        for thing in THINGS
    ]
    random.Random(20261203).shuffle(rows)
    start = 0
    for split, size in SIZES.items():
        with (HERE / f"{split}.jsonl").open("w") as out:
            for i, row in enumerate(rows[start : start + size]):
                out.write(json.dumps({"id": f"{split}-{i}", **row}) + "\n")
        start += size


if __name__ == "__main__":
    main()
