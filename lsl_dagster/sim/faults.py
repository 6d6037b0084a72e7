"""Which failure a provider would produce on the n-th request (rate limits, 5xx, hangs, garbage, dropped
connections): a `FaultPlan`, a pure function of (seed, n), so a run is reproducible whatever the timing."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

# empty_choices and null_content: an HTTP 200 completion with no reply in it (`choices: []`, or a message
# whose `content` is null), as providers send after a content filter or an upstream hiccup.
FAULT_KINDS = ("429", "500", "502", "503", "hang", "malformed", "reset", "empty_choices", "null_content")
RETRIABLE_FAULTS = ("429", "500", "502", "503")


def draw(*parts: object) -> float:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class FaultPlan:
    """Which fault (if any) the n-th chat request (1-based, counted by the server) gets.

    An explicit schedule wins; otherwise a fault is drawn with probability `rate`, its kind uniformly from
    `kinds`, both as a pure function of (seed, n), so a run is reproducible whatever the thread timing.
    """

    schedule: Mapping[int, str] = field(default_factory=dict)
    rate: float = 0.0
    kinds: tuple[str, ...] = RETRIABLE_FAULTS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = (set(self.schedule.values()) | set(self.kinds)) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}: known are {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")
        if self.rate > 0 and not self.kinds:
            raise ValueError("a fault rate needs at least one fault kind")

    def fault_for(self, n: int) -> str | None:
        if n in self.schedule:
            return self.schedule[n]
        if self.rate > 0 and draw(self.seed, n, "fault") < self.rate:
            return self.kinds[int(draw(self.seed, n, "kind") * len(self.kinds))]
        return None
