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

from collections.abc import Mapping, Sequence

from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from lsl_dagster.llm.engine import SIMULATED_FINGERPRINT
from lsl_dagster.sim.answer_key import AnswerKey, Known
from lsl_dagster.sim.answers import task_outputs
from lsl_dagster.sim.prompts import read_call
from lsl_dagster.sim.proposals import meta_outputs, reflect_template
from lsl_dagster.sim.quality import Quality, prompt_quality
from lsl_dagster.sim.replies import Reply, render, within_limit
from lsl_dagster.sim.tiers import TIERS, tier_name
from lsl_dagster.sim.words import tokens


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
        text = reflect_template(tier, model, last, seed)
        return within_limit(text, tokens(prompt), max_tokens)
    call = read_call(tier, model, system, messages, seed, max_tokens)
    key, known = _match(keys, call.inputs)
    if known is None and (key is None or any("instruction" in name for name in call.outputs)):
        # Not a call of a task the sim has data for: an optimizer's meta-prompt (or a stranger's).
        values = meta_outputs(call)
        quality = Quality(0.0, named=True, demos_full=0)
    else:
        quality = prompt_quality(call, key, known)
        values = task_outputs(call, key, known, quality)
    return within_limit(render(call, values, quality), tokens(prompt), max_tokens)


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
            provider_data={"system_fingerprint": SIMULATED_FINGERPRINT},
        )

    def stream(self, request: Request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass
