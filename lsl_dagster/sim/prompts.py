"""A request as the sim reads it: the instructions, fields, demos and format DSPy's adapters laid out."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lsl_dagster.sim.tiers import Tier, tier_name
from lsl_dagster.sim.words import HEADER, uniform


@dataclass(frozen=True)
class Call:
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
        return uniform(self.digest, *label)


def _fields(block: str) -> dict[str, str]:
    # The adapter appends its reminder ("Respond with the corresponding output fields ...") to the last input.
    block = re.split(
        r"\n\nRespond with (?:the corresponding output fields|a JSON object)", block, maxsplit=1
    )[0]
    parts = HEADER.split(block)
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


def read_call(
    tier: Tier,
    model: str,
    system: str,
    messages: Sequence[tuple[str, str]],
    seed: int,
    max_tokens: int | None,
) -> Call:
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
    return Call(
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
