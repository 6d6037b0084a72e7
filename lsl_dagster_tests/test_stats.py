import math
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from lsl_dagster.results import stats
from lsl_dagster.results.stats import (
    holm,
    is_binary,
    mcnemar_exact_p,
    paired_bootstrap_ci,
    paired_test,
    verdict,
)

# ---------------------------------------------------------------------------------------------------------
# Reference implementations: slow and obviously correct.
# ---------------------------------------------------------------------------------------------------------


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
    [(2, 0, 0.95), (7, 1, 0.95), (7, 2, 0.9), (500, 3, 0.95), (500, 4, 0.99)],
)
def test_bootstrap_is_scipys_paired_bootstrap(n, seed, confidence):
    # Resampling pairs of scores is resampling their differences: scipy's one-sample bootstrap of b - a
    # with the same generator draws the same indices and must give the same interval.
    data_rng = np.random.default_rng(1000 + seed)
    a = data_rng.normal(size=n)
    b = a + data_rng.normal(0.1, 1.0, size=n)
    got = paired_bootstrap_ci(a, b, n_resamples=1000, confidence=confidence, seed=seed)
    want = sps.bootstrap(
        (b - a,),
        np.mean,
        n_resamples=1000,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    assert got == pytest.approx(((b - a).mean(), want.low, want.high), abs=1e-12, rel=0)


def test_bootstrap_binary_scores_match_scipy():
    data_rng = np.random.default_rng(5)
    a = (data_rng.random(60) < 0.5).astype(float)
    b = (data_rng.random(60) < 0.7).astype(float)
    want = sps.bootstrap(
        (b - a,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(11)
    ).confidence_interval
    assert paired_bootstrap_ci(a, b, n_resamples=2000, seed=11)[1:] == pytest.approx((want.low, want.high))


def test_bootstrap_result_does_not_depend_on_the_batch(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=301), rng.normal(size=301)
    default = paired_bootstrap_ci(a, b, n_resamples=1500, seed=3)
    monkeypatch.setattr(stats, "_BATCH_ENTRIES", 301 * 4 + 7)
    assert stats.batch_size(301) == 4
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
        ([1.0, 0.0], [2.0, 1.0], {"n_resamples": 999}),
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


@pytest.mark.parametrize(("b01", "b10"), [(1, 9), (10, 25), (17, 18), (0, 6), (40, 3)])
def test_mcnemar_matches_statsmodels_exact(b01, b10):
    n00, n11 = 5, 7
    table = [[n00, b01], [b10, n11]]  # rows: a wrong / right; columns: b wrong / right
    assert mcnemar_exact_p(*_pairs(b01, b10, n00=n00, n11=n11)) == pytest.approx(
        mcnemar(table, exact=True).pvalue, rel=1e-12
    )


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
    assert text == "MIPRO beats zero-shot by +0.031 (95% CI [+0.010, +0.052], Holm p=0.01)"


def test_verdict_uses_the_adjusted_p():
    # The CI excludes 0, but after Holm's adjustment the test does not: no claim.
    text = verdict(0.031, 0.0101, 0.052, 0.08)
    assert "beats" not in text
    assert text.startswith("No significant difference between LSL and baseline after Holm adjustment")
    assert "Holm p=0.08" in text


def test_verdict_without_p_claims_nothing():
    text = verdict(0.031, 0.0101, 0.052, None)
    assert "beats" not in text and "no p-value" in text


@pytest.mark.parametrize(("diff", "lo", "hi"), [(-0.05, -0.08, -0.02), (-0.5, -0.6, -1e-6)])
def test_verdict_worse(diff, lo, hi):
    text = verdict(diff, lo, hi, 0.001)
    assert "beats" not in text
    assert text.startswith("LSL is worse than baseline")


def test_verdict_confidence_label():
    assert "90% CI" in verdict(0.0, -0.1, 0.1, None, confidence=0.9)


# ---------------------------------------------------------------------------------------------------------
# Holm, the paired test, intervals across replicates
# ---------------------------------------------------------------------------------------------------------


def test_holm_known_case():
    # Holm's step-down by hand: sorted p (0.005, 0.01, 0.03, 0.04) times (4, 3, 2, 1), made monotone.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04])
    assert holm([None]) == [None]


def test_holm_matches_statsmodels_and_never_lowers_a_p():
    p = np.random.default_rng(3).random(12) ** 3
    adjusted = holm(list(p))
    assert adjusted == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert all(q >= r for q, r in zip(adjusted, p, strict=True))


def test_paired_test_picks_mcnemar_for_binary_and_the_paired_t_otherwise():
    rng = np.random.default_rng(8)
    a, b = (rng.random(80) < 0.4).astype(float), (rng.random(80) < 0.6).astype(float)
    b01, b10 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    assert paired_test(a, b) == ("mcnemar_exact", pytest.approx(sps.binomtest(b01, b01 + b10).pvalue))
    x, y = rng.random(80), rng.random(80)
    assert paired_test(x, y) == ("paired_t", pytest.approx(sps.ttest_rel(y, x).pvalue))
    assert paired_test([0.5, 0.2], [0.5, 0.2]) == ("paired_t", 1.0)


def _campaign_cells(seeds: int, between_sd: float, runs: int, true: float = 0.05, n: int = 100):
    """Simulated campaign cells: per seed, n binary paired differences whose expected value is the
    cell's true difference plus that seed's own shift (normal, sd `between_sd`)."""
    rng = np.random.default_rng(seeds * 1000 + int(between_sd * 100))
    for _ in range(runs):
        cells = []
        for _ in range(seeds):
            shift = true + rng.normal(0, between_sd)
            a, b = rng.random(n) < 0.6, rng.random(n) < 0.6 + shift
            cells.append(b.astype(float) - a.astype(float))
        yield cells


def _coverage(seeds: int, between_sd: float, runs: int = 300, true: float = 0.05) -> float:
    hits = 0
    for run, cells in enumerate(_campaign_cells(seeds, between_sd, runs, true)):
        _, low, high, _ = stats.cluster_bootstrap(cells, n_resamples=1000, seed=run)
        hits += low <= true <= high
    return hits / runs


def test_the_cluster_bootstrap_covers_the_true_difference_with_few_seeds():
    # Measured at 300 simulated cells each (100 binary examples per seed, true difference 0.05): 5 seeds
    # with a between-seed sd of 0.03 cover 0.97-0.99 (the two-stage bootstrap is a little conservative);
    # 2 seeds with sd 0.03 cover ~0.96; 2 seeds whose shifts (sd 0.10) dwarf the examples' noise cover
    # only ~0.87, as the README says: two seeds are too few to see that variance.
    assert 0.94 <= _coverage(5, 0.03) <= 0.995
    assert 0.93 <= _coverage(2, 0.03) <= 0.995
    assert _coverage(2, 0.10) < 0.93


def test_the_cluster_bootstrap_stays_in_range_and_is_narrower_than_a_t_interval_over_two_seeds():
    extreme = [np.ones(50), -np.ones(50)]
    mean, low, high, p = stats.cluster_bootstrap(extreme)
    assert mean == 0.0 and -1.0 <= low < 0 < high <= 1.0 and p > 0.5
    # Two seeds of 300 paired examples: the df = 1 t-interval over their two means is far wider than
    # pooling the examples.
    rng = np.random.default_rng(3)
    seeds = [(rng.random(300) < 0.08).astype(float) - (rng.random(300) < 0.03) for _ in range(2)]
    means = [s.mean() for s in seeds]
    t_low, t_high = sps.t.interval(0.95, 1, loc=np.mean(means), scale=sps.sem(means))
    mean, low, high, p = stats.cluster_bootstrap(seeds)
    assert mean == pytest.approx(np.mean(means))
    assert -1.0 <= low < mean < high <= 1.0
    assert high - low < 0.2 < t_high - t_low
    assert p < 0.05  # ~+0.05 over 600 examples, and both seeds agree


def test_the_cluster_bootstrap_of_one_cluster_is_scipys_percentile_bootstrap():
    values = np.random.default_rng(5).random(200)
    _, low, high, _ = stats.cluster_bootstrap([values], n_resamples=4000, seed=1)
    reference = sps.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", rng=2)
    assert low == pytest.approx(reference.confidence_interval.low, abs=0.006)
    assert high == pytest.approx(reference.confidence_interval.high, abs=0.006)


def test_the_cluster_bootstrap_p_is_small_only_for_a_real_difference_and_refuses_bad_input():
    rng = np.random.default_rng(9)
    null = [rng.choice([-1.0, 0.0, 1.0], size=200) for _ in range(3)]
    assert stats.cluster_bootstrap(null)[3] > 0.05
    shifted = [np.clip(c + (rng.random(200) < 0.3), -1, 1) for c in null]
    assert stats.cluster_bootstrap(shifted)[3] < 0.01
    for bad in ([], [np.array([])], [np.array([0.1, np.nan])]):
        with pytest.raises(ValueError):
            stats.cluster_bootstrap(bad)


def _mcnemar_power(n: int, discordance: float, delta: float, alpha: float, runs: int = 2000) -> float:
    """The share of simulated paired 0/1 evaluations the exact McNemar test calls different at alpha."""
    rng = np.random.default_rng(11)
    up, down = (discordance + delta) / 2, (discordance - delta) / 2  # b right and a wrong; the reverse
    found = 0
    for _ in range(runs):
        u = rng.random(n)
        a = np.where(u < down, 1.0, 0.0)  # discordant for a: a right, b wrong
        b = np.where((u >= down) & (u < down + up), 1.0, 0.0)  # discordant for b
        found += stats.paired_test(a, b)[1] < alpha
    return found / runs


def test_the_detectable_difference_is_found_with_the_stated_power_by_the_test_the_comparison_runs():
    alpha = 0.05 / 3
    delta = stats.detectable_difference(300, 0.2, alpha)
    assert 0.05 < delta < 0.12
    # Exact McNemar is a little more conservative than the normal approximation it is planned with.
    assert 0.72 <= _mcnemar_power(300, 0.2, delta, alpha) <= 0.88
    assert _mcnemar_power(300, 0.2, delta / 2, alpha) < 0.4
    assert stats.detectable_difference(1200, 0.2, alpha) == pytest.approx(delta / 2, rel=0.05)
    # 8 examples with 20% discordant cannot differ by more than 0.2, which they cannot detect.
    assert stats.detectable_difference(8, 0.2, 0.05 / 6) is None
    for bad in ((1, 0.2, alpha), (300, 0.0, alpha), (300, 0.2, 1.0)):
        with pytest.raises(ValueError):
            stats.detectable_difference(*bad)
