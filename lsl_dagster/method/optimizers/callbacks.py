"""What watches an optimizer while it runs: the best validated program so far, GEPA's events, its stop."""

from __future__ import annotations

from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from lsl_dagster.llm.ledger import Meter
from lsl_dagster.method.progress import StageProgress


class BestSoFar(BaseCallback):
    """Remembers the best program evaluated on the full validation set, from dspy.Evaluate (MIPROv2,
    random search, SIMBA) or GEPA's valset events, so a budget stop still returns the best candidate found."""

    def __init__(self, student: dspy.Module, valset_size: int, progress: StageProgress | None = None):
        self.student = student
        self.valset_size = valset_size
        self.progress = progress  # told each validated score, for the stage's progress lines
        self.program: dspy.Module | None = None
        self.score: float | None = None
        self.first_score: float | None = None
        self._started: dict[str, tuple[dspy.Module, int]] = {}

    def _offer(self, program: dspy.Module, value: float) -> None:
        if self.first_score is None:  # MIPROv2, GEPA and our SIMBA run evaluate the starting program first
            self.first_score = value
        if self.score is None or value > self.score:
            self.program, self.score = program.deepcopy(), value
        if self.progress is not None:
            self.progress.offer_score(value)

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        devset = inputs.get("devset") or instance.devset
        self._started[call_id] = (inputs["program"], len(devset))

    def on_evaluate_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        program, size = self._started.pop(call_id, (None, 0))
        if exception is None and program is not None and size == self.valset_size and outputs is not None:
            # From the per-example scores: dspy.Evaluate's own score is a percentage rounded to 2 places.
            self._offer(program, sum(score for *_, score in outputs.results) / size)

    def on_valset_evaluated(self, event: dict[str, Any]) -> None:
        if event["num_examples_evaluated"] == event["total_valset_size"]:
            self._offer(with_instructions(self.student, event["candidate"]), event["average_score"])


def with_instructions(program: dspy.Module, instructions: dict[str, str]) -> dspy.Module:
    copy = program.deepcopy()
    for name, predictor in copy.named_predictors():
        if name in instructions:
            predictor.signature = predictor.signature.with_instructions(instructions[name])
    return copy


class GepaLog:
    """GEPA's own events, counted: enough to say why a run ended without changing the prompt."""

    def __init__(self) -> None:
        self.iterations = self.proposals = self.reflections = self.accepted = self.rejected = 0
        self.skipped: dict[str, int] = {}

    def on_iteration_start(self, event: Any) -> None:
        self.iterations += 1

    def on_proposal_start(self, event: Any) -> None:
        self.reflections += 1

    def on_proposal_end(self, event: Any) -> None:
        self.proposals += 1

    def on_candidate_accepted(self, event: Any) -> None:
        self.accepted += 1

    def on_candidate_rejected(self, event: Any) -> None:
        self.rejected += 1

    def on_evaluation_skipped(self, event: Any) -> None:
        self.skipped[event["reason"]] = self.skipped.get(event["reason"], 0) + 1

    def summary(self) -> str:
        if self.iterations == 0:
            return "GEPA evaluated the starting prompt and ran no iteration"
        parts = [
            f"GEPA ran {self.iterations} iteration(s)",
            f"{self.proposals} proposal(s) from {self.reflections} reflection(s)",
            f"{self.accepted} accepted, {self.rejected} rejected on the minibatch",
        ]
        if failed := self.reflections - self.proposals:
            parts.append(f"{failed} reflection(s) gave no usable instruction")
        if perfect := self.skipped.get("all_scores_perfect"):
            parts.append(f"{perfect} minibatch(es) already scored perfectly, so nothing to reflect on")
        return ", ".join(parts)


class BudgetStopper:
    """Stops GEPA between iterations when the stage's calls cannot cover one more typical iteration."""

    def __init__(self, meter: Meter, iteration_calls: int):
        self.meter = meter
        self.iteration_calls = iteration_calls

    def __call__(self, gepa_state: Any) -> bool:
        remaining = self.meter.remaining_calls()
        return remaining is not None and remaining < self.iteration_calls
