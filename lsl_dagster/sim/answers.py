"""A task call's answers: gold with a probability set by tier, prompt and example, else a likely mistake."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from lsl_dagster.sim.answer_key import AnswerKey, Known
from lsl_dagster.sim.prompts import Call
from lsl_dagster.sim.quality import Quality, effective_quality, labelled_fields
from lsl_dagster.sim.words import NORMAL, SAY, content_words, normalize, sigmoid


def salient(inputs: Mapping[str, str], count: int) -> str:
    """The input's most telling words, in order: what a model copies into a query or a summary."""
    words = content_words(" ".join(inputs.values()))
    frequency = Counter(words)
    ranked = sorted(dict.fromkeys(words), key=lambda w: (-frequency[w], -len(w)))[:count]
    keep = set(ranked)
    return " ".join(w for w in dict.fromkeys(words) if w in keep)


def _wrong(call: Call, key: AnswerKey | None, field: str, gold: str) -> str:
    """A plausible mistake that knows nothing of the task: another example's answer or a slip."""
    draw = call.draw("wrong", field)
    if key is not None and draw < 0.4:
        other = key.other_label(field, gold, call.draw("other", field))
        if other is not None:
            return other
    tokens = gold.split()
    numbers = [i for i, t in enumerate(tokens) if re.fullmatch(r"-?\d+(?:\.\d+)?", t)]
    if numbers:
        i = numbers[-1]
        delta = 1 + int(call.draw("delta", field) * 9)
        value = float(tokens[i]) + (delta if draw < 0.7 else -delta)
        tokens[i] = str(int(value)) if value.is_integer() else f"{value:g}"
    elif len(tokens) > 2 and draw < 0.7:
        j = int(call.draw("swap", field) * (len(tokens) - 1))
        tokens[j], tokens[j + 1] = tokens[j + 1], tokens[j]
    elif len(tokens) > 1:
        del tokens[int(call.draw("drop", field) * len(tokens))]
    else:
        words = salient(call.inputs, 6).split()
        tokens = [words[int(call.draw("guess", field) * len(words))]] if words else ["unknown"]
    wrong = " ".join(tokens)
    return wrong if normalize(wrong) != normalize(gold) else wrong + " " + wrong


def task_outputs(call: Call, key: AnswerKey | None, known: Known | None, quality: Quality) -> dict[str, str]:
    tier = call.tier
    answers: dict[str, str] = {}
    for field in labelled_fields(call, key):
        gold = known.labels.get(field) if known is not None else None
        if gold is None:
            # An example nobody has the answer to: a guess from the inputs.
            words = salient(call.inputs, 8).split() or ["unknown"]
            answers[field] = words[int(call.draw("guess", field) * len(words))]
            continue
        # Chain-of-thought: a free-text field before the answer gives the model room to think.
        thinks = any(
            f not in known.labels and call.outputs.index(f) < call.outputs.index(field) for f in call.outputs
        )
        # Evidence: the answer appears in another input (a retrieved passage, say).
        evidence = len(gold) > 2 and any(
            re.search(rf"\b{re.escape(normalize(gold))}\b", normalize(v))
            for n, v in call.inputs.items()
            if n not in known.fields
        )
        logit = (
            tier.ability
            + 0.4 * thinks
            + 0.8 * evidence
            + effective_quality(tier, quality.value)
            - (key.profile.difficulty(known) if key is not None else 0.0)
            - 1.8
        )
        # Hard examples are hard for every prompt and tier: the draw is correlated through the example.
        z = 0.75 * known.latent + 0.66 * NORMAL.inv_cdf(call.draw("correct", field))
        answers[field] = gold if NORMAL.cdf(z) < sigmoid(logit) else _wrong(call, key, field, gold)
    values = {}
    for field in call.outputs:
        if field in answers:
            values[field] = answers[field]
        elif any(call.outputs.index(f) > call.outputs.index(field) for f in answers):
            shown = ", ".join(f"{f}: {v}" for f, v in answers.items())
            values[field] = SAY["think"].format(", ".join(call.inputs), salient(call.inputs, 10), shown)
        else:
            values[field] = salient(call.inputs, 4 + int(2 * max(0.0, tier.ability)))
    return values
