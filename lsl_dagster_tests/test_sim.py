"""The sim models (a test double) on a task made up here, which the sim cannot know: skill, prompts, format.

Requests are built by DSPy's own adapters and replies parsed by them, as in a real run.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import dspy
import pytest
from dspy.lm15 import Config as RequestConfig
from dspy.lm15 import Message, Request

from lsl_dagster import sim
from lsl_dagster.sim.answer_key import AnswerKey
from lsl_dagster.sim.engine import SimEngine, respond
from lsl_dagster.sim.replies import Reply
from lsl_dagster.sim.words import SAY

SIM = Path(sim.__file__).resolve().parent

# A made-up task: which workshop a part goes to. Its vocabulary (parts, finishes, sites) recurs across
# examples; the labels are arbitrary, so nothing but the answer key can tell the sim the answer.
_PARTS = ["gear", "spring", "valve", "bracket", "hinge", "piston", "lever", "axle", "flange", "gasket"]
_FINISHES = ["brushed", "anodized", "galvanized", "polished", "painted"]
_SITES = ["harbour", "quarry", "orchard", "foundry", "mill"]
_SHOPS = ["north", "south", "east", "west", "central"]


def _examples(n: int = 400) -> list[tuple[dict[str, str], dict[str, str]]]:
    rng = random.Random(7)
    examples = []
    for i in range(n):
        part, finish, site = rng.choice(_PARTS), rng.choice(_FINISHES), rng.choice(_SITES)
        item = f"Batch {i}: a {finish} {part} ordered by the {site} depot, {rng.randint(2, 90)} units."
        examples.append(({"item": item}, {"workshop": rng.choice(_SHOPS)}))
    return examples


EXAMPLES = _examples()
KEY = AnswerKey(EXAMPLES, name="workshops")
SIGNATURE = dspy.Signature("item -> workshop", "Route the item.")
GROUNDED = (
    "Route the item by its part (gear, spring, valve, piston, hinge, lever), its finish (brushed, anodized, "
    "galvanized, polished, painted) and its depot (harbour, quarry, orchard, foundry, mill)."
)
ADAPTER = dspy.ChatAdapter()


def _request(signature: type[dspy.Signature], inputs: dict[str, str], demos=()) -> tuple[str, list]:
    messages = ADAPTER.format(signature, list(demos), inputs)
    return messages[0]["content"], [(m["role"], m["content"]) for m in messages[1:]]


def ask(
    model: str,
    inputs: dict[str, str],
    *,
    instructions: str | None = None,
    demos=(),
    seed: int = 0,
    max_tokens: int | None = None,
    signature: type[dspy.Signature] = SIGNATURE,
) -> Reply:
    if instructions is not None:
        signature = signature.with_instructions(instructions)
    system, messages = _request(signature, inputs, demos)
    return respond(model, system, messages, seed, keys=[KEY], max_tokens=max_tokens)


def parse(reply: Reply, signature: type[dspy.Signature] = SIGNATURE) -> dict | None:
    try:
        return ADAPTER.parse(signature, reply.text)
    except Exception:  # DSPy's AdapterParseError and friends: the reply broke the format
        return None


def accuracy(model: str, n: int = 300, **options) -> float:
    right = 0
    for inputs, labels in EXAMPLES[:n]:
        parsed = parse(ask(model, inputs, **options))
        right += parsed is not None and parsed["workshop"] == labels["workshop"]
    return right / n


def _demo(index: int, workshop: str | None = None) -> dspy.Example:
    inputs, labels = EXAMPLES[-1 - index]  # demos from the end, evaluation from the start
    return dspy.Example(**inputs, workshop=workshop or labels["workshop"]).with_inputs("item")


def test_replies_are_a_pure_function_of_seed_model_and_request():
    inputs = EXAMPLES[0][0]
    assert ask("sim/medium", inputs) == ask("sim/medium", inputs)
    assert ask("sim/medium", inputs) == ask("sim-medium", inputs) == ask("openai/sim-medium", inputs)
    replies = {seed: [ask("sim/medium", i, seed=seed).text for i, _ in EXAMPLES[:50]] for seed in (0, 1)}
    assert replies[0] != replies[1]  # the seed is part of the function
    # A fresh key over the same data answers the same: nothing depends on what was looked up before.
    again = AnswerKey(EXAMPLES)
    system, messages = _request(SIGNATURE, EXAMPLES[123][0])
    assert respond("sim/small", system, messages, 0, keys=[again]) == respond(
        "sim/small", system, messages, 0, keys=[KEY]
    )


def test_large_beats_medium_beats_small_beats_tiny_on_a_task_it_never_saw():
    scores = {tier: accuracy(f"sim/{tier}") for tier in ("large", "medium", "small", "tiny")}
    assert scores["large"] > scores["medium"] + 0.1 > scores["small"] + 0.2 > scores["tiny"] + 0.3
    # Without the answer key the sim knows nothing: it cannot hit arbitrary labels.
    blind = [respond("sim/large", *_request(SIGNATURE, i), 0).text for i, _ in EXAMPLES[:100]]
    assert not any(
        f"\n{labels['workshop']}\n" in text for text, (_, labels) in zip(blind, EXAMPLES, strict=False)
    )


def test_hard_examples_are_hard_for_every_tier():
    def wrong(tier: str) -> set[int]:
        return {
            i
            for i, (inputs, labels) in enumerate(EXAMPLES[:300])
            if (parse(ask(f"sim/{tier}", inputs)) or {}).get("workshop") != labels["workshop"]
        }

    large, small = wrong("large"), wrong("small")
    # The large tier's misses are mostly among the small tier's: difficulty belongs to the example.
    assert len(large & small) / len(large) > len(small) / 300 + 0.1


def test_correct_demos_help_and_wrong_demos_hurt():
    bare = accuracy("sim/small")
    right = accuracy("sim/small", demos=[_demo(i) for i in range(3)])
    wrong_label = [
        _demo(i, workshop=next(s for s in _SHOPS if s != EXAMPLES[-1 - i][1]["workshop"])) for i in range(3)
    ]
    wrong = accuracy("sim/small", demos=wrong_label)
    assert right > bare + 0.05
    assert wrong < bare - 0.05


def test_instructions_are_judged_by_the_data_not_by_phrases():
    bare = accuracy("sim/small")
    grounded = accuracy("sim/small", instructions=GROUNDED)
    assert grounded > bare + 0.1
    # The sim's own wording, and generic advice, carry none of the data: no gain.
    own = " ".join(SAY[k].format("x", "y", "z") for k in ("focus", "format", "more", "noise"))
    for advice in (own, "Think step by step. Double-check every step. Be accurate and concise."):
        assert accuracy("sim/small", instructions="Route the item. " + advice) <= bare + 0.03
    # Naming the field to answer and its data helps; so much text that it drowns the data hurts.
    named = accuracy("sim/small", instructions=GROUNDED + " Answer with the workshop only.")
    assert named >= grounded
    bloat = (
        GROUNDED
        + " "
        + " ".join(f"Consider the history of topic{i} and its many implications." for i in range(40))
    )
    assert accuracy("sim/small", instructions=bloat) < grounded - 0.1


def test_a_weak_tier_gains_more_from_a_good_prompt_but_stays_weaker():
    gain = {
        tier: accuracy(f"sim/{tier}", instructions=GROUNDED, demos=[_demo(i) for i in range(3)])
        - accuracy(f"sim/{tier}")
        for tier in ("large", "small")
    }
    assert gain["small"] > gain["large"] > 0
    assert accuracy("sim/small", instructions=GROUNDED, demos=[_demo(i) for i in range(3)]) < accuracy(
        "sim/large"
    )


def test_the_weak_tier_breaks_the_format_echoes_the_template_and_rambles():
    replies = {
        tier: [ask(f"sim/{tier}", i, max_tokens=256) for i, _ in EXAMPLES[:300]] for tier in ("large", "tiny")
    }
    unparsed = {tier: sum(parse(r) is None for r in rs) / len(rs) for tier, rs in replies.items()}
    assert unparsed["tiny"] > 0.25 and unparsed["large"] < 0.03
    tiny = replies["tiny"]
    assert sum("[[ ## workshop ## ]]\n{workshop}" in r.text for r in tiny) > 10  # the template, echoed
    assert sum(r.finish_reason == "length" for r in tiny) > 10  # talked until the limit
    assert sum(not r.text.startswith("[[ ##") for r in tiny) > 30  # prose without markers


@pytest.mark.parametrize("tier", ["large", "small", "tiny"])
@pytest.mark.parametrize("max_tokens", [5, 40, 300])
def test_no_reply_exceeds_max_tokens(tier: str, max_tokens: int):
    engine = SimEngine(f"sim/{tier}", 0, KEY)
    finishes = set()
    for inputs, _ in EXAMPLES[:60]:
        system, messages = _request(SIGNATURE, inputs)
        request = Request(
            messages=tuple(
                Message.user(text) if role == "user" else Message.assistant(text) for role, text in messages
            ),
            system=system,
            model=f"sim/{tier}",
            config=RequestConfig(max_tokens=max_tokens),
        )
        response = engine.complete(request)
        assert response.usage.output_tokens <= max_tokens
        assert len(response.message.parts[0].text) <= 4 * max_tokens
        finishes.add(response.finish_reason)
    # A limit shorter than every answer cuts each one; the weak tier rambles into any limit.
    if max_tokens == 5 or tier == "tiny":
        assert "length" in finishes
    if max_tokens == 300 and tier == "large":
        assert finishes == {"stop"}


def test_multi_predictor_programs_get_inputs_derived_text_and_use_evidence():
    query_sig = dspy.Signature("item -> search_query", "Write a search query.")
    answer_sig = dspy.Signature("item, context -> workshop", "Route the item using the context.")
    inputs = EXAMPLES[5][0]
    query = parse(ask("sim/large", inputs, signature=query_sig), query_sig)
    assert query is not None and query["search_query"].split()
    # The query is made of the item's own telling words.
    assert set(query["search_query"].split()) <= set(re.findall(r"[a-z]+", inputs["item"].lower()))

    def routed(with_evidence: bool) -> float:
        right = 0
        for item, labels in EXAMPLES[:300]:
            context = f"Depot notes: send to {labels['workshop']}." if with_evidence else "Depot notes: none."
            parsed = parse(ask("sim/small", {**item, "context": context}, signature=answer_sig), answer_sig)
            right += parsed is not None and parsed["workshop"] == labels["workshop"]
        return right / 300

    assert routed(True) > routed(False) + 0.1


def _reflection(model: str, seed: int = 0, feedback: str = "") -> str:
    """GEPA's reflection template with three examples of the made-up task."""
    shown = "\n\n".join(
        f"# Example {n}\n## Inputs\n### item\n{inputs['item']}\n\n"
        f"## Generated Outputs\n### workshop\nnorth\n\n"
        f"## Feedback\nExpected {labels['workshop']}, got north. {feedback}\n"
        for n, (inputs, labels) in enumerate(EXAMPLES[10 + 3 * seed : 13 + 3 * seed], start=1)
    )
    prompt = (
        "I provided an assistant with the following instructions to perform a task for me:\n```\n"
        "Route the item.\n```\n\nThe following are examples of different task inputs provided to the "
        f"assistant along with the assistant's response for each of them, and some feedback on how the "
        f"assistant's response could be better:\n```\n{shown}\n```\n\n"
        "Provide the new instructions within ``` blocks."
    )
    reply = respond(model, None, [("user", prompt)], seed, keys=[KEY]).text
    assert reply.startswith("```") and reply.endswith("```")
    return reply.strip("`\n")


def test_reflection_distils_what_the_meta_prompt_shows():
    lesson = "Parts ordered by a depot always go to the workshop that serves that depot."
    instruction = _reflection("sim/large", feedback=lesson)
    assert instruction.startswith("Route the item.")
    shown_words = set(re.findall(r"[a-z]+", " ".join(i["item"] for i, _ in EXAMPLES[10:13]).lower()))
    added = set(re.findall(r"[a-z]+", instruction.lower())) - set(re.findall(r"[a-z]+", "route the item"))
    assert added & shown_words - {"the", "by", "a", "units", "batch", "ordered"}
    assert "depot" in instruction.lower()


def test_stronger_tiers_propose_useful_instructions_more_often():
    def useful(model: str) -> float:
        gains = [
            accuracy("sim/small", n=150, instructions=_reflection(model, seed)) - accuracy("sim/small", n=150)
            for seed in range(12)
        ]
        return sum(g > 0.02 for g in gains) / len(gains)

    assert useful("sim/large") > useful("sim/tiny")
    assert useful("sim/large") >= 0.6


def test_gepa_improves_a_small_models_prompt_on_a_task_the_sim_never_saw():
    lm = dspy.LM("sim/small", engine=SimEngine("sim/small", 0, KEY), cache=False, max_tokens=512)
    reflection = dspy.LM("sim/large", engine=SimEngine("sim/large", 0, KEY), cache=False, max_tokens=1024)
    data = [dspy.Example(**i, **labels).with_inputs("item") for i, labels in EXAMPLES]
    train, val = data[300:340], data[340:370]

    def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        ok = float(getattr(pred, "workshop", None) == gold.workshop)
        return dspy.Prediction(
            score=ok, feedback=f"Expected {gold.workshop}, got {getattr(pred, 'workshop', None)}."
        )

    program = dspy.Predict(SIGNATURE)
    evaluate = dspy.Evaluate(
        devset=val, metric=lambda g, p, t=None: metric(g, p).score, display_progress=False
    )
    with dspy.context(lm=lm):
        before = evaluate(program).score
        optimizer = dspy.GEPA(
            metric=metric, max_metric_calls=400, reflection_lm=reflection, seed=0, num_threads=1
        )
        optimized = optimizer.compile(program, trainset=train, valset=val)
        after = evaluate(optimized).score
    assert optimized.signature.instructions != SIGNATURE.instructions
    assert after > before + 10  # percentage points on the validation set


def test_meta_prompts_get_proposals_in_the_adapter_format():
    # MIPROv2's instruction proposer, as DSPy formats it, with a dataset summary drawn from the data.
    proposer = dspy.Signature(
        "dataset_description, module, task_demos, basic_instruction, tip -> proposed_instruction",
        "Propose an instruction.",
    )
    description = "Items name a part, its finish and the depot: " + ", ".join(_PARTS[:5]) + "."
    inputs = {
        "dataset_description": description + " " + description,
        "module": "Predict(item) -> workshop",
        "task_demos": "No task demos provided.",
        "basic_instruction": "Route the item.",
        "tip": "Be concise.",
    }
    system, messages = _request(proposer, inputs)
    parsed = parse(respond("sim/large", system, messages, 0, keys=[KEY]), proposer)
    assert parsed is not None and parsed["proposed_instruction"].startswith("Route the item.")
    assert accuracy("sim/small", instructions=parsed["proposed_instruction"]) > accuracy("sim/small")


class _Advise(dspy.Signature):
    """Advise each part of the program from the runs shown."""

    runs: str = dspy.InputField()
    parts: list[str] = dspy.InputField()
    discussion: str = dspy.OutputField()
    advice: dict[str, str] = dspy.OutputField()


def test_a_dict_output_field_gets_an_object_keyed_by_the_names_asked_about():
    # Like SIMBA's rule-writing request: advice per module, the modules named by a list-valued input.
    runs = " ".join(f"{inputs['item']} -> {labels['workshop']}" for inputs, labels in EXAMPLES[:8])
    inputs = {"runs": runs, "parts": '["route", "check.predict"]'}
    system, messages = _request(_Advise, inputs)
    for tier in ("large", "small"):
        parsed = parse(respond(f"sim/{tier}", system, messages, 0, keys=[KEY]), _Advise)
        assert parsed is not None, tier
        assert set(parsed["advice"]) == {"route", "check.predict"}
        assert all(isinstance(v, str) and v.strip() for v in parsed["advice"].values())
    advice = " ".join(
        parse(respond("sim/large", system, messages, 0, keys=[KEY]), _Advise)["advice"].values()
    )
    # Drawn from the runs shown: words that recur in them.
    assert {w for w in re.findall(r"[a-z]{4,}", advice.lower())} & set(re.findall(r"[a-z]{4,}", runs.lower()))


def test_the_sim_knows_no_task_and_none_of_the_projects_phrases():
    # Behaviour is tested above; this guards against task knowledge creeping back in.
    # Every module of the sim but its one bridge to the project's tasks (keys.py).
    source = "\n".join(p.read_text() for p in sorted(SIM.glob("*.py")) if p.name != "keys.py").lower()
    tasks = [p.name for p in (SIM.parent.parent / "data" / "tasks").iterdir()]
    old = [
        "arithmetic",
        "word_sort",
        "step by step",
        "running total",
        "alphabetical",
        "calculation",
        "wrong order",
    ]
    assert not [phrase for phrase in [*tasks, *old] if phrase.replace("_", " ") in source or phrase in source]
