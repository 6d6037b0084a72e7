"""Anytime-valid confidence sequences for a paired difference of scores, by betting.

The hedged capital process with predictable plug-in bets of Waudby-Smith & Ramdas, "Estimating means of
bounded random variables by betting", JRSSB 86(1), 2024, Sec. 4 (eqs. 26-27; Theorem 3): for a mean m of
observations in [0, 1], two gamblers bet that the mean is above, resp. below, m; the capital of the
hedged portfolio is a nonnegative martingale when m is the true mean, so by Ville's inequality the set
of m whose capital stayed below 1/alpha covers the mean at every time at once with probability
>= 1 - alpha. With `population` set, each bet is against the mean of the examples not yet seen (their
Sec. 6, sampling without replacement): the sequence covers the mean of that finite population, which is
what the fixed design's full test set estimates, and narrows as the population is used up.

No maintained library fits (`confseq` does not build on Python 3.11), hence this numpy module. A paired
difference d of two scores in [0, 1] lies in [-1, 1] and is mapped to (d + 1) / 2.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Truncation of the bets (the paper's c in (0, 1)): 1/2 as in its experiments.
_TRUNCATION = 0.5
# The gamblers' shares of the hedged portfolio (the paper's theta).
_THETA = 0.5


class Sequence(NamedTuple):
    """Bounds on a paired difference after each example, in [-1, 1], running-intersected."""

    lower: np.ndarray
    upper: np.ndarray


def _plug_in_bets(x: np.ndarray, alpha: float) -> np.ndarray:
    """lambda_t of eq. 26, from the observations before t only (predictable), over the last axis."""
    steps = x.shape[-1]
    t = np.arange(1, steps + 1, dtype=np.float64)
    mean = (0.5 + np.cumsum(x, axis=-1)) / (t + 1)
    variance = (0.25 + np.cumsum((x - mean) ** 2, axis=-1)) / (t + 1)
    before = np.concatenate([np.full((*x.shape[:-1], 1), 0.25), variance[..., :-1]], axis=-1)
    return np.sqrt(2 * np.log(2 / alpha) / (before * t * np.log1p(t)))


def log_capital(
    x: np.ndarray, m: np.ndarray | float, alpha: float, population: int | None = None
) -> np.ndarray:
    """Log of the hedged capital against mean `m` after each observation of `x` (last axis: time).

    `m` broadcasts against `x[..., :1]` (a column of candidate means, or one per sequence). With
    `population` (N), `x` is a sample without replacement from N values and `m` their mean.
    """
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    bets = _plug_in_bets(x, alpha)
    if population is None:
        target = np.broadcast_to(m, np.broadcast_shapes(m.shape, x.shape))
    else:
        t = np.arange(x.shape[-1], dtype=np.float64)
        seen = np.concatenate([np.zeros((*x.shape[:-1], 1)), np.cumsum(x, axis=-1)[..., :-1]], axis=-1)
        # The mean of what is left if m is the population's mean (the paper's m_t^WoR).
        target = (population * m - seen) / (population - t)
    # The tolerance keeps float rounding of an exact mean (the last value left) from ruling it out.
    impossible = (target < -1e-9) | (target > 1 + 1e-9)
    target = np.clip(target, 1e-12, 1 - 1e-12)
    up = np.minimum(bets, _TRUNCATION / target)
    down = np.minimum(bets, _TRUNCATION / (1 - target))
    log_up = np.cumsum(np.log1p(up * (x - target)), axis=-1)
    log_down = np.cumsum(np.log1p(-down * (x - target)), axis=-1)
    hedged = np.maximum(np.log(_THETA) + log_up, np.log(1 - _THETA) + log_down)
    # A mean the data seen already rules out (what is left would have to be outside [0, 1]).
    return np.where(np.maximum.accumulate(impossible, axis=-1), np.inf, hedged)


def excluded(log_cap: np.ndarray, alpha: float) -> np.ndarray:
    """Whether the candidate mean is outside the sequence at each time (once out, out for good)."""
    return np.maximum.accumulate(log_cap >= np.log(1 / alpha), axis=-1)


def paired_difference_sequence(
    a: np.ndarray,
    b: np.ndarray,
    alpha: float,
    population: int | None = None,
    grid: int = 2001,
    within: tuple[float, float] = (-1.0, 1.0),
) -> Sequence:
    """The sequence for mean(a - b) after each pair, scores in [0, 1], on a grid of candidate differences.

    Each bound is widened by one grid step, so the grid never makes the sequence narrower than the exact
    one (whose set is an interval: the capital is quasiconvex in m, the paper's Sec. 4). Bounds are NaN
    once every candidate is excluded, which happens only on the alpha-probability event of a miss.
    `within`: the last bounds of this call on a prefix of these pairs (same alpha, population and grid).
    The candidates outside were excluded on that prefix, so they are again, and only the candidates inside
    are computed: the final bounds are the same, at a fraction of the cost once the sequence is narrow.
    """
    x = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) + 1) / 2
    if x.ndim != 1 or x.size == 0 or np.any((x < 0) | (x > 1)):
        raise ValueError("scores must be two equal-length, non-empty sequences of values in [0, 1]")
    means = np.linspace(0.0, 1.0, grid)
    low, high = (within[0] + 1) / 2, (within[1] + 1) / 2
    step = means[1] - means[0]
    means = means[(means >= low - step / 2) & (means <= high + step / 2)]
    if means.size == 0:
        nan = np.full(x.size, np.nan)
        return Sequence(lower=nan, upper=nan)
    out = excluded(log_capital(x[None, :], means[:, None], alpha, population), alpha)
    inside = ~out
    any_inside = inside.any(axis=0)
    lower = np.where(any_inside, means[np.argmax(inside, axis=0)] - step, np.nan)
    upper = np.where(any_inside, means[means.size - 1 - np.argmax(inside[::-1], axis=0)] + step, np.nan)
    lower = np.clip(lower, 0.0, 1.0)
    upper = np.clip(upper, 0.0, 1.0)
    return Sequence(lower=2 * lower - 1, upper=2 * upper - 1)


def examples_used(
    x: np.ndarray, alpha: float, min_examples: int, population: int | None = None
) -> np.ndarray:
    """Per run (the rows of `x`: paired differences mapped to [0, 1], in the order seen), the examples one
    sequential difference uses: the first at which its sequence excludes 0, not before `min_examples`,
    else all of them."""
    n = x.shape[-1]
    settled = excluded(log_capital(x, 0.5, alpha, population), alpha)
    crossed = np.where(settled.any(axis=-1), settled.argmax(axis=-1) + 1, n)
    return np.maximum(crossed, min(min_examples, n))
