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


# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom (t_{0.975, df}).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and 95% Student-t interval across independent replicates (e.g. seeds); no interval for n < 2.

    Across a handful of seeds a bootstrap is degenerate; the t interval is the honest (wide) one.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("mean_ci95 needs a non-empty 1-D sequence of finite numbers")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    df = x.size - 1
    # Beyond 30 degrees of freedom the normal quantile plus its first Cornish-Fisher term is within 1e-3.
    t = _T975[df - 1] if df <= 30 else 1.959964 + (1.959964**3 + 1.959964) / (4 * df)
    half = t * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half
