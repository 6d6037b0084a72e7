"""The gold labels the sim may read: an `AnswerKey` over (inputs, labels) pairs, and what they show."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from lsl_dagster.sim.words import NORMAL, content_words, normalize, uniform


@dataclass(frozen=True, slots=True)
class Known:
    """One example the sim has the answers to (its inputs are kept only as a digest)."""

    labels: Mapping[str, str]
    fields: frozenset[str]  # its input field names
    latent: float  # its hardness, N(0, 1), the same for every prompt, tier and seed
    length: int  # characters of input


def _digest(name: str, value: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}\x1f{normalize(value)}".encode(), digest_size=8).digest())


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
        self._profile: Profile | None = None

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
        latent = NORMAL.inv_cdf(uniform("example", json.dumps(inputs, sort_keys=True)))
        length = sum(len(v) for v in inputs.values())
        self._known.append(Known(labels, self._fields.setdefault(fields, fields), latent, length))
        if self._sample is not None and len(self._sample) < self.SAMPLE:
            self._sample.append((inputs, labels))
        return True

    @property
    def profile(self) -> Profile:
        with self._lock:
            if self._profile is None:
                while len(self._known) < self.SAMPLE and self._read():
                    pass
                self._profile = Profile.of(self._sample or [])
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
            if normalize(value) != normalize(not_equal):
                return value
        return None


@dataclass(frozen=True)
class Profile:
    """What the sim learns about a task from its first examples: its vocabulary, labels and lengths."""

    input_names: frozenset[str]
    vocabulary: frozenset[str]
    labels: Mapping[str, tuple[str, ...]]
    log_length: tuple[float, float]  # mean and spread of log(input length)

    @staticmethod
    def of(sample: Sequence[tuple[dict[str, str], dict[str, str]]]) -> Profile:
        document_frequency: Counter[str] = Counter()
        labels: dict[str, list[str]] = {}
        lengths = []
        for inputs, example_labels in sample:
            document_frequency.update(
                set(content_words(" ".join([*inputs.values(), *example_labels.values()])))
            )
            for field, value in example_labels.items():
                labels.setdefault(field, []).append(value)
            lengths.append(math.log(1 + sum(len(v) for v in inputs.values())))
        # A word of the task recurs across examples; a word of one example (a name, a number) does not.
        floor = max(2, math.ceil(0.02 * len(sample)))
        vocabulary = frozenset(w for w, n in document_frequency.items() if n >= floor)
        mean = sum(lengths) / len(lengths) if lengths else 0.0
        spread = math.sqrt(sum((x - mean) ** 2 for x in lengths) / len(lengths)) if lengths else 0.0
        return Profile(
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
