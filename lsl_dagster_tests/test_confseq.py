"""The betting confidence sequence keeps its documented guarantees on simulated paired scores."""

from __future__ import annotations

import numpy as np
import pytest

from lsl_dagster.results.confseq import excluded, log_capital, paired_difference_sequence

ALPHA = 0.05
RUNS = 2000
EXAMPLES = 300
DIFFERENCES = [0.0, 0.02, 0.05, 0.10]


def binary_pairs(rng: np.random.Generator, d: float, shape: tuple[int, int]) -> np.ndarray:
    """(a - b + 1) / 2 for pass/fail scores: 10% of pairs only b passes, 10% + d only a passes."""
    u = rng.random(shape)
    return np.where(u < 0.1 + d, 1.0, np.where(u < 0.2 + d, 0.0, 0.5))


def graded_pairs(rng: np.random.Generator, d: float, shape: tuple[int, int]) -> np.ndarray:
    """(a - b + 1) / 2 for scores in [0, 1] drawn from two Beta laws whose means differ by d."""
    a = rng.beta(4 * (0.5 + d / 2), 4 * (0.5 - d / 2), shape)
    b = rng.beta(4 * (0.5 - d / 2), 4 * (0.5 + d / 2), shape)
    return (a - b + 1) / 2


@pytest.mark.parametrize("pairs", [binary_pairs, graded_pairs])
@pytest.mark.parametrize("d", DIFFERENCES)
def test_the_sequence_covers_the_true_difference_at_every_time(pairs, d: float):
    rng = np.random.default_rng(24)
    x = pairs(rng, d, (RUNS, EXAMPLES))
    missed = excluded(log_capital(x, (d + 1) / 2, ALPHA), ALPHA)[:, -1]
    assert 1 - missed.mean() >= 1 - ALPHA


@pytest.mark.parametrize("pairs", [binary_pairs, graded_pairs])
@pytest.mark.parametrize("d", DIFFERENCES)
def test_the_finite_population_sequence_covers_the_test_sets_difference(pairs, d: float):
    rng = np.random.default_rng(24)
    # Each run is one test set seen in a random order; its own mean difference is the target.
    population = pairs(rng, d, (RUNS, EXAMPLES))
    missed = excluded(log_capital(population, population.mean(axis=1, keepdims=True), ALPHA, EXAMPLES), ALPHA)
    assert 1 - missed[:, -1].mean() >= 1 - ALPHA


@pytest.mark.parametrize("population", [None, EXAMPLES])
def test_the_interval_shrinks_stays_in_range_and_matches_the_capital(population: int | None):
    rng = np.random.default_rng(7)
    a = (rng.random(EXAMPLES) < 0.7).astype(float)
    b = (rng.random(EXAMPLES) < 0.5).astype(float)
    seq = paired_difference_sequence(a, b, ALPHA, population=population)
    width = seq.upper - seq.lower
    assert np.all(np.diff(width) <= 1e-12)
    assert width[-1] < 0.5 * width[49]
    assert np.all((seq.lower >= -1) & (seq.upper <= 1))
    # The widened grid is conservative: it excludes 0 only once the capital against 0 crossed 1/alpha.
    x = (a - b + 1) / 2
    out_at_zero = excluded(log_capital(x, 0.5, ALPHA, population), ALPHA)
    grid_excludes_zero = (seq.lower > 0) | (seq.upper < 0)
    assert not np.any(grid_excludes_zero & ~out_at_zero)


def test_scores_outside_the_unit_interval_are_refused():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        paired_difference_sequence(np.array([1.5]), np.array([0.0]), ALPHA)


def test_the_finite_population_sequence_keeps_an_exact_mean_at_the_last_example():
    # The last value left is the mean exactly; float rounding of it must not exclude it.
    x = np.array(
        [0.5, 0.5, 0, 0.5, 0, 0.5, 1, 0.5, 1, 0.5, 1, 0.5, 0, 0, 1] + [0.5] * 9 + [0, 0.5, 0.5, 1, 0.5, 1]
    )
    assert not excluded(log_capital(x, x.mean(), ALPHA, x.size), ALPHA)[-1]


@pytest.mark.parametrize("population", [None, 400])
def test_computing_only_the_candidates_still_inside_gives_the_same_bounds(population: int | None):
    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.8).astype(float)
    b = (rng.random(400) < 0.7).astype(float)
    within = (-1.0, 1.0)
    for n in (50, 60, 120, 250, 400):  # rounds, each restricted to the last one's bounds
        full = paired_difference_sequence(a[:n], b[:n], 0.05, population)
        restricted = paired_difference_sequence(a[:n], b[:n], 0.05, population, within=within)
        assert (restricted.lower[-1], restricted.upper[-1]) == (full.lower[-1], full.upper[-1])
        within = (float(full.lower[-1]), float(full.upper[-1]))
    assert within[1] - within[0] < 0.5  # the sequence did narrow, so the restriction was exercised
