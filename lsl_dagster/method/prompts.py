"""A task program's prompt: capture every predictor's state as a PromptCandidate, rebuild the program from
it, render it. Works for any program: DSPy's own per-predictor state (dump_state / load_state) carries it."""

from __future__ import annotations

from typing import Any

import dspy

from lsl_dagster.records import Ledger, PredictorPrompt, PromptCandidate, Provenance
from lsl_dagster.tasks.task import Task


class ProgramMismatch(ValueError):
    """A stored prompt does not fit the task's program (its predictors were renamed, added or removed)."""


def _demo(demo: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in demo.items() if not key.startswith("dspy_")}


def predictor_prompt(predictor: dspy.Predict) -> PredictorPrompt:
    state = predictor.dump_state()
    signature = state["signature"]
    return PredictorPrompt(
        instructions=signature["instructions"],
        field_descriptions={
            name: field["description"]
            for name, field in zip(predictor.signature.fields, signature["fields"], strict=True)
        },
        demos=[_demo(demo) for demo in state["demos"]],
    )


def capture(
    program: dspy.Module,
    task: Task,
    experiment_id: str,
    provenance: Provenance,
    ledger: Ledger,
    simulated: bool,
) -> PromptCandidate:
    return PromptCandidate(
        experiment_id=experiment_id,
        task=task.name,
        predictors={name: predictor_prompt(p) for name, p in program.named_predictors()},
        provenance=provenance,
        ledger=ledger,
        simulated=simulated,
    )


def rebuild(candidate: PromptCandidate, task: Task) -> dspy.Module:
    """The task's program, freshly built, with each predictor's captured state loaded into it."""
    program = task.program()
    predictors = dict(program.named_predictors())
    if set(predictors) != set(candidate.predictors):
        raise ProgramMismatch(
            f"the stored prompt of {candidate.experiment_id} has predictors {sorted(candidate.predictors)} "
            f"but task {task.name!r} now builds {sorted(predictors)}"
        )
    for name, predictor in predictors.items():
        prompt = candidate.predictors[name]
        state = predictor.dump_state()
        state["signature"]["instructions"] = prompt.instructions
        for field, saved in zip(predictor.signature.fields, state["signature"]["fields"], strict=True):
            saved["description"] = prompt.field_descriptions.get(field, saved["description"])
        # The experiment's models run every predictor, whatever LM the program's author pinned.
        state["lm"] = None
        state["demos"] = []
        predictor.load_state(state)
        predictor.demos = [dspy.Example(**demo) for demo in prompt.demos]
    return program


def render(candidate: PromptCandidate, task: Task) -> str:
    """The literal messages each predictor sends, as markdown (inputs shown as {placeholders})."""
    program = rebuild(candidate, task)
    adapter = dspy.ChatAdapter()
    sections = []
    for name, predictor in program.named_predictors():
        inputs = {field: f"{{{field}}}" for field in predictor.signature.input_fields}
        messages = adapter.format(predictor.signature, predictor.demos, inputs)
        sections.append(f"### Predictor `{name}`")
        for message in messages:
            sections.append(f"**{message['role']}**\n\n```text\n{message['content']}\n```")
    return "\n\n".join(sections)
