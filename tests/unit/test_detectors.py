"""alerts.detectors: table-driven cases per detector, hypothesis properties, and seeded simulations of
realistic traffic (false alerts on stationary traffic, first-window detection of a true 50 % CTR drop)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.detectors import (
    Detectors,
    DropToZero,
    Observation,
    RatioDrop,
    RoiDrop,
    SpendSurge,
    Subject,
    baseline_of,
)
from alerts.model import Finding
from alerts.wording import DAY_S, duration_text, p_text, span_text, volume_text

HOUR = 3600
DOUYIN = Subject("douyin", None, "1h", UTC)
T0 = 1_700_000_000 - 1_700_000_000 % DAY_S  # a UTC midnight


def window(index: int, **counts: float) -> Observation:
    """Hourly window number ``index`` after T0 with the given counts (the rest 0)."""
    return Observation(T0 + index * HOUR, T0 + (index + 1) * HOUR, counts)


def steady(
    hours: int = 24,
    *,
    impressions: float = 20_000,
    ctr: float = 0.02,
    cvr: float = 0.05,
    aov: float = 300.0,
    cpc: float = 0.5,
    wobble: float = 0.0,
) -> list[Observation]:
    """A deterministic baseline: the same funnel every hour (± ``wobble``, alternating, on impressions)."""
    rows = []
    for h in range(hours):
        imp = round(impressions * (1 + (wobble if h % 2 else -wobble)))
        clicks = round(imp * ctr)
        orders = round(clicks * cvr)
        rows.append(
            window(
                h,
                impressions=imp,
                clicks=clicks,
                visits=round(clicks * 0.8),
                carts=round(clicks * 0.2),
                orders=orders,
                gmv=orders * aov,
                spend=clicks * cpc,
            )
        )
    return rows


def then(history: list[Observation], **counts: float) -> list[Observation]:
    """``history`` followed by one more hour with ``counts``."""
    return [*history, window(len(history), **counts)]


def funnel(
    impressions: float, ctr: float, cvr: float = 0.05, aov: float = 300.0, cpc: float = 0.5
) -> dict[str, float]:
    clicks = round(impressions * ctr)
    orders = round(clicks * cvr)
    return {
        "impressions": impressions,
        "clicks": clicks,
        "visits": round(clicks * 0.8),
        "carts": round(clicks * 0.2),
        "orders": orders,
        "gmv": orders * aov,
        "spend": clicks * cpc,
    }


# -- wording --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "value", "text"),
    [
        (span_text, 600, "10 min"),
        (span_text, 3600, "hour"),
        (span_text, 7200, "2 h"),
        (span_text, DAY_S, "day"),
        (duration_text, 3 * HOUR, "3 h"),
        (duration_text, 2700, "45 min"),
        (volume_text, 38_412, "38k"),
        (volume_text, 1_234_567, "1.2M"),
        (volume_text, 1_500, "1.5k"),
        (volume_text, 840, "840"),
        (p_text, 0.0004, "p < 0.001"),
        (p_text, 0.00002, "p < 0.0001"),
        (p_text, 0.0123, "p = 0.012"),
    ],
)
def test_wording(function, value: float, text: str) -> None:  # type: ignore[no-untyped-def]
    assert function(value) == text


def test_baseline_takes_recent_windows_and_the_same_hour_of_earlier_days_once() -> None:
    history = steady(24 * 3 + 1)
    baseline = baseline_of(history, 5, 7)
    current = history[-1]
    assert [o.start_s for o in baseline.recent] == [current.start_s - k * HOUR for k in range(5, 0, -1)]
    assert [o.start_s for o in baseline.seasonal] == [current.start_s - d * DAY_S for d in (1, 2, 3)]
    assert len(baseline.windows) == 8
    # A gap in the history does not shift the seasonal windows onto another hour.
    holed = [o for o in history if o.start_s != current.start_s - 2 * DAY_S]
    assert [o.start_s for o in baseline_of(holed, 5, 7).seasonal] == [
        current.start_s - d * DAY_S for d in (1, 3)
    ]


# -- RatioDrop ------------------------------------------------------------------------------------------

BASE = steady(24)


@pytest.mark.parametrize(
    ("case", "history", "metric", "fires", "severity"),
    [
        ("CTR halves at 20k impressions", then(BASE, **funnel(20_000, 0.01)), "ctr", True, "warning"),
        ("CTR falls to zero", then(BASE, **funnel(20_000, 0.0)), "ctr", True, "critical"),
        (
            "CTR -10 % on a million impressions: significant, not big",
            then(BASE, **funnel(1_000_000, 0.018)),
            "ctr",
            False,
            None,
        ),
        (
            "CTR -45 % on 2M impressions: tightly measured below the 50 % line",
            then(BASE, **funnel(2_000_000, 0.011)),
            "ctr",
            False,
            None,
        ),
        ("40 impressions, no clicks", then(BASE, impressions=40), "ctr", False, None),
        ("no impressions: CTR is no data", then(BASE, clicks=0), "ctr", False, None),
        ("CTR rises", then(BASE, **funnel(20_000, 0.04)), "ctr", False, None),
        ("baseline never clicked", then(steady(24, ctr=0.0), **funnel(20_000, 0.0)), "ctr", False, None),
        ("two baseline windows are too few", then(steady(2), **funnel(20_000, 0.0)), "ctr", False, None),
        ("CVR halves on 4k clicks", then(BASE, **funnel(200_000, 0.02, cvr=0.025)), "cvr", True, "warning"),
        (
            "CVR halves on 100 clicks: 5 orders expected",
            then(BASE, **funnel(5_000, 0.02, cvr=0.025)),
            "cvr",
            False,
            None,
        ),
        (
            "orders without clicks: the Poisson path",
            then(steady(24, cvr=2.0), impressions=20_000, clicks=20, orders=2),
            "cvr",
            True,
            "critical",
        ),
    ],
)
def test_ratio_drop_table(
    case: str, history: list[Observation], metric: str, fires: bool, severity: str | None
) -> None:
    finding = RatioDrop(metric)(history, DOUYIN)  # type: ignore[arg-type]
    assert (finding is not None) is fires, case
    if finding is not None:
        assert finding.severity == severity
        assert finding.kind == "anomaly" and finding.metric == metric
        assert finding.fingerprint == f"anomaly:{metric}:douyin:-"
        assert finding.evidence["p_value"] < 0.001


def test_ratio_drop_explains_itself() -> None:
    finding = RatioDrop("ctr")(then(BASE, **funnel(38_000, 0.0096)), DOUYIN)
    assert finding is not None
    assert finding.summary == "CTR fell 52 % in the last hour (2.00 % → 0.96 %, 38k impressions, p < 0.0001)"
    assert "creatives" in finding.description and "24 windows" in finding.description
    assert finding.value == pytest.approx(0.0096, rel=1e-3)
    assert finding.baseline == pytest.approx(0.02)
    assert finding.threshold == pytest.approx(0.01)
    assert finding.change_pct == pytest.approx(-52, abs=0.5)
    evidence = finding.evidence
    assert (evidence["clicks"], evidence["impressions"]) == (365, 38_000)
    assert (evidence["baseline_clicks"], evidence["baseline_impressions"]) == (9_600, 480_000)
    assert evidence["z"] < -10
    low, high = evidence["interval"]
    assert low < 0.0096 < high
    assert finding.window_start == "2023-11-15T00:00:00+00:00"
    assert finding.window_end == "2023-11-15T01:00:00+00:00"


def test_ratio_drop_widens_its_test_to_the_baselines_over_dispersion() -> None:
    """A channel whose hourly CTR swings ±40 % needs more than binomial evidence for the same drop."""
    calm = steady(24)
    swinging = [
        replace(o, counts={**o.counts, "clicks": o.counts["clicks"] * (1.4 if i % 2 else 0.6)})
        for i, o in enumerate(calm)
    ]
    current = funnel(4_000, 0.009)  # 80 expected clicks, 36 seen
    fired_calm = RatioDrop("ctr")(then(calm, **current), DOUYIN)
    assert fired_calm is not None and fired_calm.evidence["dispersion"] == 1.0
    assert RatioDrop("ctr")(then(swinging, **current), DOUYIN) is None


@pytest.mark.parametrize("bad", [{"metric": "aov"}, {"min_drop": 0.0}, {"alpha": 1.0}, {"confidence": 1.5}])
def test_ratio_drop_rejects_meaningless_settings(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RatioDrop(**bad)  # type: ignore[arg-type]


# -- RoiDrop --------------------------------------------------------------------------------------------

ROI_BASE = steady(24, impressions=40_000, cvr=0.05, aov=300.0, cpc=5.0)  # ROI = 0.05 × 300 / 5 = 3


@pytest.mark.parametrize(
    ("case", "current", "fires", "severity"),
    [
        ("CPC ×4: ROI 3 → 0.75", funnel(40_000, 0.02, aov=300, cpc=20.0), True, "critical"),
        ("conversion halves: ROI 3 → 1.5", funnel(40_000, 0.02, cvr=0.025, cpc=5.0), True, "warning"),
        ("baskets halve: ROI 3 → 1.5", funnel(40_000, 0.02, aov=150, cpc=5.0), True, "warning"),
        ("ROI -20 %", funnel(40_000, 0.02, aov=240, cpc=5.0), False, None),
        (
            "no spend: ROI is no data",
            {"impressions": 40_000, "clicks": 800, "orders": 40, "gmv": 12_000},
            False,
            None,
        ),
        ("8 orders expected", funnel(4_000, 0.02, cvr=0.0, cpc=5.0), False, None),
        ("nothing sold on 40 expected orders", funnel(40_000, 0.02, cvr=0.0, cpc=5.0), True, "critical"),
        ("ROI up", funnel(40_000, 0.02, aov=600, cpc=5.0), False, None),
    ],
)
def test_roi_drop_table(case: str, current: dict[str, float], fires: bool, severity: str | None) -> None:
    finding = RoiDrop()(then(ROI_BASE, **current), DOUYIN)
    assert (finding is not None) is fires, case
    if finding is not None:
        assert finding.severity == severity and finding.metric == "roi"
        assert ("recommend pausing douyin" in finding.summary) is (severity == "critical")
        assert finding.evidence["p_value"] < 0.001
        assert finding.baseline == pytest.approx(3.0)


def test_roi_drop_is_not_fooled_by_one_large_basket_in_a_noisy_history() -> None:
    """Order amounts that vary a lot widen the test: the same ROI fall is news only for steady baskets."""
    noisy = [
        replace(o, counts={**o.counts, "gmv": o.counts["gmv"] * (2.2 if i % 3 == 0 else 0.4)})
        for i, o in enumerate(ROI_BASE)
    ]
    current = funnel(8_000, 0.02, aov=150, cpc=5.0)  # 8 orders expected... and 8 came, at half the AOV
    assert RoiDrop(min_expected_orders=5)(then(noisy, **current), DOUYIN) is None
    assert RoiDrop(min_expected_orders=5)(then(ROI_BASE, **current), DOUYIN) is None  # 8 orders is not enough
    big = funnel(40_000, 0.02, aov=150, cpc=5.0)
    assert RoiDrop()(then(ROI_BASE, **big), DOUYIN) is not None
    assert RoiDrop()(then(noisy, **big), DOUYIN) is None


# -- SpendSurge -----------------------------------------------------------------------------------------

SPEND_BASE = steady(24, wobble=0.1)  # ~200 spend an hour, ±10 %


@pytest.mark.parametrize(
    ("case", "history", "fires", "severity"),
    [
        ("spend ×3", then(SPEND_BASE, **funnel(60_000, 0.02)), True, "warning"),
        ("spend ×5 (CPC ×5)", then(SPEND_BASE, **funnel(20_000, 0.02, cpc=2.5)), True, "critical"),
        ("spend ×1.5", then(SPEND_BASE, **funnel(30_000, 0.02)), False, None),
        (
            "spend ×3 below the minimum",
            then(steady(24, impressions=2_000), **funnel(6_000, 0.02)),
            False,
            None,
        ),
        ("no usual spend", then(steady(24, cpc=0.0), **funnel(20_000, 0.02)), False, None),
        ("five windows of history", then(steady(5), **funnel(60_000, 0.02)), False, None),
    ],
)
def test_spend_surge_table(case: str, history: list[Observation], fires: bool, severity: str | None) -> None:
    finding = SpendSurge()(history, DOUYIN)
    assert (finding is not None) is fires, case
    if finding is not None:
        assert finding.severity == severity and finding.metric == "spend"
        assert finding.evidence["robust_z"] >= 4


def test_spend_surge_on_a_few_clicks_needs_a_surge_a_poisson_count_would_not_make() -> None:
    """A quiet channel: ~5 clicks at 11.6 a window. 14 clicks' worth (×2.8, "robust z" 4.0 by the normal
    floor) happens by chance every few days there (p ≈ 0.0007); 30 clicks' worth does not."""
    quiet = [window(h, clicks=5 + (h % 3) - 1, spend=(5 + (h % 3) - 1) * 11.6) for h in range(24)]
    assert SpendSurge()(then(quiet, clicks=14, spend=14 * 11.6), DOUYIN) is None
    finding = SpendSurge()(then(quiet, clicks=30, spend=30 * 11.6), DOUYIN)
    assert finding is not None and finding.evidence["p_value"] < 3.2e-5


def test_spend_back_to_normal_after_a_drop_is_no_surge_against_the_windows_before_it() -> None:
    """Two hours of a CTR drop (a third of the clicks, so of the spend), then the usual spend again: against
    the drop it is ×3; against the windows before the drop it is the usual."""
    normal = [window(h, **funnel(20_000, 0.02)) for h in range(12)]
    dropped = [window(12 + h, **funnel(20_000, 0.0066)) for h in range(12)]
    back = then(normal + dropped, **funnel(20_000, 0.02))
    assert SpendSurge(baseline_windows=12)(back, DOUYIN) is not None
    assert SpendSurge(baseline_windows=12, earlier_windows=12)(back, DOUYIN) is None
    surge = then(normal + dropped, **funnel(60_000, 0.02))
    assert SpendSurge(baseline_windows=12, earlier_windows=12)(surge, DOUYIN) is not None


def test_spend_surge_ignores_the_empty_windows_before_a_channel_went_live() -> None:
    """Six of twelve baseline windows predate the channel: its usual spend is that of the six others."""
    history = [window(h) for h in range(6)] + [window(6 + h, **funnel(20_000, 0.02)) for h in range(6)]
    assert SpendSurge()(then(history, **funnel(22_000, 0.02)), DOUYIN) is None
    assert SpendSurge()(then(history, **funnel(60_000, 0.02)), DOUYIN) is not None
    five_live = [window(h) for h in range(7)] + [window(7 + h, **funnel(20_000, 0.02)) for h in range(5)]
    assert SpendSurge()(then(five_live, **funnel(60_000, 0.02)), DOUYIN) is None


def test_spend_surge_says_whether_clicks_or_prices_drove_it() -> None:
    more_clicks = SpendSurge()(then(SPEND_BASE, **funnel(60_000, 0.02)), DOUYIN)
    dearer = SpendSurge()(then(SPEND_BASE, **funnel(20_000, 0.02, cpc=2.5)), DOUYIN)
    assert more_clicks is not None and "more clicks were bought" in more_clicks.description
    assert dearer is not None and "each click cost more" in dearer.description


def test_spend_surge_ignores_the_daily_peak_its_seasonal_baseline_knows() -> None:
    """Every day at 20:00 spend triples: against the night it is a surge, against earlier days it is not."""
    history = []
    for h in range(24 * 8):
        peak = (h % 24) == 20
        history.append(window(h, **funnel(60_000 if peak else 20_000, 0.02)))
    assert (history[-1].start_s - T0) // HOUR % 24 == 23
    at_peak = history[: 24 * 7 + 21]
    assert SpendSurge()(at_peak, DOUYIN) is None
    assert SpendSurge(seasonal_days=0)(at_peak, DOUYIN) is not None


# -- DropToZero -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "history", "kind", "metric", "severity", "summary"),
    [
        (
            "silence",
            then(BASE),
            "data_health",
            "events",
            "critical",
            "tracker outage? no events from douyin for 1 h",
        ),
        (
            "click tracker silent, orders and spend arrive",
            then(BASE, orders=30, spend=200.0),
            "data_health",
            "events",
            "critical",
            "tracker outage? no events from douyin for 1 h (orders and spend still arrive)",
        ),
        (
            "impressions but no clicks",
            then(BASE, impressions=20_000),
            "anomaly",
            "ctr",
            "warning",
            "CTR collapsed to 0 in the last hour: 20k impressions, no clicks (expected 400)",
        ),
        (
            "clicks but no orders",
            then(steady(24, impressions=40_000), impressions=40_000, clicks=800),
            "anomaly",
            "cvr",
            "warning",
            "CVR collapsed to 0 in the last hour: 800 clicks, no orders (expected 40)",
        ),
    ],
)
def test_drop_to_zero_table(
    case: str, history: list[Observation], kind: str, metric: str, severity: str, summary: str
) -> None:
    finding = DropToZero()(history, DOUYIN)
    assert finding is not None, case
    assert (finding.kind, finding.metric, finding.severity, finding.summary) == (
        kind,
        metric,
        severity,
        summary,
    )


@pytest.mark.parametrize(
    ("case", "history"),
    [
        ("a quiet channel: 10 events expected", then(steady(24, impressions=10, ctr=0.0))),
        ("traffic continues", then(BASE, **funnel(20_000, 0.02))),
        ("clicks without orders where 1 order was expected", then(BASE, impressions=1_000, clicks=20)),
        ("no history", [window(0)]),
        ("two windows of history", then(steady(2))),
    ],
)
def test_drop_to_zero_stays_quiet(case: str, history: list[Observation]) -> None:
    assert DropToZero()(history, DOUYIN) is None, case


def test_drop_to_zero_counts_the_whole_silence_and_keeps_it_out_of_the_baseline() -> None:
    history = BASE + [window(24 + k) for k in range(3)]
    finding = DropToZero()(history, DOUYIN)
    assert finding is not None
    assert finding.summary == "tracker outage? no events from douyin for 3 h"
    assert finding.evidence["silent_since"] == "2023-11-15T00:00:00+00:00"
    assert finding.evidence["expected_events"] == pytest.approx(20_000 + 400 + 320 + 80)


def test_drop_to_zero_scales_the_expectation_to_a_partial_window() -> None:
    """On the wall-clock timer the newest observation can be the first 5 minutes of an hour."""
    partial = Observation(T0 + 24 * HOUR, T0 + 24 * HOUR + 300, {})
    quiet = steady(24, impressions=200, ctr=0.0)  # 200 an hour: 17 expected in 5 minutes
    assert DropToZero()([*BASE, partial], DOUYIN) is not None
    assert DropToZero()([*quiet, partial], DOUYIN) is None
    assert DropToZero()([*quiet, replace(partial, end_s=partial.start_s + 600)], DOUYIN) is not None


def test_drop_to_zero_expects_the_quieter_of_recent_and_same_hour_traffic() -> None:
    """At 03:00 the previous day was quiet too: the afternoon before is not the yardstick."""
    history = []
    for h in range(24 * 3 + 3):
        night = 0 <= h % 24 < 6
        history.append(window(h, impressions=10 if night else 5_000))
    silent = then(history)
    assert (silent[-1].start_s - T0) // HOUR % 24 == 3
    assert DropToZero()(silent, DOUYIN) is None
    assert DropToZero(seasonal_days=0)(silent, DOUYIN) is not None


# -- the bundle -----------------------------------------------------------------------------------------


def test_bundle_reports_one_finding_per_condition() -> None:
    history = then(BASE, impressions=20_000)  # CTR 2 % → 0: both DropToZero and RatioDrop see it
    findings = Detectors().run(history, DOUYIN)
    ctr = [f for f in findings if f.metric == "ctr"]
    assert len(ctr) == 1
    assert ctr[0].severity == "critical"  # RatioDrop's (a 100 % drop) outranks the collapse warning
    assert len({f.fingerprint for f in findings}) == len(findings)


def test_bundle_prefers_the_earlier_detector_on_equal_severity() -> None:
    history = then(BASE, impressions=20_000)
    collapse, drop = (
        DropToZero(critical_expected=math.inf),
        RatioDrop("ctr", critical_drop=2.0),
    )  # both warnings
    first = Detectors(detectors=(collapse, drop)).run(history, DOUYIN)
    second = Detectors(detectors=(drop, collapse)).run(history, DOUYIN)
    assert [f.summary.split()[:2] for f in first] == [["CTR", "collapsed"]]
    assert [f.summary.split()[:2] for f in second] == [["CTR", "fell"]]


def test_bundle_timer_runs_drop_to_zero_only() -> None:
    history = then(BASE)
    assert [f.kind for f in Detectors().on_timer(history, DOUYIN)] == ["data_health"]
    assert Detectors().on_timer(then(BASE, **funnel(20_000, 0.01)), DOUYIN) == []
    assert Detectors().run([], DOUYIN) == []


# -- properties -----------------------------------------------------------------------------------------


@st.composite
def small_histories(draw: st.DrawFn) -> list[Observation]:
    """Histories whose newest window has at most 40 impressions and whose CTR never exceeds 20 %."""
    length = draw(st.integers(1, 40))
    rows = []
    for h in range(length):
        top = 40 if h == length - 1 else 1_000_000
        impressions = draw(st.integers(0, top))
        clicks = draw(st.integers(0, impressions // 5))
        orders = draw(st.integers(0, clicks))
        rows.append(
            window(
                h,
                impressions=impressions,
                clicks=clicks,
                orders=orders,
                gmv=orders * draw(st.floats(0, 1_000)),
                spend=clicks * draw(st.floats(0, 5)),
            )
        )
    return rows


@settings(max_examples=200, deadline=None)
@given(small_histories())
def test_a_campaign_with_40_impressions_never_gets_a_ctr_alert(history: list[Observation]) -> None:
    assert not [f for f in Detectors().run(history, DOUYIN) if f.metric == "ctr"]


@st.composite
def histories(draw: st.DrawFn) -> list[Observation]:
    length = draw(st.integers(2, 40))
    rows = []
    for h in range(length):
        impressions = draw(st.integers(0, 200_000))
        clicks = draw(st.integers(0, impressions))
        orders = draw(st.integers(0, clicks + 3))
        rows.append(
            window(
                h,
                impressions=impressions,
                clicks=clicks,
                orders=orders,
                gmv=orders * draw(st.floats(0, 1_000)),
                spend=draw(st.floats(0, 10_000)),
            )
        )
    return rows


@settings(max_examples=200, deadline=None)
@given(histories(), st.sampled_from(["ctr", "cvr"]))
def test_ratio_drop_needs_the_expected_volume_and_a_lower_rate(
    history: list[Observation], metric: str
) -> None:
    detector = RatioDrop(metric)  # type: ignore[arg-type]
    finding = detector(history, DOUYIN)
    if finding is None:
        return
    numerator, denominator = ("clicks", "impressions") if metric == "ctr" else ("orders", "clicks")
    current = history[-1]
    baseline = baseline_of(history, detector.baseline_windows, detector.seasonal_days)
    with_data = [o for o in baseline.windows if o.get(denominator) > 0]
    base_rate = sum(o.get(numerator) for o in with_data) / sum(o.get(denominator) for o in with_data)
    assert base_rate * current.get(denominator) >= detector.min_expected
    assert current.get(numerator) / current.get(denominator) < base_rate
    assert finding.evidence["p_value"] < detector.alpha


@settings(max_examples=200, deadline=None)
@given(histories())
def test_no_detector_fires_below_its_minimum_volume(history: list[Observation]) -> None:
    strict = Detectors(
        detectors=(
            DropToZero(min_expected=math.inf),
            RatioDrop("ctr", min_expected=math.inf),
            RatioDrop("cvr", min_expected=math.inf),
            RoiDrop(min_expected_orders=math.inf),
            SpendSurge(min_spend=math.inf),
        )
    )
    assert strict.run(history, DOUYIN) == []


@settings(max_examples=100, deadline=None)
@given(histories())
def test_findings_are_well_formed(history: list[Observation]) -> None:
    for finding in Detectors().run(history, DOUYIN):
        assert isinstance(finding, Finding)
        assert finding.kind in ("anomaly", "data_health")
        assert finding.summary and finding.description
        assert finding.window_start is not None and finding.window_end is not None
        p_value = finding.evidence.get("p_value")
        assert p_value is None or 0.0 <= p_value <= 1.0


# -- simulations ----------------------------------------------------------------------------------------


def simulate(
    rng: np.random.Generator,
    impressions_per_hour: float,
    hours: int,
    *,
    ctr: float = 0.02,
    cvr: float = 0.05,
    diurnal: float = 0.5,
    ctr_factor_from: tuple[int, float] | None = None,
    cpc_factor_from: tuple[int, float] | None = None,
) -> list[Observation]:
    """Binomial funnel, Poisson impressions following a daily curve, lognormal baskets and CPCs."""
    rows = []
    for h in range(hours):
        level = 1.0 + diurnal * math.sin(2 * math.pi * (h % 24) / 24)
        impressions = int(rng.poisson(impressions_per_hour * level))
        rate = ctr * (ctr_factor_from[1] if ctr_factor_from and h >= ctr_factor_from[0] else 1.0)
        cpc = 0.6 * (cpc_factor_from[1] if cpc_factor_from and h >= cpc_factor_from[0] else 1.0)
        clicks = int(rng.binomial(impressions, rate))
        visits = int(rng.binomial(clicks, 0.8))
        orders = int(rng.binomial(clicks, cvr))
        rows.append(
            window(
                h,
                impressions=impressions,
                clicks=clicks,
                visits=visits,
                carts=int(rng.binomial(visits, 0.2)),
                orders=orders,
                gmv=float(rng.lognormal(math.log(300) - 0.18, 0.6, orders).sum()),
                spend=float(rng.lognormal(math.log(cpc) - 0.02, 0.2, clicks).sum()),
            )
        )
    return rows


def judge_every_hour(rows: Sequence[Observation], first: int, detectors: Detectors) -> list[Finding]:
    findings = []
    for index in range(first, len(rows)):
        findings.extend(detectors.run(rows[max(0, index - 24 * 7 - 1) : index + 1], DOUYIN))
    return findings


WEEK = 24 * 7
VOLUMES = (10_000, 15_000, 20_000, 30_000, 50_000, 2_000, 300, 40)


@pytest.mark.parametrize("volume", VOLUMES)
def test_stationary_traffic_gives_at_most_one_false_alert_per_channel_and_week(volume: int) -> None:
    """Three channels per volume, a week of warm-up, then a week judged hourly by every detector."""
    for seed in range(3):
        rng = np.random.default_rng([volume, seed])
        rows = simulate(rng, volume, 2 * WEEK)
        false_alerts = judge_every_hour(rows, WEEK, Detectors())
        assert len(false_alerts) <= 1, [f.summary for f in false_alerts]


@pytest.mark.parametrize("seed", range(25))
def test_a_true_50_percent_ctr_drop_at_10k_impressions_fires_in_its_first_window(seed: int) -> None:
    rng = np.random.default_rng(seed)
    start = 8 * 24 + seed % 24  # any hour of the day, after a week of history
    rows = simulate(rng, 10_000, start + 1, diurnal=0.0, ctr_factor_from=(start, 0.5))
    assert not [f for f in Detectors().run(rows[:-1], DOUYIN) if f.metric == "ctr"]
    fired = [f for f in Detectors().run(rows, DOUYIN) if f.metric == "ctr"]
    assert len(fired) == 1, rows[-1].counts
    assert fired[0].window_start is not None and fired[0].change_pct is not None
    assert fired[0].change_pct < -30


@pytest.mark.parametrize("seed", range(5))
def test_a_quadrupled_cpc_fires_roi_and_spend_alerts_in_the_first_window(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    start = 8 * 24 + 5 * seed
    rows = simulate(rng, 40_000, start + 1, diurnal=0.0, cpc_factor_from=(start, 4.0))
    metrics = {f.metric: f for f in Detectors().run(rows, DOUYIN)}
    assert {"roi", "spend"} <= set(metrics)
    assert metrics["roi"].evidence["roi_ratio_interval"][1] < 0.5


def test_a_tracker_outage_in_simulated_traffic_is_data_health_not_anomaly() -> None:
    rng = np.random.default_rng(7)
    rows = simulate(rng, 10_000, 8 * 24)
    rows.append(window(len(rows)))
    findings = Detectors().run(rows, DOUYIN)
    assert [(f.kind, f.metric) for f in findings] == [("data_health", "events")]
