"""The task program and its prompt: build it from a task, capture it as a PromptCandidate, rebuild it."""

from __future__ import annotations

from typing import Any

import dspy

from lsl_dagster.models import Ledger, PredictorPrompt, PromptCandidate, Provenance
from lsl_dagster.tasks import Example, Task


def task_program(task: Task) -> dspy.Module:
    """The unoptimized program: chain of thought over the task's signature and plain instructions."""
    definition = task.definition
    fields: dict[str, Any] = {name: dspy.InputField(desc=desc) for name, desc in definition.inputs.items()}
    fields[definition.output] = dspy.OutputField(desc=definition.output_description)
    return dspy.ChainOfThought(dspy.Signature(fields, definition.instructions))


def to_dspy(example: Example, task: Task) -> dspy.Example:
    record = {**example.inputs, task.definition.output: example.answer, "example_id": example.id}
    return dspy.Example(**record).with_inputs(*task.definition.inputs)


def _demo(demo: Any) -> dict[str, Any]:
    record = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
    return {key: value for key, value in record.items() if not key.startswith("dspy_")}


def capture(
    program: dspy.Module,
    task: Task,
    experiment_id: str,
    provenance: Provenance,
    ledger: Ledger,
    simulated: bool,
) -> PromptCandidate:
    predictors = {}
    for name, predictor in program.named_predictors():
        signature = predictor.signature
        predictors[name] = PredictorPrompt(
            instructions=signature.instructions,
            field_descriptions={
                field: info.json_schema_extra.get("desc", "") for field, info in signature.fields.items()
            },
            demos=[_demo(demo) for demo in predictor.demos],
        )
    return PromptCandidate(
        experiment_id=experiment_id,
        task=task.name,
        predictors=predictors,
        provenance=provenance,
        ledger=ledger,
        simulated=simulated,
    )


def rebuild(candidate: PromptCandidate, task: Task) -> dspy.Module:
    """A runnable program with the candidate's instructions, field descriptions and demos."""
    program = task_program(task)
    for name, predictor in program.named_predictors():
        prompt = candidate.predictors[name]
        signature = predictor.signature.with_instructions(prompt.instructions)
        for field, desc in prompt.field_descriptions.items():
            if field in signature.fields:
                signature = signature.with_updated_fields(field, desc=desc)
        predictor.signature = signature
        predictor.demos = [dspy.Example(**demo) for demo in prompt.demos]
    return program


def render(candidate: PromptCandidate, task: Task) -> str:
    """The literal messages the model receives, as markdown (inputs shown as {placeholders})."""
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
