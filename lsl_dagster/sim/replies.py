"""A reply in the adapter's format (chat markers or JSON), with the slips of its tier, within max_tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass

from lsl_dagster.sim.prompts import Call
from lsl_dagster.sim.quality import Quality
from lsl_dagster.sim.tiers import CONTEXT_TOKENS
from lsl_dagster.sim.words import SAY, split_sentences, tokens


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"


def within_limit(text: str, input_tokens: int, max_tokens: int | None) -> Reply:
    if max_tokens is not None and tokens(text) > max_tokens:
        return Reply(text[: 4 * max_tokens], input_tokens, max_tokens, "length")
    return Reply(text, input_tokens, tokens(text))


def render(call: Call, values: dict[str, str], quality: Quality) -> str:
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
        return SAY["prose"].format(" ".join(values.values()))
    if call.json_mode:
        return json.dumps(values, indent=2)
    body = "\n\n".join(f"[[ ## {name} ## ]]\n{value}" for name, value in values.items())
    return body + "\n\n[[ ## completed ## ]]"


def _ramble(call: Call, values: dict[str, str]) -> str:
    """Restate the inputs over and over until the token limit cuts the reply off."""
    limit = call.max_tokens or CONTEXT_TOKENS
    opening = f"[[ ## {call.outputs[0]} ## ]]\n" if not call.json_mode else '{"' + call.outputs[0] + '": "'
    sentences = split_sentences(" ".join(call.inputs.values())) or list(values.values()) or ["..."]
    parts = [opening, SAY["ramble"]]
    i = 0
    while tokens(" ".join(parts)) <= limit:
        parts.append(SAY["again"].format(sentences[i % len(sentences)]))
        i += 1
    return " ".join(parts)
