"""Paired statistics for comparing arms scored on the same test examples, and intervals across replicates.

Everything here delegates to reviewed implementations: `scipy.stats` (bootstrap, binomtest,
ttest_rel, ttest_1samp, t) and `statsmodels` (Holm's step-down adjustment).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

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


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and 95% Student-t interval (scipy) across independent replicates (e.g. seeds); no interval
    for n < 2. Across a handful of seeds a bootstrap is degenerate; the t interval is the honest (wide) one.
    """
    x = _replicates(values)
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    if sem == 0.0:  # identical replicates: scipy's t with scale 0 is undefined
        return mean, mean, mean
    low, high = sps.t.interval(0.95, x.size - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def one_sample_p(values: Sequence[float]) -> float | None:
    """Two-sided p of mean = 0 across replicates (scipy's one-sample t-test, matching the t interval);
    None for fewer than 2 replicates or identical nonzero ones (where the t statistic is undefined)."""
    x = _replicates(values)
    if x.size < 2:
        return None
    if np.all(x == x[0]):  # zero variance: the t statistic is undefined, not evidence
        return 1.0 if x[0] == 0 else None
    return float(sps.ttest_1samp(x, 0.0).pvalue)


def _replicates(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("needs a non-empty 1-D sequence of finite numbers")
    return x


def exclusion_note(n_paired: int, n_excluded: int) -> str:
    """What a verdict adds when examples were left out of the pairs (not scored by one of the arms)."""
    if not n_excluded:
        return ""
    return (
        f"; paired over {n_paired} of {n_paired + n_excluded} examples, {n_excluded} left out (a provider "
        "failure or a program error in either arm, not scored)"
    )
