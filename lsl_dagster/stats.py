"""Paired statistics for comparing two arms scored on the same test examples."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Upper bound on entries in one resample index matrix: 2**21 int64 indices plus the gathered float64
# differences is ~32 MB, so n=20,000 × 10,000 resamples stays well under 50 MB.
_CHUNK_ENTRIES = 2**21


def _bootstrap_means(d: np.ndarray, n_resamples: int, seed: int, chunk_entries: int) -> np.ndarray:
    n = d.size
    rows_per_chunk = max(1, chunk_entries // n)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    # Drawing whole rows sequentially from one generator yields the same index stream for any chunk size,
    # so the result does not depend on chunk_entries.
    for start in range(0, n_resamples, rows_per_chunk):
        k = min(rows_per_chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start : start + k] = d[idx].mean(axis=1)
    return means


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Return (mean(b - a), ci_low, ci_high) from a paired percentile bootstrap over examples."""
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or b_arr.ndim != 1:
        raise ValueError("a and b must be one-dimensional")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must have equal length, got {a_arr.size} and {b_arr.size}")
    if a_arr.size == 0:
        raise ValueError("a and b must be non-empty")
    if n_resamples < 1000:
        raise ValueError(f"n_resamples must be >= 1000, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = b_arr - a_arr
    if not np.all(np.isfinite(d)):
        raise ValueError("a and b must be finite")

    means = _bootstrap_means(d, n_resamples, seed, _CHUNK_ENTRIES)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(d.mean()), float(lo), float(hi)


def mcnemar_exact_p(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value: binomial test on the discordant pairs."""
    a_arr = np.asarray(a_correct, dtype=bool)
    b_arr = np.asarray(b_correct, dtype=bool)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a_correct and b_correct must have equal length, got {a_arr.size} and {b_arr.size}")
    b01 = int(np.count_nonzero(~a_arr & b_arr))
    b10 = int(np.count_nonzero(a_arr & ~b_arr))
    return _binom_two_sided_p(b01, b10)


def _binom_two_sided_p(b01: int, b10: int) -> float:
    n = b01 + b10
    if n == 0:
        return 1.0
    k = min(b01, b10)
    # Log-space keeps 2**-n and comb(n, i) representable for n in the hundreds of thousands.
    log_norm = math.lgamma(n + 1) - n * math.log(2.0)
    log_terms = [log_norm - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    peak = max(log_terms)
    log_cdf = peak + math.log(math.fsum(math.exp(t - peak) for t in log_terms))
    return min(1.0, 2.0 * math.exp(log_cdf))


def is_binary(scores: Sequence[float] | np.ndarray) -> bool:
    """True when every score is 0 or 1."""
    arr = np.asarray(scores, dtype=np.float64)
    return bool(np.all((arr == 0.0) | (arr == 1.0)))


def verdict(
    diff: float,
    ci_low: float,
    ci_high: float,
    p: float | None,
    *,
    alpha: float = 0.05,
    label: str = "LSL",
    baseline: str = "baseline",
    confidence: float = 0.95,
) -> str:
    """Plain-language verdict that only claims a difference when the CI excludes 0."""
    ci = f"{confidence * 100:.3g}% CI [{ci_low:+.3f}, {ci_high:+.3f}]"
    if ci_low > 0:
        text = f"{label} beats {baseline} by {diff:+.3f} ({ci})"
    elif ci_high < 0:
        text = f"{label} is worse than {baseline} by {diff:+.3f} ({ci})"
    else:
        return f"No significant difference between {label} and {baseline} ({ci} includes 0)"
    if p is not None and p >= alpha:
        text += f"; McNemar p={p:.3g} does not confirm it at alpha={alpha:g}"
    return text
