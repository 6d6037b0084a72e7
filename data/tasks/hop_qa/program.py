"""Two-hop question answering over corpus.jsonl: search for the person, read which town they grew up in,
search for the town, answer. Three predictors and a BM25 retriever (rank-bm25); the metric scores the
answer and its feedback says which hop lost the trail."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import dspy
from rank_bm25 import BM25Okapi

CORPUS = Path(__file__).resolve().parent / "corpus.jsonl"
TOP_K = 3
_WORD = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@cache
def _index() -> tuple[list[dict[str, str]], BM25Okapi]:
    docs = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    return docs, BM25Okapi([_tokens(f"{d['title']} {d['text']}") for d in docs])


def search(query: str, k: int = TOP_K) -> list[dict[str, str]]:
    docs, bm25 = _index()
    scores = bm25.get_scores(_tokens(query))
    best = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[:k]
    return [docs[i] for i in best]


def _context(docs: list[dict[str, str]]) -> str:
    return "\n".join(f"[{d['title']}] {d['text']}" for d in docs)


class FirstQuery(dspy.Signature):
    """Write a search query for the first passage needed to answer the question."""

    question: str = dspy.InputField()
    query: str = dspy.OutputField(desc="a short keyword query")


class SecondQuery(dspy.Signature):
    """Given the passages found so far, write a search query for the passage still missing."""

    question: str = dspy.InputField()
    context: str = dspy.InputField(desc="passages retrieved by the first query")
    query: str = dspy.OutputField(desc="a short keyword query")


class Answer(dspy.Signature):
    """Answer the question from the passages."""

    question: str = dspy.InputField()
    context: str = dspy.InputField(desc="retrieved passages, each starting with its [title]")
    answer: str = dspy.OutputField(desc="a short answer, a few words at most")


class HopQA(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generate_query = dspy.Predict(FirstQuery)
        self.generate_query2 = dspy.Predict(SecondQuery)
        self.answer = dspy.ChainOfThought(Answer)

    def forward(self, question: str) -> dspy.Prediction:
        first = search(self.generate_query(question=question).query)
        second = search(self.generate_query2(question=question, context=_context(first)).query)
        docs = list({d["title"]: d for d in first + second}.values())
        answer = self.answer(question=question, context=_context(docs)).answer
        return dspy.Prediction(answer=answer, titles=" | ".join(d["title"] for d in docs))


def build() -> dspy.Module:
    return HopQA()


def _norm(text: str) -> str:
    return " ".join(_tokens(text))


def metric(example, prediction, trace=None, pred_name=None, pred_trace=None):
    """Exact match on the answer; the feedback follows the trail through both hops."""
    got = str(getattr(prediction, "answer", "") or "")
    score = float(_norm(got) == _norm(example.answer))
    person, town = (t.strip() for t in example.titles.split("|"))
    found = {t.strip() for t in str(getattr(prediction, "titles", "") or "").split("|")}
    if score:
        feedback = f"Correct: {example.answer!r}."
    elif person not in found:
        feedback = (
            f"Expected {example.answer!r}, got {got!r}. The passage about {person} was never retrieved: "
            "the first query should name the person the question is about."
        )
    elif town not in found:
        feedback = (
            f"Expected {example.answer!r}, got {got!r}. The passage about {person} was found; it says they "
            f"grew up in {town}, but that town's passage was not retrieved: the second query should name the "
            "town mentioned in the first passage."
        )
    else:
        feedback = (
            f"Expected {example.answer!r}, got {got!r}. Both passages ({person}, {town}) were retrieved; "
            "the answer should be read from the town's passage, in a few words."
        )
    if pred_name is not None and pred_name.startswith("generate_query") and score:
        feedback += " The queries found both passages."
    return dspy.Prediction(score=score, feedback=feedback)
