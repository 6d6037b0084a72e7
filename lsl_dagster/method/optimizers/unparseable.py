"""When an optimizer step cannot parse a model's reply: the error, and what to change."""

from __future__ import annotations

from dspy.utils.exceptions import AdapterParseError

from lsl_dagster.llm.replies import FormatWatch


class OptimizerOutputError(Exception):
    """An optimizer step could not parse the model's output, even after DSPy's retries and fallbacks."""


def what_to_change(stage: str, name: str) -> str:
    """The settings that help when `name`'s proposals in `stage` could not be parsed (the budget-matched
    arm runs with Stage 1's settings)."""
    if stage == "stage2":
        # GEPA's reflection is plain text with the instruction in a ``` block: no adapter parses it.
        section, model_key, fallback, kind = "stage2", "reflection", "gepa", "plain-text proposals"
    else:
        section, model_key, fallback, kind = "stage1", "prompt_model", "bootstrap_rs", "no instructions"
    advice = f"a stronger model for proposals (`{section}: {{{model_key}: large}}`)"
    if name != fallback:
        advice += f", an optimizer that writes {kind} (`{section}: {{optimizer: {fallback}}}`)"
    return advice


def unparseable(stage: str, name: str, watch: FormatWatch, exc: AdapterParseError) -> OptimizerOutputError:
    """The message a user can act on when an optimizer step could not parse a model's reply."""
    model = watch.last_failure[0] if watch.last_failure else "the model"
    counts = watch.by_model.get(model)
    rate = f"{counts.unparseable} of its {counts.replies} replies" if counts else "its replies"
    dspy_said = str(exc).strip().splitlines()[0]
    return OptimizerOutputError(
        f"{stage} ({name}): {model} wrote output DSPy could not parse ({rate} in this stage could not be "
        "parsed, DSPy's ChatAdapter -> JSONAdapter fallback included), so the optimizer could not go on. "
        f"What to change: {what_to_change(stage, name)}, or a larger max_tokens on the model entry if "
        f"its replies are cut off. DSPy said: {dspy_said}"
    )
