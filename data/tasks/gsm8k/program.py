"""GSM8K: chain of thought to a number; the metric compares it with the number after the gold "####"."""

from __future__ import annotations

import re

import dspy

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class Solve(dspy.Signature):
    """Solve the math word problem."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the final numeric answer, a number only")


def build() -> dspy.Module:
    return dspy.ChainOfThought(Solve)


def final_number(text: str) -> float | None:
    """The answer a text states: the number after its last "####" (GSM8K's gold format), else its last
    number; thousands separators and a leading $ allowed. None when it states no number."""
    text = text.replace(",", "")
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    found = _NUMBER.findall(text)
    return float(found[-1]) if found else None


def _shown(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def metric(example, prediction, trace=None, pred_name=None, pred_trace=None):
    """1 when the program's number equals the gold one; the feedback gives both."""
    want = final_number(example.answer)
    if want is None:
        raise ValueError(f"gold answer without a number: {example.answer[-80:]!r}")
    got_text = str(getattr(prediction, "answer", "") or "")
    got = final_number(got_text)
    if got is None:
        return dspy.Prediction(
            score=0.0,
            feedback=f"Expected {_shown(want)}, got no number (the answer was {got_text[:200]!r}): the "
            "answer field must end with the final number.",
        )
    score = float(abs(got - want) < 1e-9)
    feedback = (
        f"Correct: {_shown(want)}."
        if score
        else f"Expected {_shown(want)}, got {_shown(got)}. The gold solution: {example.answer[:600]}"
    )
    return dspy.Prediction(score=score, feedback=feedback)
