"""AIME: chain of thought to an integer from 0 to 999; the metric compares integers."""

from __future__ import annotations

import re

import dspy

_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
_INTEGER = re.compile(r"-?\d+")


class Solve(dspy.Signature):
    """Solve the competition math problem. The answer is an integer from 0 to 999."""

    problem: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the final answer: an integer from 0 to 999, digits only")


def build() -> dspy.Module:
    return dspy.ChainOfThought(Solve)


def stated_integer(text: str) -> int | None:
    """The integer a text gives as its answer: the last \\boxed{N}, else its last integer (thousands
    separators dropped). None when it gives none."""
    text = text.replace(",", "")
    boxed = _BOXED.findall(text)
    if boxed:
        return int(boxed[-1])
    found = _INTEGER.findall(text)
    return int(found[-1]) if found else None


def metric(example, prediction, trace=None, pred_name=None, pred_trace=None):
    """1 when the program's integer is the gold one; the feedback says what was expected and what came."""
    want = int(str(example.answer).strip())
    got_text = str(getattr(prediction, "answer", "") or "")
    got = stated_integer(got_text)
    if got == want:
        return dspy.Prediction(score=1.0, feedback=f"Correct: {want}.")
    if got is None:
        feedback = f"Expected {want}, got no integer (the answer was {got_text[:200]!r})."
    elif not 0 <= got <= 999:
        feedback = f"Expected {want}, got {got}, which is outside 0-999: every AIME answer is in that range."
    else:
        feedback = f"Expected {want}, got {got}."
    return dspy.Prediction(score=0.0, feedback=feedback)
