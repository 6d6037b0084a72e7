"""The generated task: multi-step arithmetic word problems, a pure function of (seed, split, index)."""

from __future__ import annotations

import hashlib
import random

from lsl_dagster.tasks.definition import SPLITS, Example

_NAMES = ("Mia", "Ravi", "Lena", "Tomas", "Aiko", "Sam", "Nora", "Omar", "Ines", "Kofi")
_ITEMS = ("apples", "stamps", "marbles", "books", "coins", "shells", "stickers", "pencils")


def arithmetic_example(seed: int, split: str, index: int) -> Example:
    digest = hashlib.sha256(f"arithmetic|{seed}|{split}|{index}".encode()).digest()
    rng = random.Random(digest)
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    # The starting amount's residue mod 3 encodes the split, so no problem can appear in two splits.
    start = rng.randrange(4, 40) * 3 + SPLITS.index(split)
    total = start
    sentences = [f"{name} has {start} {item}."]
    for _ in range(rng.randint(2, 4)):
        choices = ["add", "mul" if total < 500 else "add"]
        if total > 3:
            choices.append("sub")
        if total % 2 == 0:
            choices.append("div")
        op = rng.choice(choices)
        if op == "add":
            k = rng.randint(2, 30)
            total += k
            sentences.append(f"Then {name} buys {k} more.")
        elif op == "sub":
            k = rng.randint(1, total - 1)
            total -= k
            sentences.append(f"Then {name} gives away {k}.")
        elif op == "mul":
            k = rng.choice((2, 3))
            total *= k
            sentences.append(f"Then {name} {'doubles' if k == 2 else 'triples'} the collection.")
        else:
            total //= 2
            sentences.append(f"Then {name} gives half of them to a friend.")
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return Example(id=f"{split}-{index}", inputs={"question": question}, labels={"answer": str(total)})
