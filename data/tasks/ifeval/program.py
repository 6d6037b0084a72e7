"""IFEval: draft a response, then rewrite it so that it follows every instruction of the prompt. The metric
checks each of the prompt's constraints (ifeval_checks.py) and scores the fraction followed."""

from __future__ import annotations

import json

import dspy
from ifeval_checks import verdict


class Respond(dspy.Signature):
    """Respond to the request."""

    prompt: str = dspy.InputField()
    response: str = dspy.OutputField()


class Revise(dspy.Signature):
    """Rewrite the draft response so that it follows every instruction in the request exactly (lengths,
    keywords, formats, case, punctuation), keeping its content."""

    prompt: str = dspy.InputField()
    draft: str = dspy.InputField()
    response: str = dspy.OutputField(desc="the rewritten response, and nothing else")


class FollowInstructions(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict(Respond)
        self.revise = dspy.Predict(Revise)

    def forward(self, prompt: str) -> dspy.Prediction:
        draft = self.respond(prompt=prompt).response
        return dspy.Prediction(response=self.revise(prompt=prompt, draft=draft).response)


def build() -> dspy.Module:
    return FollowInstructions()


def metric(example, prediction, trace=None, pred_name=None, pred_trace=None):
    """The fraction of the prompt's constraints the response follows; the feedback lists those broken."""
    ids, arguments = json.loads(example.constraints), json.loads(example.arguments)
    response = str(getattr(prediction, "response", "") or "")
    verdicts = [verdict(i, response, a) for i, a in zip(ids, arguments, strict=True)]
    broken = [f"- {i}: {v.detail}" for i, v in zip(ids, verdicts, strict=True) if not v.followed]
    score = (len(ids) - len(broken)) / len(ids)
    if not broken:
        return dspy.Prediction(score=score, feedback=f"Every constraint followed ({len(ids)}).")
    feedback = f"{len(broken)} of {len(ids)} constraints broken:\n" + "\n".join(broken)
    return dspy.Prediction(score=score, feedback=feedback)
