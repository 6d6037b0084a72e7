"""How good a prompt is, judged without knowing the task: grounded instructions and correct demos help."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lsl_dagster.sim.answer_key import AnswerKey, Known
from lsl_dagster.sim.prompts import Call
from lsl_dagster.sim.tiers import Tier
from lsl_dagster.sim.words import NOT_SUPPLIED, content_words, normalize, split_sentences


@dataclass(frozen=True)
class Quality:
    value: float  # logit shift before the tier's gain and cap
    named: bool  # the instructions name a field to answer
    demos_full: int  # demos with every output field supplied


def labelled_fields(call: Call, key: AnswerKey | None) -> list[str]:
    """The output fields the data has labels for (by name); the others are the program's own steps."""
    if key is None:
        return call.outputs[-1:]
    return [f for f in call.outputs if f in key.profile.labels]


def mentions(instructions: str, fields: Iterable[str]) -> bool:
    lower = instructions.lower()
    return any(
        re.search(rf"\b{re.escape(f.lower())}\b|\b{re.escape(f.lower().replace('_', ' '))}\b", lower)
        for f in fields
    )


def _instruction_quality(call: Call, key: AnswerKey | None, known: Known | None) -> tuple[float, bool]:
    text = call.instructions
    answer_fields = labelled_fields(call, key)
    named = mentions(text, answer_fields)
    vocabulary = key.profile.vocabulary if key is not None else frozenset()
    words = text.split()
    distinct = set(content_words(text))
    grounded = distinct & vocabulary
    field_words = {part for f in call.outputs + list(call.inputs) for part in f.lower().split("_")}
    unrelated = len(distinct - vocabulary - field_words)
    own = (
        set(content_words(" ".join(v for n, v in call.inputs.items() if n in known.fields)))
        if known
        else set()
    )
    own &= vocabulary
    coverage = len(own & grounded) / len(own) if own else 0.0
    sentences = [s.lower() for s in split_sentences(text)]
    repeated = len(sentences) - len(set(sentences))
    quality = 0.8 * (1 - math.exp(-len(grounded) / 8)) + 1.5 * coverage + 0.2 * named
    quality -= 0.02 * max(0, unrelated - 20)  # text that has nothing to do with the data distracts
    quality -= 0.004 * max(0, len(words) - 150)  # bloat
    quality -= 0.2 * repeated
    return quality, named


def prompt_quality(call: Call, key: AnswerKey | None, known: Known | None) -> Quality:
    instruction_quality, named = _instruction_quality(call, key, known)
    right = wrong = full = 0
    for inputs, outputs in call.demos:
        supplied = {k: v for k, v in outputs.items() if v and v != NOT_SUPPLIED}
        full += bool(supplied) and len(supplied) == len(call.outputs)
        demo = key.lookup(inputs) if key is not None else None
        if demo is None:
            continue
        checked = [
            normalize(supplied[f]) == normalize(g)
            for f in call.outputs
            if f in supplied and (g := demo.labels.get(f)) is not None
        ]
        if checked:
            right, wrong = right + all(checked), wrong + (not all(checked))
    demo_quality = 0.15 * min(right, 4) + 0.05 * min(full, 4) - 0.4 * wrong
    return Quality(instruction_quality + demo_quality, named, full)


def effective_quality(tier: Tier, quality: float) -> float:
    effective = quality * tier.prompt_gain
    return tier.prompt_cap * (1 - math.exp(-effective / tier.prompt_cap)) if effective > 0 else effective
