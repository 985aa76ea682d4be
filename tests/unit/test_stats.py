"""alerts.stats against scipy: every tail, test and interval the detectors rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from scipy import stats as sp

from alerts.stats import (
    CHI2_1_MEDIAN,
    MAD_TO_SIGMA,
    binom_ge,
    binom_le,
    hypergeom_ge,
    hypergeom_le,
    mad_sigma,
    median,
    norm_cdf,
    norm_ppf,
    norm_sf,
    overdispersion,
    poisson_ge,
    poisson_rate_test,
    pooled_z,
    rate_ratio_interval,
    two_proportion_test,
    wilson_interval,
)

FAST = settings(max_examples=150, deadline=None)


def close(ours: float, theirs: float, rel: float = 1e-7, floor: float = 1e-300) -> bool:
    """Relative agreement, down to probabilities scipy can still represent."""
    if theirs < floor:
        return ours < 1e-290
    return math.isclose(ours, theirs, rel_tol=rel, abs_tol=1e-15)


# -- the normal distribution ----------------------------------------------------------------------------


@FAST
@given(st.floats(-37, 37))
def test_norm_cdf_and_sf_match_scipy_in_both_tails(z: float) -> None:
    assert close(norm_cdf(z), sp.norm.cdf(z), rel=1e-12)
    assert close(norm_sf(z), sp.norm.sf(z), rel=1e-12)


@FAST
@given(st.floats(1e-300, 1 - 1e-16))
def test_norm_ppf_matches_scipy(p: float) -> None:
    assert math.isclose(norm_ppf(p), sp.norm.ppf(p), rel_tol=1e-9, abs_tol=1e-12)


def test_constants_match_scipy() -> None:
    assert math.isclose(MAD_TO_SIGMA, 1 / sp.norm.ppf(0.75), rel_tol=1e-12)
    assert math.isclose(CHI2_1_MEDIAN, sp.chi2.median(1), rel_tol=1e-12)


# -- binomial and hypergeometric tails --------------------------------------------------------------


@FAST
@given(
    n=st.integers(0, 3000),
    p=st.floats(0, 1),
    k_share=st.floats(-0.1, 1.1),
)
@example(n=1_000_000, p=0.02, k_share=0.0185)  # a day of impressions: far tail, long support
@example(n=10, p=0.0, k_share=0.5)
@example(n=10, p=1.0, k_share=0.5)
def test_binomial_tails_match_scipy(n: int, p: float, k_share: float) -> None:
    k = round(k_share * n)
    assert close(binom_le(k, n, p), reference_tail(range(0, k + 1), n, p, sp.binom.cdf(k, n, p)), rel=1e-7)
    assert close(
        binom_ge(k, n, p), reference_tail(range(max(k, 0), n + 1), n, p, sp.binom.sf(k - 1, n, p)), rel=1e-7
    )


@FAST
@given(mean=st.floats(0, 5000), k_share=st.floats(-0.1, 3.0))
@example(mean=5.0, k_share=14 / 5)  # a quiet channel's spend window: 14 clicks' worth where 5 are usual
@example(mean=0.0, k_share=1.0)
def test_poisson_upper_tail_matches_scipy(mean: float, k_share: float) -> None:
    k = round(k_share * max(mean, 1.0))
    assert close(poisson_ge(k, mean), sp.poisson.sf(k - 1, mean), rel=1e-7)


def reference_tail(ks: range, n: int, p: float, scipy_value: float) -> float:
    """scipy's tail, or, where scipy underflows to (near) zero, the exact sum of the pmf in log space: scipy's
    cdf returns 0 for tails around 1e-278 (n=292, p=0.9453125, k=36) that double precision still holds."""
    if scipy_value >= 1e-250 or not ks or p in (0.0, 1.0):
        return scipy_value
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
        for i in ks
        if 0 <= i <= n
    ]
    if not logs:
        return scipy_value
    top = max(logs)
    return math.exp(top + math.log(sum(math.exp(x - top) for x in logs)))


def test_binomial_tail_where_scipy_underflows() -> None:
    """scipy 1.x gives 0.0 here; the tail is exp(-639.59), the sum of the pmf in log space."""
    assert close(binom_le(36, 292, 0.9453125), math.exp(-639.5905067007486), rel=1e-9)


@FAST
@given(
    total=st.integers(1, 4000),
    successes_share=st.floats(0, 1),
    draws_share=st.floats(0, 1),
    k_share=st.floats(-0.1, 1.1),
)
@example(total=1_200_000, successes_share=0.02, draws_share=1 / 30, k_share=0.5)
def test_hypergeometric_tails_match_scipy(
    total: int, successes_share: float, draws_share: float, k_share: float
) -> None:
    successes = int(successes_share * total)
    draws = int(draws_share * total)
    k = round(k_share * min(successes, draws))
    assert close(
        hypergeom_le(k, total, successes, draws), sp.hypergeom.cdf(k, total, successes, draws), rel=1e-6
    )
    assert close(
        hypergeom_ge(k, total, successes, draws), sp.hypergeom.sf(k - 1, total, successes, draws), rel=1e-6
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: binom_le(1, -1, 0.5),
        lambda: binom_le(1, 10, 1.5),
        lambda: binom_ge(1, 10, -0.1),
        lambda: hypergeom_le(1, 10, 11, 2),
        lambda: hypergeom_ge(1, 10, 2, 11),
        lambda: hypergeom_le(1, 10, 2.5, 2),  # type: ignore[arg-type]
    ],
)
def test_distributions_reject_impossible_parameters(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call()


# -- the two-proportion test ------------------------------------------------------------------------


@st.composite
def two_samples(draw: st.DrawFn, largest: int = 200_000) -> tuple[int, int, int, int]:
    n1 = draw(st.integers(1, largest))
    n2 = draw(st.integers(1, largest))
    x1 = draw(st.integers(0, n1))
    x2 = draw(st.integers(0, n2))
    return x1, n1, x2, n2


@FAST
@given(two_samples())
def test_pooled_z_squared_is_the_uncorrected_chi_square(sample: tuple[int, int, int, int]) -> None:
    x1, n1, x2, n2 = sample
    z = pooled_z(x1, n1, x2, n2)
    assume(z is not None)
    assert z is not None
    table = np.array([[x1, n1 - x1], [x2, n2 - x2]])
    chi2, _, _, _ = sp.chi2_contingency(table, correction=False)
    assert math.isclose(z * z, chi2, rel_tol=1e-7, abs_tol=1e-9)


@FAST
@given(two_samples(), st.sampled_from(["less", "greater"]))
def test_two_proportion_test_agrees_with_scipy_on_either_path(
    sample: tuple[int, int, int, int], side: str
) -> None:
    x1, n1, x2, n2 = sample
    result = two_proportion_test(x1, n1, x2, n2, side)  # type: ignore[arg-type]
    if result.method.startswith("Fisher"):
        table = np.array([[x1, n1 - x1], [x2, n2 - x2]])
        expected = sp.fisher_exact(table, alternative=side).pvalue
        assert close(result.p_value, expected, rel=1e-6)
    else:
        assert result.z is not None
        expected = sp.norm.cdf(result.z) if side == "less" else sp.norm.sf(result.z)
        assert close(result.p_value, expected, rel=1e-10)
        # The z path is only taken where every expected cell holds at least 5 events.
        table = np.array([[x1, n1 - x1], [x2, n2 - x2]])
        assert sp.contingency.expected_freq(table).min() >= 5 - 1e-9


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "method", "significant"),
    [
        (100, 10_000, 4_800, 240_000, "z-test", True),  # CTR 2 % → 1 % at 10k impressions
        (190, 10_000, 4_800, 240_000, "z-test", False),  # 2 % → 1.9 %: noise
        (0, 40, 480, 24_000, "Fisher", False),  # 40 impressions: no evidence either way
        (0, 1_000, 480, 24_000, "z-test", True),  # 19 clicks expected, none came
        (0, 200, 480, 24_000, "Fisher", False),  # 4 expected, none came: p ≈ 0.02, not enough
        (0, 10, 0, 100, "Fisher", False),  # nothing ever: p = 1
        (10, 10, 100, 100, "Fisher", False),  # everything always: p = 1
    ],
)
def test_two_proportion_test_table(
    x1: int, n1: int, x2: int, n2: int, method: str, significant: bool
) -> None:
    result = two_proportion_test(x1, n1, x2, n2, "less")
    assert method in result.method
    assert (result.p_value < 0.001) is significant
    assert 0.0 <= result.p_value <= 1.0


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"), [(1, 0, 1, 10), (11, 10, 1, 10), (1, 10, 1, 0), (-1, 10, 1, 10)]
)
def test_two_proportion_test_rejects_impossible_counts(x1: int, n1: int, x2: int, n2: int) -> None:
    with pytest.raises(ValueError):
        two_proportion_test(x1, n1, x2, n2)


# -- the Poisson rate comparison --------------------------------------------------------------------


@FAST
@given(
    x1=st.integers(0, 5_000),
    x2=st.integers(0, 50_000),
    e1=st.floats(0.01, 1e6),
    e2=st.floats(0.01, 1e7),
    side=st.sampled_from(["less", "greater"]),
)
def test_poisson_rate_test_is_scipys_conditional_binomial_test(
    x1: int, x2: int, e1: float, e2: float, side: str
) -> None:
    result = poisson_rate_test(x1, e1, x2, e2, side)  # type: ignore[arg-type]
    assume(x1 + x2 > 0)
    expected = sp.binomtest(x1, x1 + x2, e1 / (e1 + e2), alternative=side).pvalue
    assert close(result.p_value, expected, rel=1e-6)


def test_poisson_rate_test_edge_cases() -> None:
    assert poisson_rate_test(0, 1.0, 0, 1.0).p_value == 1.0
    assert poisson_rate_test(0, 100.0, 1000, 100.0).p_value < 1e-100  # a rate that vanished
    with pytest.raises(ValueError):
        poisson_rate_test(1, 0.0, 1, 1.0)
    with pytest.raises(ValueError):
        poisson_rate_test(1, 1.0, 1, math.inf)


# -- intervals --------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(1, 1_000_000), share=st.floats(0, 1), confidence=st.floats(0.5, 0.9999))
def test_wilson_interval_matches_scipy(n: int, share: float, confidence: float) -> None:
    x = int(share * n)
    low, high = wilson_interval(x, n, confidence)
    theirs = sp.binomtest(x, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert math.isclose(low, theirs.low, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(high, theirs.high, rel_tol=1e-9, abs_tol=1e-12)
    assert low <= x / n <= high


@FAST
@given(
    x1=st.integers(0, 10_000),
    x2=st.integers(1, 10_000),
    e1=st.floats(0.1, 1e6),
    e2=st.floats(0.1, 1e6),
    confidence=st.floats(0.5, 0.999),
)
def test_rate_ratio_interval_brackets_the_estimate_and_widens_with_confidence(
    x1: int, x2: int, e1: float, e2: float, confidence: float
) -> None:
    low, high = rate_ratio_interval(x1, e1, x2, e2, confidence)
    estimate = (x1 / e1) / (x2 / e2)
    assert low <= estimate * (1 + 1e-9) and estimate <= high * (1 + 1e-9)
    wider_low, wider_high = rate_ratio_interval(x1, e1, x2, e2, min(0.9999, confidence + 0.0005))
    assert wider_low <= low * (1 + 1e-12) and wider_high >= high * (1 - 1e-12)


def test_rate_ratio_interval_without_baseline_events_is_unbounded() -> None:
    assert rate_ratio_interval(5, 1.0, 0, 1.0)[1] == math.inf
    assert rate_ratio_interval(0, 1.0, 0, 1.0) == (0.0, math.inf)


# -- robust location, scale and dispersion ----------------------------------------------------------


@FAST
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60))
def test_median_and_mad_match_numpy_and_scipy(values: list[float]) -> None:
    assert math.isclose(median(values), float(np.median(values)), rel_tol=1e-12, abs_tol=1e-9)
    theirs = sp.median_abs_deviation(values, scale="normal")
    assert math.isclose(mad_sigma(values), theirs, rel_tol=1e-9, abs_tol=1e-6)


def test_median_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        median([])


def test_overdispersion_is_near_one_for_binomial_counts_and_grows_with_extra_noise() -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(5_000, 50_000, size=200)
    binomial = rng.binomial(n, 0.02)
    noisy = rng.binomial(n, 0.02 * np.exp(rng.normal(0, 0.3, size=200)))
    variance = n * 0.02 * 0.98
    plain = overdispersion(binomial.tolist(), (n * 0.02).tolist(), variance.tolist())
    extra = overdispersion(noisy.tolist(), (n * 0.02).tolist(), variance.tolist())
    assert plain < 1.3
    assert extra > 5.0


def test_overdispersion_ignores_one_anomalous_window_and_needs_three() -> None:
    expected = [200.0] * 24
    observed = [200.0 + (-9 if i % 2 else 9) for i in range(23)] + [40.0]  # typical noise, one collapse
    assert overdispersion(observed, expected, expected) < 1.2
    assert overdispersion([0.0, 400.0], [200.0, 200.0], [200.0, 200.0]) == 1.0
