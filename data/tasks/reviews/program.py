"""Review triage: which aspect of the product a review is about, then how the reviewer feels about it.
Two predictors; the metric gives half a point per field and says which one was off."""

from __future__ import annotations

import dspy

ASPECTS = ("battery", "screen", "price", "delivery", "support")


class Aspect(dspy.Signature):
    """Name the aspect of the product the review talks about."""

    review: str = dspy.InputField()
    aspect: str = dspy.OutputField(desc=f"one of: {', '.join(ASPECTS)}")


class Sentiment(dspy.Signature):
    """Say whether the reviewer is positive or negative about that aspect."""

    review: str = dspy.InputField()
    aspect: str = dspy.InputField()
    sentiment: str = dspy.OutputField(desc="positive or negative")


class Triage(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.extract_aspect = dspy.Predict(Aspect)
        self.judge_sentiment = dspy.ChainOfThought(Sentiment)

    def forward(self, review: str) -> dspy.Prediction:
        aspect = self.extract_aspect(review=review).aspect
        sentiment = self.judge_sentiment(review=review, aspect=aspect).sentiment
        return dspy.Prediction(aspect=aspect, sentiment=sentiment)


def build() -> dspy.Module:
    return Triage()


def _clean(value) -> str:
    return str(value or "").strip().lower().strip(".")


def metric(example, prediction, trace=None):
    aspect_ok = _clean(getattr(prediction, "aspect", "")) == example.aspect
    sentiment_ok = _clean(getattr(prediction, "sentiment", "")) == example.sentiment
    wrong = [
        f"{name} should be {gold!r}, not {_clean(getattr(prediction, name, ''))!r}"
        for name, gold, ok in (
            ("aspect", example.aspect, aspect_ok),
            ("sentiment", example.sentiment, sentiment_ok),
        )
        if not ok
    ]
    feedback = "Both fields are right." if not wrong else "; ".join(wrong) + "."
    return dspy.Prediction(score=(aspect_ok + sentiment_ok) / 2, feedback=feedback)
