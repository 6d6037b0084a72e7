"""The `sim` models: a deterministic offline stand-in for LLMs. A test double, not a model.

Every reply is a pure function of (seed, model, request). What makes experiments on it meaningful:
the large tier is more capable than the small one; accuracy depends on the prompt (task hints in the
instructions, correct demos, a reasoning field) and on the example's difficulty, with weak tiers gaining
more from explicit hints; replies follow the DSPy adapter format (chat markers or JSON) with occasional
format errors; and optimizer meta-prompts (MIPROv2 proposals, GEPA reflection) get proposals that add
hints, useful ones more often from stronger tiers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from lsl_dagster.models import Price

LABEL = "SIMULATED (sim models are a deterministic test double, not real LLMs)"
# How a sim reply identifies itself to the client, over any transport (the `system_fingerprint` of the
# completion; the HTTP server also sends the SIMULATED_HEADER header).
FINGERPRINT = "lsl-sim"
SIMULATED_HEADER = "X-LSL-Simulated"


@dataclass(frozen=True)
class Tier:
    ability: float
    price: Price


TIERS = {
    "large": Tier(2.2, Price(input_per_mtok=3.0, output_per_mtok=15.0)),
    "medium": Tier(1.2, Price(input_per_mtok=0.5, output_per_mtok=1.5)),
    "small": Tier(0.2, Price(input_per_mtok=0.1, output_per_mtok=0.4)),
    "tiny": Tier(-0.8, Price(input_per_mtok=0.02, output_per_mtok=0.05)),
}


def tier_name(model: str) -> str:
    """'sim/large', 'sim-large' (as served over HTTP) and 'large' all name the large tier."""
    name = model.removeprefix("openai/").removeprefix("sim/").removeprefix("sim-")
    if name not in TIERS:
        raise ValueError(
            f"unknown sim model {model!r}: known tiers are {', '.join(f'sim/{t}' for t in TIERS)}"
        )
    return name


@dataclass(frozen=True)
class Hint:
    key: str
    phrases: tuple[str, ...]
    text: str
    tasks: frozenset[str]
    gain: float


_ALL = frozenset({"arithmetic", "word_sort"})
HINTS = (
    Hint(
        "stepwise",
        ("step by step", "step-by-step", "one operation at a time"),
        "Work through the problem step by step, one operation at a time.",
        frozenset({"arithmetic"}),
        0.8,
    ),
    Hint(
        "track",
        ("running total", "intermediate result"),
        "Keep a running total and write down each intermediate result.",
        frozenset({"arithmetic"}),
        0.5,
    ),
    Hint("verify", ("double-check", "verify"), "Double-check every step before answering.", _ALL, 0.4),
    Hint(
        "numeric",
        ("only the final number", "digits only"),
        "Give only the final number as the answer, digits only, with no units or words.",
        frozenset({"arithmetic"}),
        0.3,
    ),
    Hint(
        "alphabetical",
        ("alphabetical", "letter by letter"),
        "Order the words alphabetically from a to z, comparing letter by letter.",
        frozenset({"word_sort"}),
        0.9,
    ),
    Hint(
        "keep_all",
        ("exactly once", "do not drop"),
        "Keep every input word exactly once; do not drop or add words.",
        frozenset({"word_sort"}),
        0.6,
    ),
    Hint(
        "list_format",
        ("single spaces", "space-separated"),
        "Write the sorted words in lowercase, separated by single spaces.",
        frozenset({"word_sort"}),
        0.3,
    ),
    Hint(
        "format", ("required format", "exact format"), "Follow the required output format exactly.", _ALL, 0.1
    ),
)
_FORMAT_HINTS = frozenset({"format", "numeric", "list_format"})
DISTRACTORS = (
    "Explain your thinking in full sentences inside the answer.",
    "Be creative and consider unusual interpretations of the input.",
)
_FILLER = ("Read the input carefully.", "Think about what is being asked.", "Be accurate and concise.")
# Which hints fix which failure, as GEPA's feedback describes it (see tasks.feedback).
_REMEDIES = {
    "format error": ("format", "numeric", "list_format"),
    "failed to parse": ("format", "numeric", "list_format"),
    "calculation": ("stepwise", "track", "verify"),
    "missing or extra": ("keep_all", "verify"),
    "wrong order": ("alphabetical", "verify"),
}


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int
    output_tokens: int


def _u(*parts: object) -> float:
    """A uniform draw in (0, 1) that is a pure function of its inputs."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


_NORMAL = NormalDist()


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def respond(model: str, system: str | None, messages: Sequence[tuple[str, str]], seed: int) -> Reply:
    """Answer one chat request as the sim tier `model` would."""
    tier = TIERS[tier_name(model)]
    system = system or ""
    prompt = system + "".join(text for _, text in messages)
    last = messages[-1][1] if messages else ""
    if last.startswith("I provided an assistant with the following instructions"):
        text = _reflect(tier, model, last, seed)
    else:
        text = _answer_signature(tier, model, system, messages, seed)
    return Reply(text=text, input_tokens=_tokens(prompt), output_tokens=_tokens(text))


# --- Task solving -------------------------------------------------------------------------------
_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_ARITH_START = re.compile(r"has (\d+) (\w+)\.")
_ARITH_STEP = re.compile(
    r"buys (\d+) more|gives away (\d+)|(doubles|triples) the collection|gives half of them"
)


@dataclass(frozen=True)
class Solution:
    family: str
    answer: str
    difficulty: float
    steps: tuple[str, ...]


def _solve(inputs: dict[str, str]) -> Solution | None:
    text = " ".join(inputs.values())
    start = _ARITH_START.search(text)
    if start and "How many" in text:
        total = int(start.group(1))
        steps = [f"Start with {total}."]
        for match in _ARITH_STEP.finditer(text):
            add, sub, mul = match.group(1), match.group(2), match.group(3)
            if add:
                total += int(add)
                steps.append(f"Add {add}: {total}.")
            elif sub:
                total -= int(sub)
                steps.append(f"Subtract {sub}: {total}.")
            elif mul:
                total *= 2 if mul == "doubles" else 3
                steps.append(f"{'Double' if mul == 'doubles' else 'Triple'}: {total}.")
            else:
                total //= 2
                steps.append(f"Halve: {total}.")
        return Solution("arithmetic", str(total), 0.7 * (len(steps) - 3), tuple(steps))
    words = inputs.get("words", "").split()
    if len(words) >= 2 and all(w.isalpha() and w.islower() for w in words):
        ordered = sorted(words)
        return Solution(
            "word_sort", " ".join(ordered), 0.35 * (len(words) - 5), (f"Sorted: {' '.join(ordered)}.",)
        )
    return None


def _wrong(solution: Solution, draw: float) -> tuple[str, tuple[str, ...]]:
    """A plausible mistake: an arithmetic slip, or a misordered / dropped word."""
    if solution.family == "arithmetic":
        delta = 1 + int(draw * 9)
        answer = int(solution.answer) + (delta if draw < 0.5 else -delta)
        return str(answer), (*solution.steps[:-1], f"Carry the result: {answer}.")
    words = solution.answer.split()
    if draw < 0.6:
        i = int(draw / 0.6 * (len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    else:
        del words[int((draw - 0.6) / 0.4 * len(words))]
    return " ".join(words), (f"Sorted: {' '.join(words)}.",)


def _hints_in(text: str) -> set[str]:
    lower = text.lower()
    return {h.key for h in HINTS if any(p in lower for p in h.phrases)}


def _family_of(text: str) -> str | None:
    if _ARITH_START.search(text) or "word problem" in text.lower():
        return "arithmetic"
    if "sorted_words" in text or "sort the words" in text.lower():
        return "word_sort"
    return None


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _fields(block: str) -> dict[str, str]:
    # The adapter appends its reminder ("Respond with the corresponding output fields ...") to the last input.
    parts = _HEADER.split(block.split("\n\nRespond with", 1)[0])
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _output_fields(system: str) -> list[str]:
    section = system.split("Your output fields are:", 1)[-1].split("All interactions", 1)[0]
    return re.findall(r"^\d+\. `(\w+)`", section, flags=re.M)


# Output fields of DSPy's optimizer signatures (MIPROv2's proposer, GEPA's instruction proposer).
_META_FIELDS = frozenset(
    {
        "proposed_instruction",
        "new_instruction",
        "improved_instruction",
        "shortened_instruction",
        "observations",
        "summary",
        "program_description",
        "module_description",
    }
)


def _answer_signature(
    tier: Tier, model: str, system: str, messages: Sequence[tuple[str, str]], seed: int
) -> str:
    outputs = _output_fields(system) or ["answer"]
    json_mode = "Outputs will be a JSON object" in system
    inputs = _fields(messages[-1][1]) if messages else {}
    key = (seed, tier_name(model), system, tuple(messages))
    solution = None if _META_FIELDS & set(outputs) else _solve(inputs)
    if solution is not None:
        values = _task_outputs(tier, solution, inputs, system, messages, outputs, key)
        broken = _u(*key, "format") < _format_error_rate(tier, system)
    else:
        values = _meta_outputs(tier, system, inputs, outputs, key)
        broken = False
    return _render(values, json_mode, broken)


def _gain(tier: Tier, family: str, system: str, demos_ok: int, demos_bad: int) -> float:
    present = _hints_in(system)
    gain = sum(h.gain for h in HINTS if h.key in present and family in h.tasks)
    gain += 0.25 * min(demos_ok, 4) - 0.3 * demos_bad
    gain -= 0.4 * sum(d.lower()[:30] in system.lower() for d in DISTRACTORS)
    # Weak tiers gain more from explicit guidance but saturate lower: a prompt cannot make them large.
    scale = 1.6 - 0.3 * tier.ability
    cap = 1.0 + 0.5 * tier.ability
    effective = gain * scale
    return cap * (1 - math.exp(-effective / cap)) if effective > 0 else effective


def _task_outputs(
    tier: Tier,
    solution: Solution,
    inputs: dict[str, str],
    system: str,
    messages: Sequence[tuple[str, str]],
    outputs: list[str],
    key: tuple,
) -> dict[str, str]:
    demos_ok = demos_bad = 0
    for (_, user), (role, assistant) in zip(messages[:-1:2], messages[1:-1:2], strict=False):
        if role != "assistant":
            continue
        demo = _solve(_fields(user))
        given = _fields(assistant) or _json_fields(assistant)
        if demo is not None and given:
            ok = list(given.values())[-1].strip() == demo.answer
            demos_ok, demos_bad = demos_ok + ok, demos_bad + (not ok)
    cot = 0.5 if "reasoning" in outputs else 0.0
    logit = (
        tier.ability
        + cot
        - solution.difficulty
        - 1.2
        + _gain(tier, solution.family, system, demos_ok, demos_bad)
    )
    # Hard examples are hard for every prompt and model: correlate draws through a per-example latent.
    example_z = _NORMAL.inv_cdf(_u("example", json.dumps(inputs, sort_keys=True)))
    call_z = _NORMAL.inv_cdf(_u(*key, "correct"))
    correct = _NORMAL.cdf(0.75 * example_z + 0.66 * call_z) < _sigmoid(logit)
    answer, steps = (solution.answer, solution.steps) if correct else _wrong(solution, _u(*key, "wrong"))
    values = {}
    for name in outputs:
        values[name] = " ".join(steps) if name == "reasoning" else answer
    return values


def _format_error_rate(tier: Tier, system: str) -> float:
    rate = 0.3 * _sigmoid(-tier.ability - 0.5)
    if _hints_in(system) & _FORMAT_HINTS:
        rate *= 0.4
    return rate


def _json_fields(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return {k: str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _render(values: dict[str, str], json_mode: bool, broken: bool) -> str:
    if json_mode:
        text = json.dumps(values)
        return text[: len(text) // 2] if broken else text
    if broken:
        # What weak models do: answer in prose and forget the field markers.
        return "Here is my answer. " + " ".join(values.values())
    body = "\n\n".join(f"[[ ## {name} ## ]]\n{value}" for name, value in values.items())
    return body + "\n\n[[ ## completed ## ]]"


# --- Optimizer meta-prompts ---------------------------------------------------------------------
def _propose(tier: Tier, base: str, family: str | None, wanted: Sequence[str], count: int, key: tuple) -> str:
    """Extend an instruction with `count` additions: a useful hint with probability sigmoid(ability)."""
    present = _hints_in(base)
    additions: list[str] = []
    for i in range(count):
        useful = [
            h
            for h in HINTS
            if h.key not in present
            and (family is None or family in h.tasks)
            and (not wanted or h.key in wanted)
        ] or [h for h in HINTS if h.key not in present and (family is None or family in h.tasks)]
        draw = _u(*key, "propose", i)
        if useful and draw < _sigmoid(tier.ability):
            hint = useful[int(_u(*key, "pick", i) * len(useful))]
            present.add(hint.key)
            additions.append(hint.text)
        elif draw > 0.93:
            additions.append(DISTRACTORS[int(_u(*key, "distract", i) * len(DISTRACTORS))])
        else:
            additions.append(_FILLER[int(_u(*key, "filler", i) * len(_FILLER))])
    return " ".join([base.strip(), *dict.fromkeys(additions)]).strip()


def _meta_outputs(
    tier: Tier, system: str, inputs: dict[str, str], outputs: list[str], key: tuple
) -> dict[str, str]:
    everything = system + " ".join(inputs.values())
    family = _family_of(everything)
    subject = {
        "arithmetic": "multi-step arithmetic word problems",
        "word_sort": "sorting lists of words",
    }.get(family or "", "the task in the examples")
    values = {}
    for name in outputs:
        if name == "proposed_instruction":  # MIPROv2's grounded proposer
            base = inputs.get("basic_instruction") or "Complete the task."
            values[name] = _propose(tier, base, family, (), 1 + int(_u(*key, "count") * 3), key)
        elif name in ("new_instruction", "improved_instruction"):  # GEPA's instruction proposer
            feedback = inputs.get("examples_with_feedback", "").lower()
            wanted = [hint for failure, hints in _REMEDIES.items() if failure in feedback for hint in hints]
            base = inputs.get("current_instruction", "")
            values[name] = _propose(tier, base, family, wanted, 1 + int(_u(*key, "count") * 2), key)
        elif name == "shortened_instruction":
            values[name] = inputs.get("instruction", "")
        elif name == "observations" and inputs.get("prior_observations"):
            values[name] = "COMPLETE"
        elif name == "reasoning":
            values[name] = f"The examples are about {subject}."
        else:
            values[name] = f"The data and program are about {subject}; answers are short and exact."
    return values


def _reflect(tier: Tier, model: str, prompt: str, seed: int) -> str:
    """GEPA's reflection prompt: rewrite the current instruction to fix the failures in the feedback."""
    blocks = prompt.split("```")
    current = blocks[1].strip() if len(blocks) > 2 else ""
    feedback = blocks[3].lower() if len(blocks) > 4 else prompt.lower()
    wanted = [hint for failure, hints in _REMEDIES.items() if failure in feedback for hint in hints]
    key = (seed, tier_name(model), prompt)
    new = _propose(tier, current, _family_of(prompt), wanted, 1 + int(_u(*key, "count") * 2), key)
    return f"```\n{new}\n```"


class SimEngine:
    """The sim models behind DSPy 3.4's engine interface: `dspy.LM("sim/large", engine=SimEngine(...))`."""

    def __init__(self, model: str, seed: int):
        tier_name(model)
        self.model = model
        self.seed = seed

    def complete(self, request: Request) -> Response:
        system = (
            request.system
            if isinstance(request.system, str | None)
            else "".join(getattr(p, "text", "") for p in request.system)
        )
        messages = [(m.role, m.text or "") for m in request.messages]
        reply = respond(self.model, system, messages, self.seed)
        return Response(
            id=None,
            model=self.model,
            message=Message.assistant([TextPart(reply.text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=reply.input_tokens, output_tokens=reply.output_tokens),
            provider_data={"system_fingerprint": FINGERPRINT},
        )

    def stream(self, request: Request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass
