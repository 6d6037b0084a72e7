"""Writes corpus.jsonl and questions.jsonl for the hop_qa task: a small encyclopedia of made-up people and
towns, and two-hop questions over it (a person's passage names their home town; the town's passage holds
the answer). Deterministic: `python generate.py` rewrites the same files."""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = [
    "Alma",
    "Bruno",
    "Celia",
    "Dario",
    "Elin",
    "Fabio",
    "Greta",
    "Hugo",
    "Ilse",
    "Jonas",
    "Kira",
    "Lukas",
    "Mara",
    "Nils",
    "Olga",
    "Pavel",
    "Rosa",
    "Sven",
    "Tilda",
    "Umar",
    "Vera",
    "Willem",
    "Xenia",
    "Yusuf",
    "Zora",
    "Anton",
    "Bea",
    "Caspar",
    "Dora",
    "Emil",
]
LAST = [
    "Arden",
    "Brask",
    "Corvin",
    "Dahl",
    "Eskel",
    "Falk",
    "Gorm",
    "Hallin",
    "Ivers",
    "Jarl",
    "Kessel",
    "Lund",
    "Mott",
    "Norell",
    "Oberg",
    "Prahl",
    "Quist",
    "Rask",
    "Stellan",
    "Torv",
]
PROFESSIONS = (
    ("painter", "a series of harbour paintings"),
    ("composer", "a cycle of string quartets"),
    ("engineer", "a suspension bridge design"),
    ("botanist", "a catalogue of alpine mosses"),
    ("novelist", "a trilogy about a lighthouse family"),
    ("architect", "a library with a copper roof"),
    ("chemist", "a method for purifying dyes"),
    ("cartographer", "a survey of the northern coast"),
)
TOWN_A = [
    "Ash",
    "Birch",
    "Cold",
    "Deep",
    "Elder",
    "Fern",
    "Gold",
    "Hollow",
    "Iron",
    "Juniper",
    "Kettle",
    "Lark",
    "Moss",
    "North",
    "Oak",
    "Pine",
]
TOWN_B = ["brook", "ford", "haven", "mere", "ridge", "stead", "vale", "wick"]
RIVERS = ["Alder", "Brenna", "Corra", "Dunmere", "Esk", "Fallow", "Grisle", "Hanna", "Ister", "Joren"]
PROVINCES = ["Westmark", "Eastfold", "Highmoor", "Lowhaven", "Northreach", "Southdale"]
CRAFTS = ["glassblowing", "clockmaking", "weaving", "pottery", "shipbuilding", "cheesemaking"]


def main(seed: int = 11) -> None:
    rng = random.Random(seed)
    towns = rng.sample([a + b for a in TOWN_A for b in TOWN_B], 80)
    town_facts = {
        t: {
            "river": rng.choice(RIVERS),
            "province": rng.choice(PROVINCES),
            "craft": rng.choice(CRAFTS),
            "people": rng.randrange(2, 90) * 100,
        }
        for t in towns
    }
    people = rng.sample([f"{f} {la}" for f in FIRST for la in LAST], 300)
    corpus, questions = [], []
    for town, f in town_facts.items():
        corpus.append(
            {
                "title": town,
                "text": f"{town} is a town of about {f['people']} inhabitants on the {f['river']} river, "
                f"in the province of {f['province']}. It is known for its {f['craft']}.",
            }
        )
    for i, person in enumerate(people):
        town = rng.choice(towns)
        profession, work = rng.choice(PROFESSIONS)
        year = rng.randrange(1820, 1990)
        corpus.append(
            {
                "title": person,
                "text": f"{person} (born {year}) is a {profession} known for {work}. "
                f"{person.split()[0]} grew up in {town} and later moved abroad.",
            }
        )
        kind = rng.choice(("river", "province", "craft"))
        question = {
            "river": f"On which river lies the town where {person} grew up?",
            "province": f"In which province is the town where {person} grew up?",
            "craft": f"What is the home town of {person} known for?",
        }[kind]
        if i < 300:
            questions.append(
                {
                    "id": f"hq-{i:04d}",
                    "question": question,
                    "answer": town_facts[town][kind],
                    "supporting_titles": f"{person} | {town}",
                }
            )
    rng.shuffle(corpus)
    with (HERE / "corpus.jsonl").open("w") as out:
        out.writelines(json.dumps(doc) + "\n" for doc in corpus)
    with (HERE / "questions.jsonl").open("w") as out:
        out.writelines(json.dumps(q) + "\n" for q in questions)


if __name__ == "__main__":
    main()
