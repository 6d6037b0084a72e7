"""The sim's tiers (the one place that names them), what each costs, and how a model string names one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


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
        raise unknown_tier(model)
    return name


def unknown_tier(model: str) -> ValueError:
    return ValueError(f"unknown sim model {model!r}: known tiers are {', '.join(f'sim/{t}' for t in TIERS)}")
