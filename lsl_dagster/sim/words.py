"""Text as the sim reads and writes it: content words, the words that say nothing about a task, the sim's
own wording, token counts, and draws that are a pure function of their inputs."""

from __future__ import annotations

import hashlib
import math
import re
from statistics import NormalDist

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
MARKUP = frozenset(
    re.findall(
        r"\w+",
        """example examples input inputs output outputs generated feedback keys key supplied particular
    field fields completed str int float list dict none true false""",
    )
)
# The sim's own wording. Its words are never evidence of a task, and no prompt is judged by them.
SAY = {
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
OWN_WORDS = frozenset(re.findall(r"[a-z]+", " ".join(SAY.values()).lower()))
HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
NOT_SUPPLIED = "Not supplied for this particular example."
NORMAL = NormalDist()


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOP]


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def uniform(*parts: object) -> float:
    """A uniform draw in (0, 1) that is a pure function of its inputs."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
