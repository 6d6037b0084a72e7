import math
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

from lsl_dagster import stats
from lsl_dagster.stats import is_binary, mcnemar_exact_p, paired_bootstrap_ci, verdict

# ---------------------------------------------------------------------------------------------------------
# Reference implementations: slow and obviously correct.
# ---------------------------------------------------------------------------------------------------------


def _reference_quantile(sorted_values: list[float], q: float) -> float:
    # numpy's default "linear" method: interpolate at position q * (N - 1).
    h = q * (len(sorted_values) - 1)
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def _reference_bootstrap(a, b, n_resamples, confidence, seed):
    d = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    n = len(d)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_resamples):
        row = rng.integers(0, n, size=n)
        means.append(math.fsum(d[int(i)] for i in row) / n)
    means.sort()
    tail = (1 - confidence) / 2
    return (
        math.fsum(d) / n,
        _reference_quantile(means, tail),
        _reference_quantile(means, 1 - tail),
    )


def _reference_mcnemar(b01: int, b10: int) -> float:
    n = b01 + b10
    if n == 0:
        return 1.0
    k = min(b01, b10)
    total, term = 0, 1  # term runs through comb(n, i) exactly, in Python integers
    for i in range(k + 1):
        total += term
        term = term * (n - i) // (i + 1)
    p = 2 * Fraction(total, 2**n)
    return float(min(Fraction(1), p))


def _pairs(b01: int, b10: int, n00: int = 3, n11: int = 4) -> tuple[list[bool], list[bool]]:
    a = [False] * b01 + [True] * b10 + [False] * n00 + [True] * n11
    b = [True] * b01 + [False] * b10 + [False] * n00 + [True] * n11
    return a, b


# ---------------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "seed", "confidence"),
    [(1, 0, 0.95), (7, 1, 0.95), (7, 2, 0.9), (500, 3, 0.95), (500, 4, 0.99)],
)
def test_bootstrap_matches_reference(n, seed, confidence):
    data_rng = np.random.default_rng(1000 + seed)
    a = data_rng.normal(size=n)
    b = a + data_rng.normal(0.1, 1.0, size=n)
    got = paired_bootstrap_ci(a, b, n_resamples=1000, confidence=confidence, seed=seed)
    want = _reference_bootstrap(a, b, 1000, confidence, seed)
    assert got == pytest.approx(want, abs=1e-12, rel=0)


def test_bootstrap_matches_reference_binary_scores():
    data_rng = np.random.default_rng(5)
    a = (data_rng.random(60) < 0.5).astype(float).tolist()
    b = (data_rng.random(60) < 0.7).astype(float).tolist()
    got = paired_bootstrap_ci(a, b, n_resamples=2000, seed=11)
    assert got == pytest.approx(_reference_bootstrap(a, b, 2000, 0.95, 11), abs=1e-12, rel=0)


def test_numpy_row_blocks_form_one_stream():
    # The chunk-invariance of the bootstrap rests on this property of numpy's Generator.
    for n in (1, 7, 13, 500):
        whole = np.random.default_rng(9).integers(0, n, size=(12, n))
        rng = np.random.default_rng(9)
        blocks = np.concatenate([rng.integers(0, n, size=(k, n)) for k in (1, 3, 5, 2, 1)])
        np.testing.assert_array_equal(whole, blocks)


@pytest.mark.parametrize("n", [1, 7, 500])
def test_bootstrap_means_chunk_invariant(n):
    d = np.random.default_rng(n).normal(size=n)
    full = stats._bootstrap_means(d, 1000, 42, chunk_entries=10**9)
    for chunk_entries in (1, n, 3 * n + 1, 10 * n):
        np.testing.assert_array_equal(stats._bootstrap_means(d, 1000, 42, chunk_entries), full)


def test_bootstrap_result_chunk_invariant(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=301), rng.normal(size=301)
    default = paired_bootstrap_ci(a, b, n_resamples=1500, seed=3)
    monkeypatch.setattr(stats, "_CHUNK_ENTRIES", 301 * 4 + 7)
    assert paired_bootstrap_ci(a, b, n_resamples=1500, seed=3) == default


def test_bootstrap_depends_on_seed():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert paired_bootstrap_ci(a, b, seed=1) == paired_bootstrap_ci(a, b, seed=1)
    assert paired_bootstrap_ci(a, b, seed=1) != paired_bootstrap_ci(a, b, seed=2)


def test_bootstrap_all_wins():
    assert paired_bootstrap_ci([0] * 40, [1] * 40) == (1.0, 1.0, 1.0)


def test_bootstrap_identical_arms():
    x = np.random.default_rng(0).random(40)
    assert paired_bootstrap_ci(x, x.copy()) == (0.0, 0.0, 0.0)


def test_bootstrap_large_sample_matches_normal_approximation():
    rng = np.random.default_rng(2024)
    n = 5000
    a = (rng.random(n) < 0.5).astype(float)
    b = (rng.random(n) < 0.6).astype(float)
    diff, lo, hi = paired_bootstrap_ci(a, b, seed=7)
    d = b - a
    assert diff == pytest.approx(d.mean(), abs=1e-15)
    assert lo < diff < hi
    assert lo < 0.1 < hi
    normal_width = 2 * 1.959963984540054 * d.std(ddof=1) / math.sqrt(n)
    assert hi - lo == pytest.approx(normal_width, rel=0.15)


def test_bootstrap_n20000_bounded_memory():
    rng = np.random.default_rng(1)
    n = 20_000
    a, b = rng.random(n), rng.random(n)
    tracemalloc.start()
    try:
        diff, lo, hi = paired_bootstrap_ci(a, b)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lo < diff < hi
    assert peak < 50 * 2**20


@pytest.mark.parametrize(
    ("a", "b", "kwargs"),
    [
        ([1.0, 2.0], [1.0], {}),
        ([], [], {}),
        ([1.0], [2.0], {"n_resamples": 999}),
        ([1.0], [2.0], {"confidence": 0.0}),
        ([1.0], [2.0], {"confidence": 1.0}),
        ([1.0], [2.0], {"confidence": 1.5}),
        ([1.0, float("nan")], [2.0, 1.0], {}),
        ([[1.0, 2.0]], [[1.0, 2.0]], {}),
    ],
)
def test_bootstrap_rejects_bad_input(a, b, kwargs):
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, b, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# McNemar
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b01", "b10", "expected"),
    [(0, 0, 1.0), (1, 9, 0.021484375), (9, 1, 0.021484375), (5, 5, 1.0), (0, 6, 0.03125), (6, 0, 0.03125)],
)
def test_mcnemar_known_values(b01, b10, expected):
    assert mcnemar_exact_p(*_pairs(b01, b10)) == pytest.approx(expected, rel=1e-12, abs=0)


def test_mcnemar_matches_exact_formula():
    want = 2 * sum(math.comb(35, i) for i in range(11)) / 2**35
    assert mcnemar_exact_p(*_pairs(10, 25)) == pytest.approx(want, rel=0, abs=1e-12)
    assert mcnemar_exact_p(*_pairs(25, 10)) == pytest.approx(want, rel=0, abs=1e-12)


@pytest.mark.parametrize(("b01", "b10"), [(4000, 4300), (3, 40), (17, 18), (200, 140)])
def test_mcnemar_matches_fraction_reference(b01, b10):
    p = mcnemar_exact_p(*_pairs(b01, b10, n00=100, n11=100))
    want = _reference_mcnemar(b01, b10)
    assert 0.0 < p <= 1.0
    assert p == pytest.approx(want, rel=1e-9, abs=0)


def test_mcnemar_large_case_is_strictly_between_0_and_1():
    p = mcnemar_exact_p(*_pairs(4000, 4300))
    assert 0.0 < p < 1.0


def test_mcnemar_huge_discordant_count_does_not_overflow():
    p = mcnemar_exact_p(*_pairs(50_000, 50_000))
    assert p == 1.0
    assert mcnemar_exact_p(*_pairs(0, 100_000)) == 0.0  # 2**-99999 underflows to 0 in float


def test_mcnemar_rejects_unequal_lengths():
    with pytest.raises(ValueError):
        mcnemar_exact_p([True, False], [True])


# ---------------------------------------------------------------------------------------------------------
# is_binary and verdict
# ---------------------------------------------------------------------------------------------------------


def test_is_binary():
    assert is_binary([0, 1, 1, 0])
    assert is_binary([0.0, 1.0])
    assert is_binary(np.array([True, False]))
    assert not is_binary([0, 0.5, 1])
    assert not is_binary([0, 2])
    assert not is_binary([-1, 0])


@pytest.mark.parametrize(
    ("diff", "lo", "hi"),
    [(0.02, -0.01, 0.05), (0.02, 0.0, 0.04), (0.0, 0.0, 0.0), (-0.01, -0.03, 0.0), (0.3, -1e-9, 0.6)],
)
def test_verdict_no_win_unless_ci_excludes_zero(diff, lo, hi):
    text = verdict(diff, lo, hi, 0.001)
    assert "beats" not in text
    assert "worse" not in text
    assert text.startswith("No significant difference between LSL and baseline")
    assert "includes 0" in text


def test_verdict_beats():
    text = verdict(0.031, 0.0101, 0.052, 0.01, label="MIPRO", baseline="zero-shot")
    assert text == "MIPRO beats zero-shot by +0.031 (95% CI [+0.010, +0.052])"


def test_verdict_beats_but_mcnemar_disagrees():
    text = verdict(0.031, 0.0101, 0.052, 0.08)
    assert text.startswith("LSL beats baseline by +0.031 (95% CI [+0.010, +0.052])")
    assert "McNemar" in text
    assert "does not confirm" in text


def test_verdict_beats_without_p():
    assert "McNemar" not in verdict(0.031, 0.0101, 0.052, None)


@pytest.mark.parametrize(("diff", "lo", "hi"), [(-0.05, -0.08, -0.02), (-0.5, -0.6, -1e-6)])
def test_verdict_worse(diff, lo, hi):
    text = verdict(diff, lo, hi, 0.001)
    assert "worse" in text
    assert "beats" not in text
    assert text.startswith("LSL is worse than baseline")


def test_verdict_confidence_label():
    assert "90% CI" in verdict(0.0, -0.1, 0.1, None, confidence=0.9)


def test_mean_ci95_matches_the_t_interval():
    from lsl_dagster.stats import mean_ci95

    mean, low, high = mean_ci95([0.70, 0.74, 0.72])
    # mean 0.72, sd 0.02, t(2) = 4.303: half width 4.303 * 0.02 / sqrt(3)
    assert mean == pytest.approx(0.72)
    assert high - mean == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert mean - low == pytest.approx(high - mean)
    assert mean_ci95([0.5]) == (0.5, None, None)
    big = mean_ci95([0.0, 1.0] * 50)  # df = 99: close to the normal interval
    assert big[2] - big[0] == pytest.approx(1.984 * 0.5025 / 10, rel=2e-3)
    with pytest.raises(ValueError):
        mean_ci95([])
