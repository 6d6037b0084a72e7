"""Replies to optimizers' meta-prompts (MIPROv2's proposer, GEPA's reflection): instructions distilled
from what the meta-prompt shows. Stronger tiers propose useful changes more often."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lsl_dagster.sim.prompts import Call
from lsl_dagster.sim.quality import mentions
from lsl_dagster.sim.tiers import Tier, tier_name
from lsl_dagster.sim.words import MARKUP, OWN_WORDS, SAY, content_words, sigmoid, split_sentences, uniform


def _samples(text: str) -> list[dict[str, object]]:
    """The examples a reflection prompt shows (GEPA: a JSON list, or markdown '# Example N' sections)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    samples = []
    for section in re.split(r"^# Example \d+\n", text, flags=re.M)[1:]:
        parts = re.split(r"^## (.+)\n", section, flags=re.M)
        sample: dict[str, object] = {}
        for name, body in zip(parts[1::2], parts[2::2], strict=False):
            sub = re.split(r"^### (.+)\n", body, flags=re.M)
            sample[name.strip()] = (
                {k.strip(): v.strip() for k, v in zip(sub[1::2], sub[2::2], strict=False)}
                if len(sub) > 1
                else body.strip()
            )
        samples.append(sample)
    return samples


@dataclass(frozen=True)
class _Evidence:
    """What a meta-prompt shows about the task: recurring words, the answer field, answers, feedback."""

    words: list[str]  # content words that recur across the examples shown, the most recurrent first
    rare: list[str]  # words seen once
    answer_field: str | None
    answers: list[str]
    lessons: list[str]

    @staticmethod
    def of(texts: Iterable[str], exclude: str) -> _Evidence:
        texts = [t for t in texts if t.strip()]
        text = "\n".join(texts)
        samples = [s for t in texts for s in _samples(t)]
        answer_field = None
        answers: list[str] = []
        feedback: list[str] = []
        units: list[str] = []  # one per example shown
        names: set[str] = set()  # the program's field names: structure, not content
        for sample in samples:
            outputs = sample.get("Generated Outputs")
            if isinstance(outputs, dict) and outputs:
                answer_field = list(outputs)[-1]
                answers.append(str(outputs[answer_field]))
                names |= set(outputs)
            if isinstance(sample.get("Inputs"), dict):
                names |= set(sample["Inputs"])
            if sample.get("Feedback"):
                feedback.append(str(sample["Feedback"]))
            units.append(json.dumps(sample.get("Inputs", sample)))
        # MIPROv2 shows the module as "Predict(question) -> reasoning, answer" and data as Example reprs.
        arrows = re.findall(r"(\w+(?:, \w+)*)\)?\s*->\s*(\w+(?:, \w+)*)", text)
        for inputs, outputs in arrows:
            names |= set(inputs.split(", ")) | set(outputs.split(", "))
        if answer_field is None and arrows:
            answer_field = arrows[-1][1].split(", ")[-1]
        for record, input_keys in re.findall(r"Example\(\{(.*?)\}\) \(input_keys=\{(.*?)\}\)", text):
            keys = re.findall(r"'(\w+)': ", record)
            names |= set(keys)
            labels = [k for k in keys if f"'{k}'" not in input_keys and not k.endswith("id")]
            answer_field = answer_field or (labels[-1] if labels else None)
            units.append(record)
        if answer_field is not None and not answers:
            shown = re.findall(
                rf"'{answer_field}': '([^']*)'|^{answer_field}:\s*(.+)$", text, flags=re.M | re.I
            )
            answers = [a or b for a, b in shown]
        ignored = (
            MARKUP
            | OWN_WORDS
            | set(content_words(exclude))
            | {p for n in names for p in n.lower().split("_")}
        )
        words = [w for w in content_words(text) if w not in ignored]
        counts = Counter(words)
        # What recurs across the examples shown is the task's; what recurs within one is that example's.
        spread = Counter(w for unit in units for w in set(content_words(unit))) if len(units) >= 2 else counts
        first = {w: i for i, w in reversed(list(enumerate(words)))}
        ranked = sorted(counts, key=lambda w: (-spread[w], -counts[w], first[w]))
        lessons: Counter[str] = Counter()
        for entry in feedback:
            for sentence in split_sentences(entry):
                # A metric's advice that names no particular value holds beyond its example.
                specific = re.search(r"'[^']*'|\"[^\"]*\"|\d", sentence)
                if not specific and len([w for w in content_words(sentence) if w not in ignored]) >= 3:
                    lessons[sentence] += 1
        return _Evidence(
            words=[w for w in ranked if spread[w] >= 2],
            rare=[w for w in ranked if counts[w] == 1],
            answer_field=answer_field,
            answers=[a for a in answers if a.strip()],
            lessons=[s for s, _ in lessons.most_common(3)],
        )

    def shape(self) -> str:
        """How the answers look, from the answers shown."""
        empty, number, word, words = SAY["shapes"].split("; ")
        if not self.answers:
            return empty
        if all(re.fullmatch(r"\s*-?\d[\d.,]*\s*", a) for a in self.answers):
            return number
        length = round(sum(len(a.split()) for a in self.answers) / len(self.answers))
        return word if length <= 1 else words.format(length)


def _propose(tier: Tier, base: str, evidence: _Evidence, draw: Callable[..., float], count: int) -> str:
    """Extend an instruction with `count` additions: a useful one with probability sigmoid(ability + 0.3),
    else noise (words of single examples) or bloat (the instruction restated)."""
    useful_chance = sigmoid(tier.ability + 0.3)
    parts = [base.strip()] if base.strip() and draw("keep") > 0.3 * (1 - useful_chance) else []
    salient = [w for w in evidence.words if w not in base.lower()]
    useful: list[str] = []
    if salient:
        size = 2 + int(max(0.0, tier.ability))
        useful.append(SAY["focus"].format(", ".join(salient[:size])))
    if evidence.answer_field and not mentions(base, [evidence.answer_field]):
        useful.append(SAY["format"].format(evidence.answer_field, evidence.shape()))
    useful += [s if s.endswith(".") else s + "." for s in evidence.lessons if s.lower() not in base.lower()]
    if len(salient) > 4:
        useful.append(SAY["more"].format(", ".join(salient[4:7])))
    for i in range(count):
        roll = draw("addition", i)
        if roll < useful_chance and useful:
            # Strong tiers take the most telling addition first; weak ones pick among the first few.
            choices = min(len(useful), 1 if tier.ability >= 1 else 3)
            parts.append(useful.pop(int(draw("pick", i) * choices)))
        elif roll < useful_chance + 0.6 * (1 - useful_chance) and evidence.rare:
            chosen = [evidence.rare[int(draw("rare", i, j) * len(evidence.rare))] for j in range(5)]
            parts.append(SAY["noise"].format(", ".join(dict.fromkeys(chosen))))
        else:
            # Bloat: the instruction restated.
            parts.append(" ".join(parts) or base)
    return " ".join(parts).strip()


def meta_outputs(call: Call) -> dict[str, str]:
    inputs = call.inputs
    base = (
        inputs.get("current_instruction") or inputs.get("basic_instruction") or inputs.get("instruction", "")
    )
    # The instruction itself, DSPy's tip and the program's source code say nothing about the data.
    skip = {"current_instruction", "basic_instruction", "instruction", "tip", "program_code"}
    evidence = _Evidence.of([v for k, v in inputs.items() if k not in skip], base)
    values = {}
    for name in call.outputs:
        if name == "shortened_instruction":
            values[name] = " ".join(split_sentences(base)[:2])
        elif "instruction" in name:
            values[name] = _propose(call.tier, base, evidence, call.draw, 1 + int(call.draw("count") * 3))
        elif name == "observations" and inputs.get("prior_observations"):
            values[name] = "COMPLETE"  # DSPy's dataset descriptor stops asking when told so
        elif call.output_types.get(name, "").startswith("dict["):
            # Advice per named part (e.g. per module): keyed by the names a list-valued input gives.
            keys = next((k for v in inputs.values() if (k := _name_list(v))), [name])
            advice = {
                key: _propose(call.tier, "", evidence, lambda *label, k=key: call.draw(k, *label), 1)
                for key in keys
            }
            values[name] = json.dumps(advice)
        else:
            top = ", ".join(evidence.words[:5]) or "the inputs"
            field = evidence.answer_field or "answer"
            values[name] = SAY["describe"].format(top, field, evidence.shape())
    return values


def _name_list(text: str) -> list[str]:
    """The names in an input that is a JSON list of identifiers, else []."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) and re.fullmatch(r"[\w.]+", v) for v in value)
    )
    return list(value) if ok else []


def reflect_template(tier: Tier, model: str, prompt: str, seed: int) -> str:
    """GEPA's reflection prompt: rewrite the current instruction from the examples and their feedback."""
    blocks = prompt.split("```")
    current = blocks[1].strip() if len(blocks) > 2 else ""
    shown = blocks[3] if len(blocks) > 4 else prompt
    digest = hashlib.blake2b(
        json.dumps([seed, tier_name(model), prompt]).encode(), digest_size=16
    ).hexdigest()

    def draw(*label: object) -> float:
        return uniform(digest, *label)

    new = _propose(tier, current, _Evidence.of([shown], current), draw, 1 + int(draw("count") * 3))
    return f"```\n{new}\n```"
