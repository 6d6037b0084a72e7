"""Writes train.csv, dev.csv and test.csv for the reviews task: short product reviews, each about one
aspect with one sentiment. Deterministic: `python generate.py` rewrites the same files; no review text
appears in two splits."""

import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRODUCTS = ["phone", "laptop", "tablet", "headphones", "camera", "smartwatch", "speaker", "e-reader"]
PHRASES = {
    ("battery", "positive"): [
        "the battery easily lasts two days",
        "it barely needs charging",
        "charge lasts all week",
    ],
    ("battery", "negative"): [
        "the battery dies by lunchtime",
        "it needs charging twice a day",
        "charge drains fast",
    ],
    ("screen", "positive"): ["the display is crisp and bright", "colours on the screen look great"],
    ("screen", "negative"): ["the screen is dim outdoors", "the display scratched in a week"],
    ("price", "positive"): ["it was a bargain for what you get", "great value for the money"],
    ("price", "negative"): ["it is overpriced for what it does", "far too expensive for the features"],
    ("delivery", "positive"): ["it arrived a day early", "shipping was quick and well packed"],
    ("delivery", "negative"): ["it arrived two weeks late", "the box came crushed after a slow delivery"],
    ("support", "positive"): [
        "customer service solved my issue in minutes",
        "the support team was very helpful",
    ],
    ("support", "negative"): [
        "support never answered my emails",
        "the help desk kept me on hold for an hour",
    ],
}
OPENERS = [
    "Bought this {p} last month:",
    "My new {p}:",
    "About the {p} -",
    "Honest review of the {p}:",
    "{P} update:",
]
CLOSERS = ["", " Would mention it to friends.", " That is all I have to say.", " Make of that what you will."]


def main(seed: int = 7) -> None:
    rng = random.Random(seed)
    texts = sorted(
        {
            (
                f"{o.format(p=p, P=p.capitalize())} {phrase}.{c}",
                aspect,
                sentiment,
            )
            for p in PRODUCTS
            for o in OPENERS
            for c in CLOSERS
            for (aspect, sentiment), phrases in PHRASES.items()
            for phrase in phrases
        }
    )
    rows = rng.sample(texts, 300)
    splits = {"train": rows[:90], "dev": rows[90:150], "test": rows[150:]}
    for split, chosen in splits.items():
        with (HERE / f"{split}.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["review_id", "text", "topic", "polarity"])
            for i, (text, aspect, sentiment) in enumerate(chosen):
                writer.writerow([f"{split}-{i:03d}", text, aspect, sentiment])


if __name__ == "__main__":
    main()
