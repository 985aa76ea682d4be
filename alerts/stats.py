"""The significance tests behind the anomaly detectors. Pure: the standard library only (``math``).

scipy is deliberately not a runtime dependency (it is large and the worker needs a handful of tail
probabilities); the test suite holds every function here to scipy's answer.

Conventions: counts are non-negative integers, exposures positive floats; one-sided tests take the
*current* window first and the *baseline* second, and ``alternative`` says what the alert is about
(``"less"``: the current rate is lower, ``"greater"``: higher). A p-value is a probability under the
null hypothesis of "no change"; the detectors compare it with their ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, Literal

Alternative = Literal["less", "greater"]

#: 1.4826 · MAD estimates the standard deviation of a normal sample (1 / Φ⁻¹(3/4)).
MAD_TO_SIGMA: Final = 1.482602218505602
#: The median of the χ² distribution with one degree of freedom: the median squared Pearson residual
#: of counts that follow their model exactly.
CHI2_1_MEDIAN: Final = 0.454936423119572
#: A cell of a 2×2 table expected to hold fewer events than this makes the normal approximation
#: unreliable (the textbook rule of 5); the exact test is used instead.
MIN_EXPECTED_CELL: Final = 5.0
# Tail sums stop once a term adds less than this share of the running total.
_TAIL_EPS: Final = 1e-17
_STANDARD_NORMAL: Final = NormalDist()


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of a significance test: the p-value, the z statistic where one is defined, how."""

    __test__ = False  # not a pytest test class, despite the name

    p_value: float
    z: float | None
    method: str


# -- the normal distribution ----------------------------------------------------------------------


def norm_cdf(z: float) -> float:
    """Φ(z), accurate in the far lower tail too (``erfc`` does not cancel)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def norm_sf(z: float) -> float:
    """1 − Φ(z), accurate in the far upper tail."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def norm_ppf(p: float) -> float:
    """Φ⁻¹(p) for 0 < p < 1 (the standard library's Wichura AS241, exact to double precision)."""
    return _STANDARD_NORMAL.inv_cdf(p)


# -- discrete tails ---------------------------------------------------------------------------------


def _tail_sum(log_first: float, first: int, last: int, step: int, ratio: Callable[[int], float]) -> float:
    """Σ pmf(k) for k = first, first+step, … up to ``last``, where the terms only shrink.

    ``ratio(k)`` is pmf(k + step) / pmf(k). Summing relative to the first term keeps the sum exact when
    the first term underflows in linear space; stopping once terms are negligible keeps it fast (a
    unimodal tail decays like a Gaussian, so a few standard deviations of terms suffice).
    """
    total = 1.0
    term = 1.0
    k = first
    while k != last:
        term *= ratio(k)
        k += step
        total += term
        if term < _TAIL_EPS * total:
            break
    return math.exp(log_first + math.log(total))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _check_count(name: str, value: int) -> None:
    if value < 0 or int(value) != value:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def binom_le(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p)."""
    _check_count("n", n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if k < 0:
        return 0.0
    if k >= n or p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    mode = math.floor((n + 1) * p)
    if k > mode:
        # Most of the mass is at or below k: sum the short, shrinking upper tail instead.
        return max(0.0, 1.0 - binom_ge(k + 1, n, p))
    odds = (1.0 - p) / p
    log_first = _log_choose(n, k) + k * math.log(p) + (n - k) * math.log1p(-p)
    return min(1.0, _tail_sum(log_first, k, 0, -1, lambda j: j / (n - j + 1) * odds))


def binom_ge(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    _check_count("n", n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if k <= 0:
        return 1.0
    if k > n or p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    mode = math.floor((n + 1) * p)
    if k <= mode:
        return max(0.0, 1.0 - binom_le(k - 1, n, p))
    odds = p / (1.0 - p)
    log_first = _log_choose(n, k) + k * math.log(p) + (n - k) * math.log1p(-p)
    return min(1.0, _tail_sum(log_first, k, n, 1, lambda j: (n - j) / (j + 1) * odds))


def poisson_ge(k: int, mean: float) -> float:
    """P(X ≥ k) for X ~ Poisson(``mean``)."""
    if not mean >= 0 or not math.isfinite(mean):
        raise ValueError(f"mean must be finite and >= 0, got {mean!r}")
    if k <= 0:
        return 1.0
    if mean == 0:
        return 0.0
    if k <= mean:
        # Most of the mass is at or above k: one minus the short lower tail.
        log_last = (k - 1) * math.log(mean) - mean - math.lgamma(k)
        lower = _tail_sum(log_last, k - 1, 0, -1, lambda j: j / mean)
        return max(0.0, 1.0 - lower)
    log_first = k * math.log(mean) - mean - math.lgamma(k + 1)
    return min(1.0, _tail_sum(log_first, k, -1, 1, lambda j: mean / (j + 1)))


def hypergeom_le(k: int, total: int, successes: int, draws: int) -> float:
    """P(X ≤ k) for X ~ Hypergeometric: ``draws`` from ``total`` items of which ``successes`` are marked."""
    for name, value in (("total", total), ("successes", successes), ("draws", draws)):
        _check_count(name, value)
    if successes > total or draws > total:
        raise ValueError("successes and draws cannot exceed total")
    low, high = max(0, draws - (total - successes)), min(draws, successes)
    if k < low:
        return 0.0
    if k >= high:
        return 1.0
    mode = math.floor((draws + 1) * (successes + 1) / (total + 2))
    if k > mode:
        return max(0.0, 1.0 - hypergeom_ge(k + 1, total, successes, draws))
    failures = total - successes
    log_first = _log_choose(successes, k) + _log_choose(failures, draws - k) - _log_choose(total, draws)

    def down(j: int) -> float:  # pmf(j - 1) / pmf(j)
        return j * (failures - draws + j) / ((successes - j + 1) * (draws - j + 1))

    return min(1.0, _tail_sum(log_first, k, low, -1, down))


def hypergeom_ge(k: int, total: int, successes: int, draws: int) -> float:
    """P(X ≥ k) for the hypergeometric distribution of :func:`hypergeom_le`."""
    for name, value in (("total", total), ("successes", successes), ("draws", draws)):
        _check_count(name, value)
    if successes > total or draws > total:
        raise ValueError("successes and draws cannot exceed total")
    low, high = max(0, draws - (total - successes)), min(draws, successes)
    if k <= low:
        return 1.0
    if k > high:
        return 0.0
    mode = math.floor((draws + 1) * (successes + 1) / (total + 2))
    if k <= mode:
        return max(0.0, 1.0 - hypergeom_le(k - 1, total, successes, draws))
    failures = total - successes
    log_first = _log_choose(successes, k) + _log_choose(failures, draws - k) - _log_choose(total, draws)

    def up(j: int) -> float:  # pmf(j + 1) / pmf(j)
        return (successes - j) * (draws - j) / ((j + 1) * (failures - draws + j + 1))

    return min(1.0, _tail_sum(log_first, k, high, 1, up))


# -- tests ------------------------------------------------------------------------------------------


def _check_proportion(x: int, n: int, what: str) -> None:
    _check_count(f"{what} successes", x)
    _check_count(f"{what} trials", n)
    if n == 0:
        raise ValueError(f"{what} trials must be positive: a proportion of nothing is no data")
    if x > n:
        raise ValueError(f"{what} successes ({x}) exceed its trials ({n})")


def pooled_z(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """The pooled two-proportion z statistic (p̂₁ − p̂₂) / SE under H₀: p₁ = p₂; ``None`` if SE is 0."""
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if variance <= 0.0:
        return None
    return (x1 / n1 - x2 / n2) / math.sqrt(variance)


def two_proportion_test(
    x1: int,
    n1: int,
    x2: int,
    n2: int,
    alternative: Alternative = "less",
    *,
    min_expected: float = MIN_EXPECTED_CELL,
) -> TestResult:
    """One-sided test of H₀: p₁ = p₂ against p₁ < p₂ (``"less"``) or p₁ > p₂ (``"greater"``).

    Group 1 is the current window (``x1`` successes of ``n1``), group 2 the baseline. The pooled z-test
    is used when every cell of the 2×2 table is expected to hold at least ``min_expected`` events;
    otherwise the normal approximation is poor (it can be far too optimistic for a handful of clicks)
    and Fisher's exact test, conditional on the margins, is used instead.
    """
    _check_proportion(x1, n1, "current")
    _check_proportion(x2, n2, "baseline")
    z = pooled_z(x1, n1, x2, n2)
    successes, total = x1 + x2, n1 + n2
    failures = total - successes
    smallest_cell = min(n1, n2) * min(successes, failures) / total
    if z is not None and smallest_cell >= min_expected:
        p_value = norm_cdf(z) if alternative == "less" else norm_sf(z)
        return TestResult(p_value, z, "two-proportion z-test (pooled)")
    if alternative == "less":
        p_value = hypergeom_le(x1, total, successes, n1)
    else:
        p_value = hypergeom_ge(x1, total, successes, n1)
    return TestResult(p_value, z, "Fisher exact test")


def poisson_rate_test(
    x1: int, exposure1: float, x2: int, exposure2: float, alternative: Alternative = "less"
) -> TestResult:
    """One-sided exact test of H₀: λ₁ = λ₂ for two Poisson counts with exposures (events per unit).

    Conditional on the total x₁ + x₂, the current count is Binomial(x₁ + x₂, e₁ / (e₁ + e₂)) under H₀,
    whatever the common rate (Przyborowski & Wilenski): an exact test without a normal approximation
    or a nuisance parameter. Exposures can be anything the events scale with: impressions, seconds,
    currency units of spend.
    """
    _check_count("current count", x1)
    _check_count("baseline count", x2)
    if not (exposure1 > 0 and exposure2 > 0 and math.isfinite(exposure1) and math.isfinite(exposure2)):
        raise ValueError("exposures must be positive and finite")
    n = x1 + x2
    share = exposure1 / (exposure1 + exposure2)
    if n == 0:
        return TestResult(1.0, None, "conditional binomial test (exact)")
    z = (x1 - n * share) / math.sqrt(n * share * (1.0 - share))
    p_value = binom_le(x1, n, share) if alternative == "less" else binom_ge(x1, n, share)
    return TestResult(p_value, z, "conditional binomial test (exact)")


# -- intervals --------------------------------------------------------------------------------------


def wilson_interval(x: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``x / n`` (two-sided, ``confidence`` coverage).

    Unlike the textbook p̂ ± z·SE, it stays inside [0, 1] and keeps its coverage for a handful of
    events or a proportion near 0, which is where CTR and CVR live.
    """
    _check_proportion(x, n, "interval")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    z = norm_ppf(0.5 + confidence / 2.0)
    z2 = z * z
    centre = (x + z2 / 2.0) / (n + z2)
    half = z / (n + z2) * math.sqrt(x * (n - x) / n + z2 / 4.0)
    # At x = 0 (or n) the bound is exactly 0 (or 1); rounding must not invent a positive floor.
    low = 0.0 if x == 0 else max(0.0, centre - half)
    high = 1.0 if x == n else min(1.0, centre + half)
    return low, high


def rate_ratio_interval(
    x1: int, exposure1: float, x2: int, exposure2: float, confidence: float = 0.95
) -> tuple[float, float]:
    """An interval for λ₁ / λ₂ of two Poisson rates: the Wilson interval of the conditional share.

    Given the total, x₁ is binomial with share π = λ₁e₁ / (λ₁e₁ + λ₂e₂), a monotone function of the
    ratio; mapping the share's interval through it gives the ratio's. The upper end is ``inf`` when
    the baseline count is 0.
    """
    if x1 + x2 == 0:
        return 0.0, math.inf
    low, high = wilson_interval(x1, x1 + x2, confidence)
    scale = exposure2 / exposure1

    def ratio(share: float) -> float:
        return math.inf if share >= 1.0 else share / (1.0 - share) * scale

    return ratio(low), ratio(high)


# -- robust location and scale ----------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2.0


def mad_sigma(values: Sequence[float], centre: float | None = None) -> float:
    """1.4826 × the median absolute deviation: a standard deviation that outliers cannot inflate."""
    middle = median(values) if centre is None else centre
    return MAD_TO_SIGMA * median([abs(v - middle) for v in values])


def overdispersion(observed: Sequence[float], expected: Sequence[float], variance: Sequence[float]) -> float:
    """How much more the counts of a few windows vary than their model says: a factor ≥ 1.

    The median squared Pearson residual (o − e)² / v over the windows, divided by its value for
    counts that follow the model (the median of χ²₁). Real traffic is over-dispersed — CTR moves with
    the hour, the placement mix, the audience — and a test that assumes pure binomial noise pages on
    those moves. Dividing counts by this factor before an exact test (the design-effect correction
    of Rao & Scott) widens the test to the noise actually seen. The median, not the mean, so that one
    anomalous window in the baseline does not mask the next one. Fewer than 3 usable windows: 1.
    """
    squares = [(o - e) ** 2 / v for o, e, v in zip(observed, expected, variance, strict=True) if v > 0]
    if len(squares) < 3:
        return 1.0
    return max(1.0, median(squares) / CHI2_1_MEDIAN)
