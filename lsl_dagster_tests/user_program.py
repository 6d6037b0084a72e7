"""A program importable as an installed module (lsl_dagster_tests.user_program:build), not from a task
directory."""

import dspy


class Respond(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.respond(question=question)


def build() -> dspy.Module:
    return Respond()
