"""The `sim` models: a deterministic offline stand-in for LLMs. A test double, not a model.

The sim knows no task. It may read the gold labels of the examples it is asked about (an `AnswerKey`,
built by whoever starts it from any data of (inputs, labels) pairs) and plays any program with a
task-agnostic model of skill:

- A request whose input field values match a known example is a task call. Each output field with a
  gold label is answered correctly with probability sigmoid(ability + prompt quality - difficulty),
  where the example's difficulty is a deterministic latent shared by every prompt and tier (plus its
  length), so hard examples are hard for everyone. A wrong answer is another example's label or a
  perturbed copy of the gold one. Output fields without gold (reasoning, a search query) get text
  drawn from the inputs, so multi-predictor programs run.
- Prompt quality is judged without knowing the task or anyone's phrases: correct demos (checked
  against the key) help and wrong ones hurt; instructions help when they carry the data's own
  vocabulary (words recurring across the task's examples, inputs and labels) and name the fields to
  answer; bloat, repetition and text unrelated to the data hurt. Weak tiers gain more from a good
  prompt but saturate lower.
- Requests to write an instruction (MIPROv2's proposer, GEPA's reflection) get proposals distilled
  from what the meta-prompt shows: recurring words of its examples, sentences of the metric's
  feedback, the shape of the answers. Stronger tiers propose useful changes more often; weaker ones
  add noise and bloat.
- Replies follow the DSPy adapter's format (chat markers or JSON), with format errors at a rate set by
  the tier and the prompt; `tiny` behaves like a small real model: it often drops the markers, echoes
  the template and rambles into the token limit. No reply exceeds the request's `max_tokens`.

Every reply is a pure function of (seed, model, request, answer key).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events


@dataclass(frozen=True)
class Rate:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


# How a sim reply identifies itself to the client, over any transport (the `system_fingerprint` of the
# completion; the HTTP server also sends the SIMULATED_HEADER header).
FINGERPRINT = "lsl-sim"
SIMULATED_HEADER = "X-LSL-Simulated"


@dataclass(frozen=True)
class Tier:
    ability: float
    price: Rate
    format_error: float  # chance of answering in prose (chat) or half a JSON object
    echo: float = 0.0  # chance of echoing the template's placeholders
    ramble: float = 0.0  # chance of talking until the token limit

    @property
    def prompt_gain(self) -> float:
        """How much a good prompt moves this tier: weak tiers follow guidance more literally."""
        return 1.3 - 0.25 * self.ability

    @property
    def prompt_cap(self) -> float:
        """The most a prompt can add: it cannot make a weak tier strong."""
        return 1.8 + 0.4 * self.ability


TIERS = {
    "large": Tier(2.2, Rate(3.0, 15.0), format_error=0.01),
    "medium": Tier(1.2, Rate(0.5, 1.5), format_error=0.03),
    "small": Tier(0.2, Rate(0.1, 0.4), format_error=0.06, echo=0.01, ramble=0.01),
    "tiny": Tier(-0.8, Rate(0.02, 0.05), format_error=0.35, echo=0.1, ramble=0.12),
}
# A request without max_tokens still ends: a rambling tier stops here, like a full context window.
CONTEXT_TOKENS = 2048


def tier_name(model: str) -> str:
    """'sim/large', 'sim-large' (as served over HTTP) and 'large' all name the large tier."""
    name = model.removeprefix("openai/").removeprefix("sim/").removeprefix("sim-")
    if name not in TIERS:
        raise ValueError(
            f"unknown sim model {model!r}: known tiers are {', '.join(f'sim/{t}' for t in TIERS)}"
        )
    return name


# --- Text ----------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# English function words: never evidence of what a task is about.
_STOP = frozenset(
    re.findall(
        r"\w+",
        """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each either else few for from
    further had has have having he her here hers him his how i if in into is it its itself just let me
    many more most much my no nor not now of off on once one only or other our out over own same she should
    so some such than that the their them then there these they this those through to too under until
    up upon very was we were what when where which while who whom whose why will with would you your""",
    )
)
# How DSPy and GEPA lay out meta-prompts: structure, not content.
_MARKUP = frozenset(
    re.findall(
        r"\w+",
        """example examples input inputs output outputs generated feedback keys key supplied particular
    field fields completed str int float list dict none true false""",
    )
)
# The sim's own wording. Its words are never evidence of a task, and no prompt is judged by them.
_SAY = {
    "focus": "Pay close attention to {}.",
    "more": "Also consider {}.",
    "format": "Give the {} as {}, with nothing else.",
    "noise": "Keep in mind {}.",
    "describe": "The items recurringly involve {}. The {} is {}.",
    "think": "From the {}: {}. So {}.",
    "prose": "Sure! {}",
    "ramble": "Let me think about this carefully.",
    "again": "Wait, {}",
    "shapes": "short and exact; a single number; one word; about {} words",
}
_OWN = frozenset(re.findall(r"[a-z]+", " ".join(_SAY.values()).lower()))
_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_NOT_SUPPLIED = "Not supplied for this particular example."
_NORMAL = NormalDist()


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _content(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOP]


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _u(*parts: object) -> float:
    """A uniform draw in (0, 1) that is a pure function of its inputs."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


# --- The answer key ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Known:
    """One example the sim has the answers to (its inputs are kept only as a digest)."""

    labels: Mapping[str, str]
    fields: frozenset[str]  # its input field names
    latent: float  # its hardness, N(0, 1), the same for every prompt, tier and seed
    length: int  # characters of input


def _digest(name: str, value: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}\x1f{_normalize(value)}".encode(), digest_size=8).digest())


class AnswerKey:
    """Gold labels for a task's examples, from (inputs, labels) pairs of strings.

    The pairs are read lazily (a generated split may hold 100,000 examples): a lookup reads on until it
    finds the example, and what was read is kept compactly (labels and a digest of the inputs). The
    task's vocabulary (content words recurring across examples) comes from the first `SAMPLE` examples.
    """

    SAMPLE = 2000

    def __init__(self, examples: Iterable[tuple[Mapping[str, object], Mapping[str, object]]], name: str = ""):
        self.name = name
        self._source: Iterator | None = iter(examples)
        self._known: list[Known] = []
        self._index: dict[int, int] = {}
        self._fields: dict[frozenset[str], frozenset[str]] = {}
        self._sample: list[tuple[dict[str, str], dict[str, str]]] | None = []
        self._lock = threading.RLock()
        self._profile: _Profile | None = None

    def __repr__(self) -> str:
        return f"AnswerKey({self.name!r}, {len(self._known)} read)"

    def _read(self) -> bool:
        """Read one more example; False when there are none."""
        if self._source is None:
            return False
        try:
            raw_inputs, raw_labels = next(self._source)
        except StopIteration:
            self._source = None
            return False
        inputs = {k: str(v) for k, v in raw_inputs.items()}
        labels = {k: str(v) for k, v in raw_labels.items()}
        fields = frozenset(inputs)
        for name, value in inputs.items():
            self._index.setdefault(_digest(name, value), len(self._known))
        latent = _NORMAL.inv_cdf(_u("example", json.dumps(inputs, sort_keys=True)))
        length = sum(len(v) for v in inputs.values())
        self._known.append(Known(labels, self._fields.setdefault(fields, fields), latent, length))
        if self._sample is not None and len(self._sample) < self.SAMPLE:
            self._sample.append((inputs, labels))
        return True

    @property
    def profile(self) -> _Profile:
        with self._lock:
            if self._profile is None:
                while len(self._known) < self.SAMPLE and self._read():
                    pass
                self._profile = _Profile.of(self._sample or [])
                self._sample = None
            return self._profile

    def lookup(self, inputs: Mapping[str, str]) -> Known | None:
        """The example whose input values match most of `inputs` (same field name, normalized value)."""
        with self._lock:
            profile = self.profile
            wanted = [_digest(n, v) for n, v in inputs.items() if n in profile.input_names and v.strip()]
            if not wanted:
                return None
            while not any(w in self._index for w in wanted) and self._read():
                pass
            votes = Counter(self._index[w] for w in wanted if w in self._index)
            if not votes:
                return None
            return self._known[max(votes, key=lambda i: (votes[i], -i))]

    def other_label(self, field: str, not_equal: str, draw: float) -> str | None:
        values = self.profile.labels.get(field, ())
        if not values:
            return None
        start = int(draw * len(values))
        for step in range(min(len(values), 8)):
            value = values[(start + step) % len(values)]
            if _normalize(value) != _normalize(not_equal):
                return value
        return None


@dataclass(frozen=True)
class _Profile:
    """What the sim learns about a task from its first examples: its vocabulary, labels and lengths."""

    input_names: frozenset[str]
    vocabulary: frozenset[str]
    labels: Mapping[str, tuple[str, ...]]
    log_length: tuple[float, float]  # mean and spread of log(input length)

    @staticmethod
    def of(sample: Sequence[tuple[dict[str, str], dict[str, str]]]) -> _Profile:
        document_frequency: Counter[str] = Counter()
        labels: dict[str, list[str]] = {}
        lengths = []
        for inputs, example_labels in sample:
            document_frequency.update(set(_content(" ".join([*inputs.values(), *example_labels.values()]))))
            for field, value in example_labels.items():
                labels.setdefault(field, []).append(value)
            lengths.append(math.log(1 + sum(len(v) for v in inputs.values())))
        # A word of the task recurs across examples; a word of one example (a name, a number) does not.
        floor = max(2, math.ceil(0.02 * len(sample)))
        vocabulary = frozenset(w for w, n in document_frequency.items() if n >= floor)
        mean = sum(lengths) / len(lengths) if lengths else 0.0
        spread = math.sqrt(sum((x - mean) ** 2 for x in lengths) / len(lengths)) if lengths else 0.0
        return _Profile(
            input_names=frozenset(name for inputs, _ in sample for name in inputs),
            vocabulary=vocabulary,
            labels={field: tuple(values) for field, values in labels.items()},
            log_length=(mean, spread or 1.0),
        )

    def difficulty(self, example: Known) -> float:
        """Longer inputs are harder; the rest of an example's hardness is its latent."""
        mean, spread = self.log_length
        z = (math.log(1 + example.length) - mean) / spread
        return 0.5 * max(-2.0, min(2.0, z))


# --- Requests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"


@dataclass(frozen=True)
class _Call:
    """One request as the sim reads it."""

    tier: Tier
    digest: str
    instructions: str
    inputs: dict[str, str]
    outputs: list[str]
    output_types: dict[str, str]  # as the adapter declares them, e.g. "str", "dict[str, str]"
    demos: list[tuple[dict[str, str], dict[str, str]]]
    json_mode: bool
    max_tokens: int | None

    def draw(self, *label: object) -> float:
        return _u(self.digest, *label)


def _fields(block: str) -> dict[str, str]:
    # The adapter appends its reminder ("Respond with the corresponding output fields ...") to the last input.
    block = re.split(
        r"\n\nRespond with (?:the corresponding output fields|a JSON object)", block, maxsplit=1
    )[0]
    parts = _HEADER.split(block)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _json_fields(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return {k: str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _listed_fields(system: str, heading: str) -> list[str]:
    return list(_field_types(system, heading))


def _field_types(system: str, heading: str) -> dict[str, str]:
    """The fields listed under `heading`, in order, with the type the adapter declares ("str" if none)."""
    section = system.split(heading, 1)[1] if heading in system else ""
    section = re.split(r"\nYour output fields are:|\nAll interactions", section, maxsplit=1)[0]
    types = dict(re.findall(r"^\d+\. `(\w+)` \(([^)]*)\)", section, flags=re.M))
    return {name: types.get(name, "str") for name in re.findall(r"^\d+\. `(\w+)`", section, flags=re.M)}


def _read_call(
    tier: Tier,
    model: str,
    system: str,
    messages: Sequence[tuple[str, str]],
    seed: int,
    max_tokens: int | None,
) -> _Call:
    marker = "your objective is:"
    instructions = system.split(marker, 1)[1] if marker in system else ("" if "[[ ##" in system else system)
    last = messages[-1][1] if messages else ""
    demos = []
    for (_, user), (role, assistant) in zip(messages[:-1:2], messages[1:-1:2], strict=False):
        if role == "assistant":
            demos.append((_fields(user), _fields(assistant) or _json_fields(assistant)))
    digest = hashlib.blake2b(
        json.dumps([seed, tier_name(model), system, list(messages)]).encode(), digest_size=16
    ).hexdigest()
    return _Call(
        tier=tier,
        digest=digest,
        instructions=" ".join(instructions.split()),
        inputs=_fields(last),
        outputs=_listed_fields(system, "Your output fields are:") or ["answer"],
        output_types=_field_types(system, "Your output fields are:"),
        demos=demos,
        json_mode="Outputs will be a JSON object" in system,
        max_tokens=max_tokens,
    )


def respond(
    model: str,
    system: str | None,
    messages: Sequence[tuple[str, str]],
    seed: int,
    *,
    keys: Sequence[AnswerKey] = (),
    max_tokens: int | None = None,
) -> Reply:
    """Answer one chat request as the sim tier `model` would, never with more than `max_tokens` tokens."""
    tier = TIERS[tier_name(model)]
    system = system or ""
    prompt = system + "".join(text for _, text in messages)
    last = messages[-1][1] if messages else ""
    if last.startswith("I provided an assistant with the following instructions"):
        # GEPA's own reflection template (plain text, the new instruction in a ``` block).
        text = _reflect_template(tier, model, last, seed)
        return _limit(text, _tokens(prompt), max_tokens)
    call = _read_call(tier, model, system, messages, seed, max_tokens)
    key, known = _match(keys, call.inputs)
    if known is None and (key is None or any("instruction" in name for name in call.outputs)):
        # Not a call of a task the sim has data for: an optimizer's meta-prompt (or a stranger's).
        values = _meta_outputs(call)
        quality = _Quality(0.0, named=True, demos_full=0)
    else:
        quality = _quality(call, key, known)
        values = _task_outputs(call, key, known, quality)
    return _limit(_render(call, values, quality), _tokens(prompt), max_tokens)


def _match(keys: Sequence[AnswerKey], inputs: Mapping[str, str]) -> tuple[AnswerKey | None, Known | None]:
    """The key and example the request is about; for an unknown example, the key of a task with its fields."""
    for key in keys:
        known = key.lookup(inputs)
        if known is not None:
            return key, known
    for key in keys:
        if key.profile.input_names & set(inputs):
            return key, None
    return None, None


def _limit(text: str, input_tokens: int, max_tokens: int | None) -> Reply:
    if max_tokens is not None and _tokens(text) > max_tokens:
        return Reply(text[: 4 * max_tokens], input_tokens, max_tokens, "length")
    return Reply(text, input_tokens, _tokens(text))


# --- Prompt quality ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Quality:
    value: float  # logit shift before the tier's gain and cap
    named: bool  # the instructions name a field to answer
    demos_full: int  # demos with every output field supplied


def _answer_fields(call: _Call, key: AnswerKey | None) -> list[str]:
    """The output fields the data has labels for (by name); the others are the program's own steps."""
    if key is None:
        return call.outputs[-1:]
    return [f for f in call.outputs if f in key.profile.labels]


def _names(instructions: str, fields: Iterable[str]) -> bool:
    lower = instructions.lower()
    return any(
        re.search(rf"\b{re.escape(f.lower())}\b|\b{re.escape(f.lower().replace('_', ' '))}\b", lower)
        for f in fields
    )


def _instruction_quality(call: _Call, key: AnswerKey | None, known: Known | None) -> tuple[float, bool]:
    text = call.instructions
    answer_fields = _answer_fields(call, key)
    named = _names(text, answer_fields)
    vocabulary = key.profile.vocabulary if key is not None else frozenset()
    words = text.split()
    distinct = set(_content(text))
    grounded = distinct & vocabulary
    field_words = {part for f in call.outputs + list(call.inputs) for part in f.lower().split("_")}
    unrelated = len(distinct - vocabulary - field_words)
    own = set(_content(" ".join(v for n, v in call.inputs.items() if n in known.fields))) if known else set()
    own &= vocabulary
    coverage = len(own & grounded) / len(own) if own else 0.0
    sentences = [s.lower() for s in _sentences(text)]
    repeated = len(sentences) - len(set(sentences))
    quality = 0.8 * (1 - math.exp(-len(grounded) / 8)) + 1.5 * coverage + 0.2 * named
    quality -= 0.02 * max(0, unrelated - 20)  # text that has nothing to do with the data distracts
    quality -= 0.004 * max(0, len(words) - 150)  # bloat
    quality -= 0.2 * repeated
    return quality, named


def _quality(call: _Call, key: AnswerKey | None, known: Known | None) -> _Quality:
    instruction_quality, named = _instruction_quality(call, key, known)
    right = wrong = full = 0
    for inputs, outputs in call.demos:
        supplied = {k: v for k, v in outputs.items() if v and v != _NOT_SUPPLIED}
        full += bool(supplied) and len(supplied) == len(call.outputs)
        demo = key.lookup(inputs) if key is not None else None
        if demo is None:
            continue
        checked = [
            _normalize(supplied[f]) == _normalize(g)
            for f in call.outputs
            if f in supplied and (g := demo.labels.get(f)) is not None
        ]
        if checked:
            right, wrong = right + all(checked), wrong + (not all(checked))
    demo_quality = 0.15 * min(right, 4) + 0.05 * min(full, 4) - 0.4 * wrong
    return _Quality(instruction_quality + demo_quality, named, full)


def _effective(tier: Tier, quality: float) -> float:
    effective = quality * tier.prompt_gain
    return tier.prompt_cap * (1 - math.exp(-effective / tier.prompt_cap)) if effective > 0 else effective


# --- Task calls ----------------------------------------------------------------------------------
def _salient(inputs: Mapping[str, str], count: int) -> str:
    """The input's most telling words, in order: what a model copies into a query or a summary."""
    words = _content(" ".join(inputs.values()))
    frequency = Counter(words)
    ranked = sorted(dict.fromkeys(words), key=lambda w: (-frequency[w], -len(w)))[:count]
    keep = set(ranked)
    return " ".join(w for w in dict.fromkeys(words) if w in keep)


def _wrong(call: _Call, key: AnswerKey | None, field: str, gold: str) -> str:
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
        words = _salient(call.inputs, 6).split()
        tokens = [words[int(call.draw("guess", field) * len(words))]] if words else ["unknown"]
    wrong = " ".join(tokens)
    return wrong if _normalize(wrong) != _normalize(gold) else wrong + " " + wrong


def _task_outputs(
    call: _Call, key: AnswerKey | None, known: Known | None, quality: _Quality
) -> dict[str, str]:
    tier = call.tier
    answers: dict[str, str] = {}
    for field in _answer_fields(call, key):
        gold = known.labels.get(field) if known is not None else None
        if gold is None:
            # An example nobody has the answer to: a guess from the inputs.
            words = _salient(call.inputs, 8).split() or ["unknown"]
            answers[field] = words[int(call.draw("guess", field) * len(words))]
            continue
        # Chain-of-thought: a free-text field before the answer gives the model room to think.
        thinks = any(
            f not in known.labels and call.outputs.index(f) < call.outputs.index(field) for f in call.outputs
        )
        # Evidence: the answer appears in another input (a retrieved passage, say).
        evidence = len(gold) > 2 and any(
            re.search(rf"\b{re.escape(_normalize(gold))}\b", _normalize(v))
            for n, v in call.inputs.items()
            if n not in known.fields
        )
        logit = (
            tier.ability
            + 0.4 * thinks
            + 0.8 * evidence
            + _effective(tier, quality.value)
            - (key.profile.difficulty(known) if key is not None else 0.0)
            - 1.8
        )
        # Hard examples are hard for every prompt and tier: the draw is correlated through the example.
        z = 0.75 * known.latent + 0.66 * _NORMAL.inv_cdf(call.draw("correct", field))
        answers[field] = gold if _NORMAL.cdf(z) < _sigmoid(logit) else _wrong(call, key, field, gold)
    values = {}
    for field in call.outputs:
        if field in answers:
            values[field] = answers[field]
        elif any(call.outputs.index(f) > call.outputs.index(field) for f in answers):
            shown = ", ".join(f"{f}: {v}" for f, v in answers.items())
            values[field] = _SAY["think"].format(", ".join(call.inputs), _salient(call.inputs, 10), shown)
        else:
            values[field] = _salient(call.inputs, 4 + int(2 * max(0.0, tier.ability)))
    return values


def _render(call: _Call, values: dict[str, str], quality: _Quality) -> str:
    tier = call.tier
    # Naming the answer fields and complete demos show the format; both make a slip less likely.
    error = tier.format_error * (0.5 if quality.named else 1.0) * (0.6 if quality.demos_full else 1.0)
    draw = call.draw("format")
    if draw < tier.echo:
        values = {name: f"{{{name}}}" for name in values}
    elif draw < tier.echo + tier.ramble:
        return _ramble(call, values)
    elif draw < tier.echo + tier.ramble + error:
        if call.json_mode:
            text = json.dumps(values)
            return text[: len(text) // 2]
        # What weak models do: answer in prose and forget the field markers.
        return _SAY["prose"].format(" ".join(values.values()))
    if call.json_mode:
        return json.dumps(values, indent=2)
    body = "\n\n".join(f"[[ ## {name} ## ]]\n{value}" for name, value in values.items())
    return body + "\n\n[[ ## completed ## ]]"


def _ramble(call: _Call, values: dict[str, str]) -> str:
    """Restate the inputs over and over until the token limit cuts the reply off."""
    limit = call.max_tokens or CONTEXT_TOKENS
    opening = f"[[ ## {call.outputs[0]} ## ]]\n" if not call.json_mode else '{"' + call.outputs[0] + '": "'
    sentences = _sentences(" ".join(call.inputs.values())) or list(values.values()) or ["..."]
    parts = [opening, _SAY["ramble"]]
    i = 0
    while _tokens(" ".join(parts)) <= limit:
        parts.append(_SAY["again"].format(sentences[i % len(sentences)]))
        i += 1
    return " ".join(parts)


# --- Optimizer meta-prompts ----------------------------------------------------------------------
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
        ignored = _MARKUP | _OWN | set(_content(exclude)) | {p for n in names for p in n.lower().split("_")}
        words = [w for w in _content(text) if w not in ignored]
        counts = Counter(words)
        # What recurs across the examples shown is the task's; what recurs within one is that example's.
        spread = Counter(w for unit in units for w in set(_content(unit))) if len(units) >= 2 else counts
        first = {w: i for i, w in reversed(list(enumerate(words)))}
        ranked = sorted(counts, key=lambda w: (-spread[w], -counts[w], first[w]))
        lessons: Counter[str] = Counter()
        for entry in feedback:
            for sentence in _sentences(entry):
                # A metric's advice that names no particular value holds beyond its example.
                specific = re.search(r"'[^']*'|\"[^\"]*\"|\d", sentence)
                if not specific and len([w for w in _content(sentence) if w not in ignored]) >= 3:
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
        empty, number, word, words = _SAY["shapes"].split("; ")
        if not self.answers:
            return empty
        if all(re.fullmatch(r"\s*-?\d[\d.,]*\s*", a) for a in self.answers):
            return number
        length = round(sum(len(a.split()) for a in self.answers) / len(self.answers))
        return word if length <= 1 else words.format(length)


def _propose(tier: Tier, base: str, evidence: _Evidence, draw: Callable[..., float], count: int) -> str:
    """Extend an instruction with `count` additions: a useful one with probability sigmoid(ability + 0.3),
    else noise (words of single examples) or bloat (the instruction restated)."""
    useful_chance = _sigmoid(tier.ability + 0.3)
    parts = [base.strip()] if base.strip() and draw("keep") > 0.3 * (1 - useful_chance) else []
    salient = [w for w in evidence.words if w not in base.lower()]
    useful: list[str] = []
    if salient:
        size = 2 + int(max(0.0, tier.ability))
        useful.append(_SAY["focus"].format(", ".join(salient[:size])))
    if evidence.answer_field and not _names(base, [evidence.answer_field]):
        useful.append(_SAY["format"].format(evidence.answer_field, evidence.shape()))
    useful += [s if s.endswith(".") else s + "." for s in evidence.lessons if s.lower() not in base.lower()]
    if len(salient) > 4:
        useful.append(_SAY["more"].format(", ".join(salient[4:7])))
    for i in range(count):
        roll = draw("addition", i)
        if roll < useful_chance and useful:
            # Strong tiers take the most telling addition first; weak ones pick among the first few.
            choices = min(len(useful), 1 if tier.ability >= 1 else 3)
            parts.append(useful.pop(int(draw("pick", i) * choices)))
        elif roll < useful_chance + 0.6 * (1 - useful_chance) and evidence.rare:
            chosen = [evidence.rare[int(draw("rare", i, j) * len(evidence.rare))] for j in range(5)]
            parts.append(_SAY["noise"].format(", ".join(dict.fromkeys(chosen))))
        else:
            # Bloat: the instruction restated.
            parts.append(" ".join(parts) or base)
    return " ".join(parts).strip()


def _meta_outputs(call: _Call) -> dict[str, str]:
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
            values[name] = " ".join(_sentences(base)[:2])
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
            values[name] = _SAY["describe"].format(top, field, evidence.shape())
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


def _reflect_template(tier: Tier, model: str, prompt: str, seed: int) -> str:
    """GEPA's reflection prompt: rewrite the current instruction from the examples and their feedback."""
    blocks = prompt.split("```")
    current = blocks[1].strip() if len(blocks) > 2 else ""
    shown = blocks[3] if len(blocks) > 4 else prompt
    digest = hashlib.blake2b(
        json.dumps([seed, tier_name(model), prompt]).encode(), digest_size=16
    ).hexdigest()

    def draw(*label: object) -> float:
        return _u(digest, *label)

    new = _propose(tier, current, _Evidence.of([shown], current), draw, 1 + int(draw("count") * 3))
    return f"```\n{new}\n```"


# --- DSPy engine ---------------------------------------------------------------------------------
class SimEngine:
    """The sim models behind DSPy 3.4's engine interface: `dspy.LM("sim/large", engine=SimEngine(...))`."""

    def __init__(self, model: str, seed: int, answer_key: AnswerKey | Sequence[AnswerKey] | None = None):
        tier_name(model)
        self.model = model
        self.seed = seed
        if answer_key is None:
            self.keys: tuple[AnswerKey, ...] = ()
        elif isinstance(answer_key, AnswerKey):
            self.keys = (answer_key,)
        else:
            self.keys = tuple(answer_key)

    def complete(self, request: Request) -> Response:
        system = (
            request.system
            if isinstance(request.system, str | None)
            else "".join(getattr(p, "text", "") for p in request.system)
        )
        messages = [(m.role, m.text or "") for m in request.messages]
        reply = respond(
            self.model, system, messages, self.seed, keys=self.keys, max_tokens=request.config.max_tokens
        )
        return Response(
            id=None,
            model=self.model,
            message=Message.assistant([TextPart(reply.text)]),
            finish_reason=reply.finish_reason,
            usage=Usage(input_tokens=reply.input_tokens, output_tokens=reply.output_tokens),
            provider_data={"system_fingerprint": FINGERPRINT},
        )

    def stream(self, request: Request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass
