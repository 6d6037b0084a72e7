"""HotpotQA (distractor) as a two-hop program over the example's own ten paragraphs: a first query, BM25
among the paragraphs, a second query given what the first found, BM25 again, an answer from both. The
metric is exact match (GEPA's); its feedback names the hop that missed a supporting paragraph."""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import dspy
from rank_bm25 import BM25Okapi

TOP_K = 2  # paragraphs per hop: two hops can reach both supporting paragraphs
_WORD = re.compile(r"\w+")


def paragraphs_of(context: str) -> list[tuple[str, str]]:
    """(title, text) of each paragraph, from the dataset's `context` column as the task passes it (JSON of
    {"title": [...], "sentences": [[...], ...]})."""
    record = json.loads(context)
    return [(t, "".join(s)) for t, s in zip(record["title"], record["sentences"], strict=True)]


def search(query: str, paragraphs: list[tuple[str, str]], k: int = TOP_K) -> list[tuple[str, str]]:
    tokens = [_WORD.findall(f"{t} {text}".lower()) for t, text in paragraphs]
    scores = BM25Okapi(tokens).get_scores(_WORD.findall(query.lower()))
    best = sorted(range(len(paragraphs)), key=lambda i: (-scores[i], i))[:k]
    return [paragraphs[i] for i in best]


def _shown(found: list[tuple[str, str]]) -> str:
    return "\n".join(f"[{title}] {text}" for title, text in found)


class FirstQuery(dspy.Signature):
    """Write a search query for the first paragraph needed to answer the question."""

    question: str = dspy.InputField()
    query: str = dspy.OutputField(desc="a short keyword query")


class SecondQuery(dspy.Signature):
    """Given the paragraphs found so far, write a search query for the paragraph still missing."""

    question: str = dspy.InputField()
    passages: str = dspy.InputField(desc="paragraphs the first query found, each starting with its [title]")
    query: str = dspy.OutputField(desc="a short keyword query")


class Answer(dspy.Signature):
    """Answer the question from the paragraphs."""

    question: str = dspy.InputField()
    passages: str = dspy.InputField(desc="retrieved paragraphs, each starting with its [title]")
    answer: str = dspy.OutputField(desc="a short answer: a few words, a name, a date, or yes/no")


class HotpotMultiHop(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first_query = dspy.Predict(FirstQuery)
        self.second_query = dspy.Predict(SecondQuery)
        self.answer = dspy.ChainOfThought(Answer)

    def forward(self, question: str, paragraphs: str) -> dspy.Prediction:
        pool = paragraphs_of(paragraphs)
        first = search(self.first_query(question=question).query, pool)
        rest = [p for p in pool if p not in first]
        second = search(self.second_query(question=question, passages=_shown(first)).query, rest)
        answer = self.answer(question=question, passages=_shown(first + second)).answer
        return dspy.Prediction(
            answer=answer,
            titles=" | ".join(t for t, _ in first + second),
            first_hop=" | ".join(t for t, _ in first),
        )


def build() -> dspy.Module:
    return HotpotMultiHop()


def normalize(text: str) -> str:
    """HotpotQA's official answer normalization: lower case, no punctuation, articles or extra spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def f1(gold: str, got: str) -> float:
    gold_tokens, got_tokens = normalize(gold).split(), normalize(got).split()
    common = sum((Counter(gold_tokens) & Counter(got_tokens)).values())
    if not common:
        return 0.0
    precision, recall = common / len(got_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_titles(example: dspy.Example) -> list[str]:
    """The supporting paragraphs' titles, in order, once each (the `supporting_facts` column's JSON)."""
    return list(dict.fromkeys(json.loads(example.titles)["title"]))


def _titles(value: object) -> set[str]:
    return {t.strip() for t in str(value or "").split(" | ") if t.strip()}


def metric(example, prediction, trace=None, pred_name=None, pred_trace=None):
    """Exact match on the answer (token F1 in the feedback); the feedback follows the supporting
    paragraphs through both hops."""
    got = str(getattr(prediction, "answer", "") or "")
    score = float(normalize(got) == normalize(example.answer))
    gold = gold_titles(example)
    first, found = _titles(getattr(prediction, "first_hop", "")), _titles(getattr(prediction, "titles", ""))
    said = f"Expected {example.answer!r}, got {got!r} (token F1 {f1(example.answer, got):.2f})."
    missed_first = [t for t in gold if t not in first]
    missed = [t for t in gold if t not in found]
    if score:
        feedback = f"Correct: {example.answer!r}."
    elif not missed:
        feedback = (
            f"{said} The two hops retrieved every supporting paragraph ({', '.join(gold)}); the answer "
            "should be read from them, in as few words as the question needs."
        )
    elif len(missed_first) == len(gold):
        feedback = (
            f"{said} The first hop retrieved none of the supporting paragraphs ({', '.join(gold)}): its "
            "query should name the entity the question starts from."
        )
    else:
        feedback = (
            f"{said} The first hop found {', '.join(t for t in gold if t in first)}; the second hop missed "
            f"{', '.join(missed)}: its query should name the entity the first paragraph leads to."
        )
    return dspy.Prediction(score=score, feedback=feedback)
