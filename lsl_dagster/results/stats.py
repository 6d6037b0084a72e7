"""Paired statistics for comparing arms scored on the same test examples, and pooled across seeds.

Everything here delegates to reviewed implementations, `scipy.stats` (bootstrap, binomtest, ttest_rel)
and `statsmodels` (Holm's step-down adjustment, power), except the cluster bootstrap, which neither has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from lsl_dagster.records import SequenceBounds, SequentialDecision

# Upper bound on entries in one batch of resamples: scipy materializes the resampled index matrix and
# both gathered arms (int64 + 2 x float64) plus their difference, ~32 bytes per entry, so 2**20 entries
# keep a bootstrap of n=20,000 examples under ~40 MB whatever n_resamples is.
_BATCH_ENTRIES = 2**20

Test = Literal["mcnemar_exact", "paired_t"]


Scores = Sequence[float] | np.ndarray


def _paired(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or b_arr.ndim != 1:
        raise ValueError("a and b must be one-dimensional")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must have equal length, got {a_arr.size} and {b_arr.size}")
    if a_arr.size == 0:
        raise ValueError("a and b must be non-empty")
    if not (np.all(np.isfinite(a_arr)) and np.all(np.isfinite(b_arr))):
        raise ValueError("a and b must be finite")
    return a_arr, b_arr


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(b - a, axis=axis)


def batch_size(n: int) -> int:
    """Resamples per vectorized batch, so that memory is bounded for any number of examples."""
    return max(1, _BATCH_ENTRIES // max(1, n))


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean(b - a), ci_low, ci_high): scipy's paired percentile bootstrap over examples.

    Percentile rather than BCa: BCa needs a jackknife over all n examples (n^2 work at n=20,000) and is
    undefined when every difference is equal (e.g. one arm right on every example).
    """
    a_arr, b_arr = _paired(a, b)
    if n_resamples < 1000:
        raise ValueError(f"n_resamples must be >= 1000, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = b_arr - a_arr
    diff = float(d.mean())
    if np.all(d == d[0]):  # every resample has the same mean; scipy would warn of degenerate data
        return diff, diff, diff
    result = sps.bootstrap(
        (a_arr, b_arr),
        _mean_difference,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        batch=batch_size(d.size),
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return diff, float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_mean_ci(scores: Scores) -> tuple[float, float]:
    """95% percentile-bootstrap CI of a mean score over examples. Paired with zeros, each example's
    difference is its score, so this is `paired_bootstrap_ci` of (zeros, scores), with its degenerate case
    (every score equal: the interval is that score) and its refusal of no scores."""
    _, low, high = paired_bootstrap_ci(np.zeros(len(scores)), scores)
    return low, high


def mcnemar_exact_p(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value: scipy's binomial test of the discordant pairs against p=1/2."""
    a_arr = np.asarray(a_correct, dtype=bool)
    b_arr = np.asarray(b_correct, dtype=bool)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a_correct and b_correct must have equal length, got {a_arr.size} and {b_arr.size}")
    b01 = int(np.count_nonzero(~a_arr & b_arr))
    b10 = int(np.count_nonzero(a_arr & ~b_arr))
    if b01 + b10 == 0:  # no discordant pair: no evidence either way
        return 1.0
    return float(sps.binomtest(b01, b01 + b10, 0.5).pvalue)


def paired_test(a: Scores, b: Scores) -> tuple[Test, float | None]:
    """The paired test that fits the scores: exact McNemar for 0/1 scores; otherwise scipy's paired t-test
    (graded scores in [0, 1] over tens to thousands of examples: their mean difference is near normal)."""
    a_arr, b_arr = _paired(a, b)
    if is_binary(a_arr) and is_binary(b_arr):
        return "mcnemar_exact", mcnemar_exact_p(a_arr == 1.0, b_arr == 1.0)
    d = b_arr - a_arr
    if np.all(d == d[0]):  # zero variance: the t statistic is undefined, not evidence
        return "paired_t", 1.0 if d[0] == 0 else None
    return "paired_t", float(sps.ttest_rel(b_arr, a_arr).pvalue)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (statsmodels), over the p-values that exist; None stays None."""
    present = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if present:
        corrected = multipletests([p_values[i] for i in present], method="holm")[1]
        for i, value in zip(present, corrected, strict=True):
            adjusted[i] = float(value)
    return adjusted


def detectable_difference(n: int, discordance: float, alpha: float, power: float = 0.8) -> float | None:
    """The smallest paired difference of 0/1 scores that n examples detect with `power` (two-sided, level
    `alpha`), when a share `discordance` of the examples is right for one arm and wrong for the other;
    None when it would exceed `discordance`, the largest difference such examples can have.

    The paired differences are then -1, 0 or +1 with variance discordance - delta**2, so the standardized
    effect d that statsmodels' paired t-test power solves for gives delta = d * sqrt(discordance / (1 +
    d**2)); the normal approximation of McNemar's test, which the exact test used here roughly matches.
    """
    if n < 2 or not 0 < discordance <= 1 or not 0 < alpha < 1:
        raise ValueError("need n >= 2, discordance in (0, 1] and alpha in (0, 1)")
    d = float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power))
    delta = d * float(np.sqrt(discordance / (1 + d * d)))
    return delta if delta <= discordance else None


def is_binary(scores: Sequence[float] | np.ndarray) -> bool:
    """True when every score is 0 or 1."""
    arr = np.asarray(scores, dtype=np.float64)
    return bool(np.all((arr == 0.0) | (arr == 1.0)))


def verdict(
    diff: float,
    ci_low: float,
    ci_high: float,
    p_adjusted: float | None,
    *,
    alpha: float = 0.05,
    label: str = "LSL",
    baseline: str = "baseline",
    confidence: float = 0.95,
) -> str:
    """Plain-language verdict. A difference is claimed only when the CI excludes 0 AND the multiplicity-
    adjusted (Holm) p-value is below alpha; with no p-value (a single replicate) nothing is claimed."""
    ci = f"{confidence * 100:.3g}% CI [{ci_low:+.3f}, {ci_high:+.3f}]"
    if ci_low <= 0 <= ci_high:
        return f"No significant difference between {label} and {baseline} ({ci} includes 0)"
    if p_adjusted is None:
        return f"No verdict on {label} vs {baseline}: {diff:+.3f} ({ci}) has no p-value to adjust"
    held = "beats" if ci_low > 0 else "is worse than"
    if p_adjusted >= alpha:
        return (
            f"No significant difference between {label} and {baseline} after Holm adjustment: "
            f"{diff:+.3f} ({ci}), Holm p={p_adjusted:.3g} >= {alpha:g}"
        )
    return f"{label} {held} {baseline} by {diff:+.3f} ({ci}, Holm p={p_adjusted:.3g})"


def sequential_verdict(sequence: SequenceBounds, decision: SequentialDecision) -> str:
    """Plain-language verdict of a sequential evaluation: its anytime-valid sequence decides, and the text
    says so, with where and why the rounds stopped."""
    k = len(decision.sequences)
    cs = (
        f"sequential: {100 * (1 - decision.alpha / k):.3g}% anytime-valid CS [{sequence.lower:+.3f}, "
        f"{sequence.upper:+.3f}] at {decision.examples} of {decision.population} examples, family-wise "
        f"alpha {decision.alpha:g}"
    )
    label, baseline = sequence.arm, sequence.baseline
    if sequence.settled == "excludes_zero":
        held = "beats" if sequence.lower > 0 else "is worse than"
        return f"{label} {held} {baseline} by {sequence.diff:+.3f} ({cs})"
    if sequence.settled == "equivalent":
        return (
            f"{label} and {baseline} are practically equivalent: {sequence.diff:+.3f}, within "
            f"+-{decision.margin:g} ({cs})"
        )
    why = {
        "examples": "the examples ran out",
        "budget": "max_cost_usd could not pay for another round",
        "settled": "the other differences were settled",
    }[decision.reason]
    return f"No significant difference between {label} and {baseline} ({cs} includes 0; {why})"


# What a campaign's intervals are, as its tables and plots say.
CLUSTER_METHOD = (
    "two-stage cluster bootstrap (seeds, then examples within each seed; B=4000), percentile 95% CI, "
    "bootstrap p, Holm across cells"
)
CLUSTER_RESAMPLES = 4000


def cluster_bootstrap(
    clusters: Sequence[Scores], *, n_resamples: int = CLUSTER_RESAMPLES, seed: int = 0
) -> tuple[float, float, float, float]:
    """(mean, ci_low, ci_high, p) of per-example values grouped in clusters (an experiment's seeds): the
    mean of the cluster means, its percentile 95% interval from a two-stage bootstrap (Davison & Hinkley
    1997, sec. 3.8: draw clusters with replacement, then examples with replacement within each drawn
    cluster), and the two-sided bootstrap p of a zero mean. Resampling clusters keeps the between-seed
    variance in the interval; resampling examples keeps the within-seed one, so two seeds of hundreds of
    examples still give an informative interval. Every resampled statistic is a mean of observed values,
    so the interval lies inside their range ([-1, 1] for differences of scores in [0, 1]).

    scipy.stats.bootstrap resamples independent observations only; it has no cluster level."""
    data = [np.asarray(c, dtype=np.float64) for c in clusters]
    if not data or any(c.ndim != 1 or c.size == 0 for c in data):
        raise ValueError("needs at least one cluster, each a non-empty 1-D sequence")
    if not all(np.all(np.isfinite(c)) for c in data):
        raise ValueError("values must be finite")
    sizes = np.array([c.size for c in data])
    padded = np.zeros((len(data), sizes.max()))
    for i, c in enumerate(data):
        padded[i, : c.size] = c
    rng = np.random.default_rng(seed)
    batch = batch_size(int(sizes.max()))
    columns = np.arange(sizes.max())
    resampled = np.empty(n_resamples)
    for first in range(0, n_resamples, batch):
        count = min(batch, n_resamples - first)
        total = np.zeros(count)
        for _ in data:  # each of the len(data) draws of a resample: a cluster, then its examples
            drawn = rng.integers(0, len(data), size=count)
            n = sizes[drawn]
            picks = (rng.random((count, columns.size)) * n[:, None]).astype(np.int64)
            values = np.where(columns < n[:, None], padded[drawn[:, None], picks], 0.0)
            total += values.sum(axis=1) / n
        resampled[first : first + count] = total / len(data)
    mean = float(np.mean([c.mean() for c in data]))
    low, high = np.percentile(resampled, [2.5, 97.5])
    below, above = np.count_nonzero(resampled <= 0), np.count_nonzero(resampled >= 0)
    p = min(1.0, 2 * (min(below, above) + 1) / (n_resamples + 1))
    return mean, float(low), float(high), p


def exclusion_note(n_paired: int, n_excluded: int) -> str:
    """What a verdict adds when examples were left out of the pairs (not scored by one of the arms)."""
    if not n_excluded:
        return ""
    return (
        f"; paired over {n_paired} of {n_paired + n_excluded} examples, {n_excluded} left out (a provider "
        "failure or a program error in either arm, not scored)"
    )
