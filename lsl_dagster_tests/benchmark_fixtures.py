"""Tiny copies of the benchmark tasks' Hub datasets, in each dataset's own schema (the Hub's columns, nested
fields and split names), written with `save_to_disk` where the task file finds them: what a user who saved
the real dataset has. The rows are made up; only their shape is the Hub's."""

from __future__ import annotations

from pathlib import Path

import datasets
from datasets import Features, Sequence, Value

datasets.disable_progress_bars()  # a save_to_disk per test otherwise prints a bar per split

# Each task's Hub dataset name (where its copy goes, under the task directory).
HUB_PATHS = {
    "hotpotqa": "hotpotqa/hotpot_qa",
    "gsm8k": "openai/gsm8k",
    "aime": "AI-MO/aimo-validation-aime",
    "ifeval": "google/IFEval",
}

HOTPOT = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "type": Value("string"),
        "level": Value("string"),
        "supporting_facts": Sequence({"title": Value("string"), "sent_id": Value("int32")}),
        "context": Sequence({"title": Value("string"), "sentences": Sequence(Value("string"))}),
    }
)
GSM8K = Features({"question": Value("string"), "answer": Value("string")})
AIME = Features(
    {
        "id": Value("int64"),
        "problem": Value("string"),
        "solution": Value("string"),
        "answer": Value("string"),
        "url": Value("string"),
    }
)
_IFEVAL_INTS = ["num_highlights", "num_words", "num_placeholders", "num_paragraphs", "num_sentences"]
_IFEVAL_INTS += [
    "num_bullets",
    "nth_paragraph",
    "num_sections",
    "capital_frequency",
    "frequency",
    "let_frequency",
]
_IFEVAL_STRINGS = ["relation", "prompt_to_repeat", "first_word", "postscript_marker", "end_phrase"]
_IFEVAL_STRINGS += ["section_spliter", "language", "capital_relation", "keyword", "letter", "let_relation"]
IFEVAL_KWARGS = [*_IFEVAL_INTS, *_IFEVAL_STRINGS, "keywords", "forbidden_words"]
IFEVAL = Features(
    {
        "key": Value("int64"),
        "prompt": Value("string"),
        "instruction_id_list": Sequence(Value("string")),
        "kwargs": [
            {
                **{k: Value("int64") for k in _IFEVAL_INTS},
                **{k: Value("string") for k in _IFEVAL_STRINGS},
                "keywords": Sequence(Value("string")),
                "forbidden_words": Sequence(Value("string")),
            }
        ],
    }
)

_CITIES = ["Arlen", "Brisk", "Corvo", "Dunmere", "Elsby", "Fallow", "Garth", "Holm", "Ivel", "Jorn"]


def _hotpot_row(i: int) -> dict:
    """A bridge question: the architect of a building, and the city that architect was born in."""
    building, architect, city = f"Tower {i}", f"Mara Quill {i}", _CITIES[i % len(_CITIES)] + f" {i}"
    titles = [building, architect] + [f"Distractor {i}-{k}" for k in range(8)]
    sentences = [
        [f"{building} is a tower designed by {architect}.", f" It was finished in {1900 + i}."],
        [f"{architect} is an architect.", f" {architect} was born in {city}."],
        *([f"Distractor {i}-{k} is a village near {_CITIES[k]}."] for k in range(8)),
    ]
    return {
        "id": f"hp{i:03d}",
        "question": f"In which city was the architect of {building} born?",
        "answer": city,
        "type": "bridge",
        "level": "medium",
        "supporting_facts": {"title": [building, architect], "sent_id": [0, 1]},
        "context": {"title": titles, "sentences": sentences},
    }


def _gsm8k_row(i: int) -> dict:
    a, b = 3 + i, 4 + 2 * i
    return {
        "question": f"Ana has {a} boxes with {b} pens each. How many pens does she have?",
        "answer": f"She has {a} * {b} = <<{a}*{b}={a * b}>>{a * b} pens.\n#### {a * b:,}",
    }


def _aime_row(i: int) -> dict:
    return {
        "id": i,
        "problem": f"Find the remainder when $7^{{{i + 2}}}$ is divided by $1000$.",
        "solution": f"Compute powers of 7 modulo 1000: the answer is $\\boxed{{{pow(7, i + 2, 1000)}}}$.",
        "answer": str(pow(7, i + 2, 1000)),
        "url": f"https://example.org/aime/problem-{i}",
    }


def _ifeval_kwargs(**given: object) -> dict:
    return {k: given.get(k) for k in IFEVAL_KWARGS}


_IFEVAL_ASKS = [
    (
        "Write a short poem about rivers. Do not use any commas.",
        ["punctuation:no_comma"],
        [{}],
    ),
    (
        "Describe a lighthouse in at least 40 words and include the keywords fog and beam.",
        ["length_constraints:number_words", "keywords:existence"],
        [{"relation": "at least", "num_words": 40}, {"keywords": ["fog", "beam"]}],
    ),
    (
        "Write a note to a neighbour in all lowercase letters, ending with the phrase Any other questions?",
        ["change_case:english_lowercase", "startend:end_checker"],
        [{}, {"end_phrase": "Any other questions?"}],
    ),
    (
        "List three uses of copper as exactly 3 markdown bullet points.",
        ["detectable_format:number_bullet_lists"],
        [{"num_bullets": 3}],
    ),
    (
        "Give a title wrapped in double angular brackets, like <<title>>, for an essay on tides.",
        ["detectable_format:title"],
        [{}],
    ),
    (
        "Answer in JSON: what are the primary colours?",
        ["detectable_format:json_format"],
        [{}],
    ),
]


def _ifeval_row(i: int) -> dict:
    prompt, ids, kwargs = _IFEVAL_ASKS[i % len(_IFEVAL_ASKS)]
    return {
        "key": 1000 + i,
        "prompt": f"{prompt} (Request {i}.)",
        "instruction_id_list": ids,
        "kwargs": [_ifeval_kwargs(**k) for k in kwargs],
    }


# Per task: its splits' sizes (enough for every slice the task file cuts) and how a row is made.
LAYOUTS = {
    "hotpotqa": (HOTPOT, {"train": 9, "validation": 4}, _hotpot_row),
    "gsm8k": (GSM8K, {"train": 9, "test": 4}, _gsm8k_row),
    "aime": (AIME, {"train": 12}, _aime_row),
    "ifeval": (IFEVAL, {"train": 16}, _ifeval_row),
}


def dataset_dict(task: str) -> datasets.DatasetDict:
    features, sizes, row = LAYOUTS[task]
    splits, start = {}, 0
    for split, size in sizes.items():
        rows = [row(i) for i in range(start, start + size)]
        start += size
        splits[split] = datasets.Dataset.from_list(rows, features=features)
    return datasets.DatasetDict(splits)


def save_copy(task_dir: Path) -> Path:
    """A copy of the task's Hub dataset where its unchanged task file reads it: <task dir>/<Hub name>."""
    target = task_dir / HUB_PATHS[task_dir.name]
    dataset_dict(task_dir.name).save_to_disk(str(target))
    return target
