"""Significance-aware anomaly detectors over the closed windows of one channel or campaign. Pure.

A detector looks at a history of windows of one size for one (channel, campaign), oldest first, and
judges the newest one against a baseline built from the windows before it: the previous
``baseline_windows`` windows, plus the window at the same time of day on each of the previous
``seasonal_days`` days when the history reaches back that far (traffic and prices follow the clock).
It returns a :class:`~alerts.model.Finding` when the condition holds, else ``None``.

Three gates stand between a wobble and a page, and every alert explains all three in its evidence:

1. **Volume** — the baseline must predict enough events in this window (``min_expected``), so a
   campaign with 40 impressions never fires, whatever its CTR does.
2. **Significance** — an exact or well-approximated one-sided test on the counts behind the KPI
   (:mod:`alerts.stats`) must reject "no change" at ``alpha``.
3. **Size** — the change must be large enough to matter (``min_drop``, ``factor``). A window's rate is
   itself noisy, so a drop fires when the window's confidence interval reaches ``min_drop`` rather than
   when its point estimate does: otherwise a true 50 % drop would be caught only half of the time.

Large, well-measured channels are protected from paging on their ordinary daily swings by gate 3
(statistically significant is not the same as big), small ones by gates 1 and 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from typing import Final, Literal, Protocol

from alerts.model import SEVERITY_ORDER, Finding, Severity
from alerts.stats import (
    mad_sigma,
    median,
    norm_sf,
    overdispersion,
    poisson_ge,
    poisson_rate_test,
    rate_ratio_interval,
    two_proportion_test,
    wilson_interval,
)
from alerts.wording import DAY_S, duration_text, p_text, percent_text, rfc3339, span_text, volume_text

#: Counts that only the click tracker produces (the ``clicks`` topic).
CLICK_TRACKER_COUNTS: Final = ("impressions", "clicks", "visits", "carts")
#: Ratio metrics RatioDrop can watch: name -> (numerator, denominator, label).
RATIO_METRICS: Final = {
    "ctr": ("clicks", "impressions", "CTR"),
    "cvr": ("orders", "clicks", "CVR"),
}


@dataclass(frozen=True, slots=True)
class Observation:
    """One closed window: ``[start_s, end_s)`` in epoch seconds and its counts (money in currency units)."""

    start_s: int
    end_s: int
    counts: Mapping[str, float]

    def get(self, name: str) -> float:
        """A count, 0 when the window has none of it."""
        return float(self.counts.get(name, 0.0))

    @property
    def duration_s(self) -> int:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose history is judged: a channel (``campaign=None``) or a (channel, campaign), and the window."""

    channel: str
    campaign: str | None = None
    window: str | None = None
    zone: tzinfo = UTC


class Detector(Protocol):
    """What the bundle runs: a judgement of the newest window of ``history``."""

    def __call__(self, history: Sequence[Observation], subject: Subject) -> Finding | None: ...


# -- baseline -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Baseline:
    """The windows a judgement compares with: the recent ones and those at the same time on earlier days."""

    recent: tuple[Observation, ...]
    seasonal: tuple[Observation, ...]

    @property
    def windows(self) -> tuple[Observation, ...]:
        """Recent and seasonal windows, each once."""
        seen = {o.start_s for o in self.recent}
        return self.recent + tuple(o for o in self.seasonal if o.start_s not in seen)

    def total(self, name: str, windows: Sequence[Observation] | None = None) -> float:
        return sum(o.get(name) for o in (self.windows if windows is None else windows))

    def describe(self) -> str:
        """E.g. '30 windows: the previous 24 and the same time on 7 earlier days'."""
        text = f"{len(self.windows)} windows: the previous {len(self.recent)}"
        if self.seasonal:
            days = len(self.seasonal)
            text += f" and the same time on {days} earlier day{'s' if days > 1 else ''}"
        return text


def baseline_of(history: Sequence[Observation], recent: int, seasonal_days: int) -> Baseline:
    """The baseline of the newest window of ``history``.

    Seasonal windows are found by start time, exactly ``d × 24 h`` earlier, so gaps in the history
    do not shift them onto the wrong hour.
    """
    current = history[-1]
    before = [o for o in history[:-1] if o.end_s <= current.start_s]
    recent_windows = tuple(before[-recent:]) if recent > 0 else ()
    by_start = {o.start_s: o for o in before}
    seasonal = tuple(
        by_start[current.start_s - d * DAY_S]
        for d in range(1, seasonal_days + 1)
        if current.start_s - d * DAY_S in by_start
    )
    return Baseline(recent_windows, seasonal)


def _confidence_text(confidence: float) -> str:
    return f"{confidence * 100:g} %"


def _whole(value: float) -> int:
    """A count as the integer the tests need (counts of events are whole; guard float noise)."""
    return max(0, round(value))


def _effective(count: float, dispersion: float) -> int:
    """A count divided by the over-dispersion: the binomial or Poisson count carrying as much evidence."""
    return _whole(count / dispersion)


def _finding(subject: Subject, current: Observation, **fields: object) -> Finding:
    return Finding(
        channel=subject.channel,
        campaign=subject.campaign,
        window=subject.window,
        window_start=rfc3339(current.start_s, subject.zone),
        window_end=rfc3339(current.end_s, subject.zone),
        **fields,  # type: ignore[arg-type]
    )


def _where(subject: Subject) -> str:
    return subject.channel if subject.campaign is None else f"{subject.channel}/{subject.campaign}"


def _check_fraction(name: str, value: float, *, closed: bool = False) -> None:
    ok = 0.0 < value <= 1.0 if closed else 0.0 < value < 1.0
    if not ok:
        raise ValueError(f"{name} must be in (0, 1{']' if closed else ')'}, got {value!r}")


# -- RatioDrop --------------------------------------------------------------------------------------------

_CHECKS: Final = {
    "ctr": (
        "Check the creatives and placements on {where}: a creative rejected or paused by the platform, a "
        "placement or targeting change, a bid change that moved ads to worse slots, or a click tracker that "
        "lost events (impressions still counted, clicks not)."
    ),
    "cvr": (
        "Check the landing page and checkout for {where}: page errors or slow loads, items out of stock, a "
        "price or coupon change, a broken payment step, or order tracking that lost events."
    ),
}


@dataclass(frozen=True)
class RatioDrop:
    """A significant relative drop of a ratio KPI (CTR or CVR) against its baseline.

    Fires when the baseline predicts at least ``min_expected`` successes in this window (volume), the
    one-sided test of "current rate < baseline rate" has p < ``alpha`` (significance: the pooled
    two-proportion z-test, Fisher's exact test for small cells), and the current rate's
    ``confidence`` Wilson interval reaches a drop of ``min_drop`` (size). The baseline pools the
    counts of its windows: a rate over ~30 windows is far more precise than one window's, so the
    test's uncertainty is dominated, correctly, by the current window. Where the baseline windows
    vary more than binomial noise allows (CTR follows the hour and the placement mix), every count is
    divided by their :func:`~alerts.stats.overdispersion` first, so the test and the interval
    widen to the noise actually seen.

    Defaults: ``min_drop`` 0.5 is the marketing team's rule ("CTR suddenly drops 50 %"); ``alpha``
    0.001 keeps stationary traffic below one false alert per channel and week even when evaluated
    every hour by several detectors (168 × 0.001 ≈ 0.17 per detector and week at most); ``min_expected``
    10 successes is the least volume at which a drop to half (or to zero) can reach p < 0.001 at all;
    ``confidence`` 0.999 makes a true 50 % drop at 10,000 impressions an hour (200 → 100 clicks) fire
    in its first window with probability ≈ 0.9999 rather than 0.5 (at 0.99 about 1 in 200 such drops
    waits a window: a seeded simulation met one). The price: at that volume an observed drop of
    ~31 % is already consistent with 50 % and fires; at 50k impressions the line is ~42 %, at 1M ~48 %.
    """

    metric: Literal["ctr", "cvr"] = "ctr"
    min_drop: float = 0.5
    alpha: float = 0.001
    baseline_windows: int = 24
    seasonal_days: int = 7
    min_expected: float = 10.0
    min_baseline_windows: int = 3
    confidence: float = 0.999
    critical_drop: float = 0.8

    def __post_init__(self) -> None:
        if self.metric not in RATIO_METRICS:
            raise ValueError(f"metric must be one of {sorted(RATIO_METRICS)}, got {self.metric!r}")
        _check_fraction("min_drop", self.min_drop, closed=True)
        _check_fraction("alpha", self.alpha)
        _check_fraction("confidence", self.confidence)

    def __call__(self, history: Sequence[Observation], subject: Subject) -> Finding | None:
        if not history:
            return None
        numerator, denominator, label = RATIO_METRICS[self.metric]
        current = history[-1]
        x, n = _whole(current.get(numerator)), _whole(current.get(denominator))
        if n == 0:
            return None  # no data (CONTRACT §2); silence is DropToZero's to judge
        baseline = baseline_of(history, self.baseline_windows, self.seasonal_days)
        with_data = [o for o in baseline.windows if o.get(denominator) > 0]
        if len(with_data) < self.min_baseline_windows:
            return None
        bx, bn = _whole(baseline.total(numerator, with_data)), _whole(baseline.total(denominator, with_data))
        if bx == 0 or bn == 0:
            return None  # nothing to fall from
        base_rate, rate = bx / bn, x / n
        expected = base_rate * n
        if expected < self.min_expected or rate >= base_rate:
            return None
        drop = 1.0 - rate / base_rate
        # Orders without tracked clicks (or clicks without impressions) happen in real tracking: the
        # counts are then rates per exposure, not proportions, and the Poisson model applies.
        proportions = x <= n and bx <= bn
        spread = base_rate * (1.0 - base_rate) if proportions else base_rate
        phi = overdispersion(
            [o.get(numerator) for o in with_data],
            [o.get(denominator) * base_rate for o in with_data],
            [o.get(denominator) * spread for o in with_data],
        )
        ex, en, ebx, ebn = (_effective(v, phi) for v in (x, n, bx, bn))
        en, ebx, ebn = max(en, 1), max(ebx, 1), max(ebn, 1)
        if proportions:
            ex, ebx = min(ex, en), min(ebx, ebn)
            test = two_proportion_test(ex, en, ebx, ebn, "less")
            low, high = wilson_interval(ex, en, self.confidence)
        else:
            test = poisson_rate_test(ex, en, ebx, ebn, "less")
            ratio_low, ratio_high = rate_ratio_interval(ex, en, ebx, ebn, self.confidence)
            low, high = ratio_low * (ebx / ebn), ratio_high * (ebx / ebn)
        if test.p_value >= self.alpha:
            return None
        largest_plausible_drop = 1.0 - low / base_rate
        if largest_plausible_drop < self.min_drop:
            return None
        severity: Severity = "critical" if drop >= self.critical_drop else "warning"
        summary = (
            f"{label} fell {drop * 100:.0f} % in the last {span_text(current.duration_s)} "
            f"({percent_text(base_rate)} → {percent_text(rate)}, {volume_text(n)} {denominator}, "
            f"{p_text(test.p_value)})"
        )
        widened = f" (counts ÷ {phi:.2f}, the baseline windows' over-dispersion)" if phi > 1.0 else ""
        description = (
            f"{label} of {_where(subject)} was {percent_text(rate)} ({x} {numerator} / {n} {denominator}) "
            f"against a baseline of {percent_text(base_rate)} ({baseline.describe()}), which predicted "
            f"{expected:.0f} {numerator}. {test.method}{widened}: {p_text(test.p_value)}; "
            f"{_confidence_text(self.confidence)} interval of the current {label}: "
            f"{percent_text(low)}–{percent_text(high)}.\n"
            + _CHECKS[self.metric].format(where=_where(subject))
        )
        return _finding(
            subject,
            current,
            kind="anomaly",
            metric=self.metric,
            severity=severity,
            value=rate,
            baseline=base_rate,
            threshold=(1.0 - self.min_drop) * base_rate,
            change_pct=-drop * 100.0,
            summary=summary,
            description=description,
            evidence={
                numerator: x,
                denominator: n,
                f"baseline_{numerator}": bx,
                f"baseline_{denominator}": bn,
                f"expected_{numerator}": expected,
                "baseline_windows": len(with_data),
                "dispersion": phi,
                "p_value": test.p_value,
                "z": test.z,
                "test": test.method,
                "interval": [low, high],
                "interval_confidence": self.confidence,
                "alpha": self.alpha,
                "min_drop": self.min_drop,
            },
        )


# -- RoiDrop ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoiDrop:
    """A significant drop of ROI (GMV / spend) against its baseline; critical below the red line of 1.

    Why the test is sound: GMV is a compound Poisson sum — a Poisson number of orders per unit of
    spend, each with a random amount — so, counted in units of the baseline AOV, a window's GMV is a
    quasi-Poisson count with exposure = spend and variance (1 + CV²) × its mean, CV being the order
    amounts' coefficient of variation. The windows do not keep single amounts, but they do not need
    to: the baseline windows' own scatter around the baseline ROI measures that factor (together with
    any extra noise from CPC swings) as their :func:`~alerts.stats.overdispersion`. Dividing the
    counts by it and applying the exact conditional test for two Poisson rates tests GMV per unit of
    spend — the ROI itself, not a proxy — with the noise the channel really has. One large basket
    cannot fake a recovery, and a handful of orders cannot fake a collapse.

    Fires when the baseline predicts ≥ ``min_expected_orders`` orders for this window's spend, the
    test has p < ``alpha``, and the ``confidence`` interval of ROI / baseline ROI reaches a drop of
    ``min_drop``; critical when ROI is below ``red_line`` (recommend pausing the channel).
    """

    min_drop: float = 0.5
    alpha: float = 0.001
    baseline_windows: int = 24
    seasonal_days: int = 7
    min_expected_orders: float = 10.0
    min_baseline_windows: int = 3
    confidence: float = 0.99
    red_line: float = 1.0

    def __post_init__(self) -> None:
        _check_fraction("min_drop", self.min_drop, closed=True)
        _check_fraction("alpha", self.alpha)
        _check_fraction("confidence", self.confidence)

    def __call__(self, history: Sequence[Observation], subject: Subject) -> Finding | None:
        if not history:
            return None
        current = history[-1]
        orders, spend, gmv = _whole(current.get("orders")), current.get("spend"), current.get("gmv")
        if spend <= 0:
            return None  # ROI has no data
        baseline = baseline_of(history, self.baseline_windows, self.seasonal_days)
        with_spend = [o for o in baseline.windows if o.get("spend") > 0]
        if len(with_spend) < self.min_baseline_windows:
            return None
        b_orders = _whole(baseline.total("orders", with_spend))
        b_spend, b_gmv = baseline.total("spend", with_spend), baseline.total("gmv", with_spend)
        if b_orders == 0 or b_gmv <= 0:
            return None
        roi, base_roi = gmv / spend, b_gmv / b_spend
        base_aov = b_gmv / b_orders
        orders_per_spend = b_orders / b_spend
        expected_orders = orders_per_spend * spend
        if expected_orders < self.min_expected_orders or roi >= base_roi:
            return None
        drop = 1.0 - roi / base_roi
        # GMV in order-equivalents (units of the baseline AOV): a quasi-Poisson count per unit of spend.
        phi = overdispersion(
            [o.get("gmv") / base_aov for o in with_spend],
            [o.get("spend") * orders_per_spend for o in with_spend],
            [o.get("spend") * orders_per_spend for o in with_spend],
        )
        units, b_units = _effective(gmv / base_aov, phi), max(1, _effective(b_orders, phi))
        test = poisson_rate_test(units, spend, b_units, b_spend, "less")
        if test.p_value >= self.alpha:
            return None
        ratio_low, ratio_high = rate_ratio_interval(units, spend, b_units, b_spend, self.confidence)
        if 1.0 - ratio_low < self.min_drop:
            return None
        below_red_line = roi < self.red_line
        severity: Severity = "critical" if below_red_line else "warning"
        where = _where(subject)
        aov_ratio = (gmv / orders) / base_aov if orders else None
        summary = (
            f"ROI fell {drop * 100:.0f} % in the last {span_text(current.duration_s)} "
            f"({base_roi:.2f} → {roi:.2f}, {volume_text(spend)} spend, {orders} orders, "
            f"{p_text(test.p_value)})"
        )
        if below_red_line:
            summary += f"; below {self.red_line:g}: recommend pausing {where}"
        moved = f", AOV ×{aov_ratio:.2f}" if aov_ratio is not None else ", no orders"
        description = (
            f"ROI (GMV / spend) of {where} was {roi:.2f} (GMV {gmv:,.2f} / spend {spend:,.2f}) against "
            f"{base_roi:.2f} ({baseline.describe()}); {orders} orders where {expected_orders:.0f} were "
            f"expected{moved}. {test.method} on GMV per unit of spend (dispersion {phi:.2f}): "
            f"{p_text(test.p_value)}; {_confidence_text(self.confidence)} interval of ROI / baseline: "
            f"{ratio_low:.2f}–{ratio_high:.2f}.\n"
            "Check what got worse: CPC (bids, auction competition), conversion (landing page, stock, "
            "price), or basket size (coupons, product mix)."
        )
        if below_red_line:
            description += f" Every unit spent now returns less than it costs: pause {where} until fixed."
        return _finding(
            subject,
            current,
            kind="anomaly",
            metric="roi",
            severity=severity,
            value=roi,
            baseline=base_roi,
            threshold=(1.0 - self.min_drop) * base_roi,
            change_pct=-drop * 100.0,
            summary=summary,
            description=description,
            evidence={
                "orders": orders,
                "spend": spend,
                "gmv": gmv,
                "baseline_orders": b_orders,
                "baseline_spend": b_spend,
                "baseline_gmv": b_gmv,
                "expected_orders": expected_orders,
                "aov_ratio": aov_ratio,
                "baseline_windows": len(with_spend),
                "dispersion": phi,
                "p_value": test.p_value,
                "z": test.z,
                "test": f"{test.method} on GMV (in baseline-AOV units) per unit of spend",
                "interval": [ratio_low * base_roi, ratio_high * base_roi],
                "roi_ratio_interval": [ratio_low, ratio_high],
                "interval_confidence": self.confidence,
                "alpha": self.alpha,
                "red_line": self.red_line,
            },
        )


# -- SpendSurge -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendSurge:
    """Spend in this window at least ``factor`` × the usual, by a robust margin, above ``min_spend``.

    Money is not a count, so the test is empirical: the baseline windows' spend gives a median and a
    robust spread (1.4826 × MAD), computed separately for the recent windows and for the same time on
    earlier days; the window must clear ``factor`` × the larger median by ``z_min`` of the larger
    spread. Taking the harder bar of the two keeps the daily peak from looking like a surge against
    the quiet night before it. The spread never counts as smaller than the Poisson noise of the
    clicks that drive spend (√(usual spend × CPC)), so a perfectly regular history cannot turn a
    routine wobble into an infinite z. Windows in which the channel sent nothing at all (before it
    went live, or during an outage) are not its usual spend and are left out: otherwise a channel's
    first hours would compare full windows with the empty ones before it. With ``earlier_windows``, the
    windows before the recent ones are a third group: after an hour of a CTR drop, the recent windows hold
    its low spend, and spend back to normal must not look like a surge.
    """

    factor: float = 2.0
    z_min: float = 4.0
    min_spend: float = 100.0
    baseline_windows: int = 24
    seasonal_days: int = 7
    min_baseline_windows: int = 6
    min_seasonal_windows: int = 3
    critical_factor: float = 4.0
    earlier_windows: int = 0

    def __post_init__(self) -> None:
        if self.factor <= 1.0:
            raise ValueError(f"factor must be above 1, got {self.factor!r}")

    def __call__(self, history: Sequence[Observation], subject: Subject) -> Finding | None:
        if not history:
            return None
        current = history[-1]
        spend = current.get("spend")
        if spend < self.min_spend:
            return None
        baseline = baseline_of(history, self.baseline_windows, self.seasonal_days)
        recent = [o for o in baseline.recent if _active(o)]
        seasonal = [o for o in baseline.seasonal if _active(o)]
        if len(recent) < self.min_baseline_windows:
            return None
        groups = [recent]
        if len(seasonal) >= self.min_seasonal_windows:
            groups.append(seasonal)
        if self.earlier_windows > 0:
            # The windows before the recent ones: spend back to normal after a drop (fewer clicks for an
            # hour) is no surge, though it is against the drop.
            before = [o for o in history[:-1] if o.end_s <= current.start_s]
            earlier = before[-(self.baseline_windows + self.earlier_windows) : -self.baseline_windows]
            earlier = [o for o in earlier if _active(o)]
            if len(earlier) >= self.min_baseline_windows:
                groups.append(earlier)
        clicks, spent = (
            baseline.total("clicks", recent + seasonal),
            baseline.total("spend", recent + seasonal),
        )
        cpc = spent / clicks if clicks > 0 else 0.0
        usual, spread = 0.0, 0.0
        for group in groups:
            spends = [o.get("spend") for o in group]
            centre = median(spends)
            usual = max(usual, centre)
            spread = max(spread, mad_sigma(spends, centre), math.sqrt(centre * cpc))
        if usual <= 0:
            return None  # no usual spend: a new channel starting is not a surge
        spread = max(spread, 1e-9 * usual)
        robust_z = (spend - usual) / spread
        if spend < self.factor * usual or robust_z < self.z_min:
            return None
        # In a window of a few clicks, spend is a small count times a price: its tail is Poisson, far
        # heavier than the normal one z_min assumes (7 clicks where 3 were usual happens daily). Counted in
        # usual clicks' worth, the surge must be as unlikely as z_min says.
        p_value = poisson_ge(math.ceil(spend / cpc), usual / cpc) if cpc > 0 else 0.0
        if p_value >= norm_sf(self.z_min):
            return None
        ratio = spend / usual
        severity: Severity = "critical" if ratio >= self.critical_factor else "warning"
        where = _where(subject)
        cur_clicks = current.get("clicks")
        usual_clicks = median([o.get("clicks") for o in recent])
        cause = ""
        if cur_clicks > 0 and usual_clicks > 0 and cpc > 0:
            click_ratio = cur_clicks / usual_clicks
            cpc_ratio = (spend / cur_clicks) / cpc
            driver = (
                "more clicks were bought (a raised bid or budget, a broadened audience, or click fraud)"
                if click_ratio >= cpc_ratio
                else "each click cost more (a bid change or fiercer auction competition)"
            )
            cause = f" Clicks ×{click_ratio:.1f}, CPC ×{cpc_ratio:.1f}: {driver}."
        summary = (
            f"Spend ×{ratio:.1f} in the last {span_text(current.duration_s)} "
            f"({volume_text(usual)} → {volume_text(spend)}, robust z {robust_z:.1f})"
        )
        description = (
            f"{where} spent {spend:,.2f} in this window; the usual is {usual:,.2f} "
            f"({baseline.describe()}), spread {spread:,.2f}.{cause}\n"
            f"Check recent bid, budget and targeting changes on {where} and whether GMV followed the spend."
        )
        return _finding(
            subject,
            current,
            kind="anomaly",
            metric="spend",
            severity=severity,
            value=spend,
            baseline=usual,
            threshold=self.factor * usual,
            change_pct=(ratio - 1.0) * 100.0,
            summary=summary,
            description=description,
            evidence={
                "spend": spend,
                "clicks": cur_clicks,
                "baseline_median_spend": usual,
                "baseline_spread": spread,
                "baseline_cpc": cpc,
                "robust_z": robust_z,
                "p_value": p_value,
                "baseline_windows": len(baseline.windows),
                "test": "robust z (median, 1.4826 × MAD; floor: Poisson noise of clicks)",
                "factor": self.factor,
                "z_min": self.z_min,
            },
        )


# -- DropToZero -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropToZero:
    """Traffic that should be there and is not, judged on a wall-clock timer.

    The newest observation may be a window closed by the timer rather than by events (a silent
    channel produces none) or a partial one: the expected count scales with its duration. Expected
    counts come from the event rate of the recent windows before the silence and of the same time on
    earlier days, whichever is lower (a night is quieter than the afternoon before it). Poisson odds
    of a whole window with nothing when ``min_expected`` = 20 are e⁻²⁰ ≈ 2 × 10⁻⁹, so a silence is
    news, not noise.

    - Nothing from the click tracker (impressions, clicks, visits, carts) → ``data_health`` /
      ``events``: a tracker outage is the likeliest cause, whether or not orders and spend still arrive.
    - Impressions continue but clicks are zero, or clicks continue but orders are zero, where the
      baseline rate predicts ≥ ``min_expected`` → ``anomaly`` "collapse" of CTR or CVR (unless
      ``collapse`` is off: the worker leaves ratio drops, a collapse included, to its sequential judge).
    """

    min_expected: float = 20.0
    critical_expected: float = 500.0
    baseline_windows: int = 24
    seasonal_days: int = 7
    min_baseline_windows: int = 3
    min_seasonal_windows: int = 2
    collapse: bool = True

    def __call__(self, history: Sequence[Observation], subject: Subject) -> Finding | None:
        if not history:
            return None
        current = history[-1]
        if current.duration_s <= 0:
            return None
        if sum(current.get(name) for name in CLICK_TRACKER_COUNTS) == 0:
            return self._outage(history, subject)
        return self._collapse(history, subject) if self.collapse else None

    def _expected_rate(
        self, history: Sequence[Observation], first_silent: int, value: Callable[[Observation], float]
    ) -> float | None:
        """``value`` per second expected now: the lower of the recent and the same-time-of-day rate.

        Windows from ``first_silent`` on are the silence being judged and never part of the baseline.
        """
        silence_start = history[first_silent].start_s
        recent = list(history[:first_silent])[-self.baseline_windows :]
        if len(recent) < self.min_baseline_windows:
            return None
        rates = [_rate(recent, value)]
        seasonal = [
            o for o in baseline_of(history, 0, self.seasonal_days).seasonal if o.start_s < silence_start
        ]
        if len(seasonal) >= self.min_seasonal_windows:
            rates.append(_rate(seasonal, value))
        return min(rates)

    def _outage(self, history: Sequence[Observation], subject: Subject) -> Finding | None:
        current = history[-1]
        # The silence may have begun windows ago; its windows must not dilute the baseline.
        first_silent = len(history) - 1
        while first_silent > 0 and _tracker_events(history[first_silent - 1]) == 0:
            first_silent -= 1
        rate = self._expected_rate(history, first_silent, _tracker_events)
        if rate is None:
            return None
        expected = rate * current.duration_s
        if expected < self.min_expected:
            return None
        silent_s = current.end_s - history[first_silent].start_s
        still = [name for name in ("orders", "spend") if current.get(name) > 0]
        where = _where(subject)
        summary = f"tracker outage? no events from {where} for {duration_text(silent_s)}"
        if still:
            summary += f" ({' and '.join(still)} still arrive)"
        description = (
            f"No impression, click, visit or cart events from {where} since "
            f"{rfc3339(history[first_silent].start_s, subject.zone)}; about {expected:.0f} were expected "
            f"in the last {span_text(current.duration_s)}.\n"
            "Check the tracker (SDK release, tag manager, CDN or collector errors, the Kafka producer's "
            "logs) before the campaign: "
            + (
                "orders or spend still arrive, so the traffic itself probably continues."
                if still
                else "nothing at all arrives, so it may also be the channel's delivery or its connector."
            )
        )
        return _finding(
            subject,
            current,
            kind="data_health",
            metric="events",
            severity="critical" if expected >= self.critical_expected else "warning",
            value=0.0,
            baseline=expected,
            change_pct=-100.0,
            summary=summary,
            description=description,
            evidence={
                "events": 0,
                "expected_events": expected,
                "silent_s": silent_s,
                "silent_since": rfc3339(history[first_silent].start_s, subject.zone),
                "orders": current.get("orders"),
                "spend": current.get("spend"),
                "p_value": math.exp(-expected),
                "test": "Poisson probability of no events",
            },
        )

    def _collapse(self, history: Sequence[Observation], subject: Subject) -> Finding | None:
        current = history[-1]
        baseline = baseline_of(history, self.baseline_windows, self.seasonal_days)
        if len(baseline.recent) < self.min_baseline_windows:
            return None
        groups = [baseline.recent]
        if len(baseline.seasonal) >= self.min_seasonal_windows:
            groups.append(baseline.seasonal)
        for metric, (numerator, denominator, label) in RATIO_METRICS.items():
            if current.get(denominator) <= 0 or current.get(numerator) > 0:
                continue
            ratios = [_ratio(group, numerator, denominator) for group in groups]
            base_rate = min(ratios)
            expected = base_rate * current.get(denominator)
            if expected >= self.min_expected:
                return self._collapse_finding(
                    subject, current, metric, label, numerator, denominator, base_rate, expected
                )
        return None

    def _collapse_finding(
        self,
        subject: Subject,
        current: Observation,
        metric: str,
        label: str,
        numerator: str,
        denominator: str,
        base_rate: float,
        expected: float,
    ) -> Finding:
        where = _where(subject)
        volume = current.get(denominator)
        return _finding(
            subject,
            current,
            kind="anomaly",
            metric=metric,
            severity="critical" if expected >= self.critical_expected else "warning",
            value=0.0,
            baseline=base_rate,
            change_pct=-100.0,
            summary=(
                f"{label} collapsed to 0 in the last {span_text(current.duration_s)}: "
                f"{volume_text(volume)} {denominator}, no {numerator} (expected {expected:.0f})"
            ),
            description=(
                f"{where} still gets {denominator} ({volume:.0f}) but no {numerator}; the baseline "
                f"{label} of {percent_text(base_rate)} predicted {expected:.0f}.\n"
                + _CHECKS[metric].format(where=where)
            ),
            evidence={
                numerator: 0,
                denominator: volume,
                f"expected_{numerator}": expected,
                "baseline_rate": base_rate,
                "p_value": math.exp(-expected),
                "test": "Poisson probability of none",
            },
        )


def _active(observation: Observation) -> bool:
    """Whether the channel sent anything at all in this window."""
    return any(value > 0 for value in observation.counts.values())


def _tracker_events(observation: Observation) -> float:
    return sum(observation.get(name) for name in CLICK_TRACKER_COUNTS)


def _ratio(windows: Sequence[Observation], numerator: str, denominator: str) -> float:
    """Pooled ratio of a group of windows; 0 (predicts nothing) when the denominator is 0."""
    den = sum(o.get(denominator) for o in windows)
    return sum(o.get(numerator) for o in windows) / den if den > 0 else 0.0


def _rate(windows: Sequence[Observation], value: Callable[[Observation], float]) -> float:
    seconds = sum(o.duration_s for o in windows)
    return sum(value(o) for o in windows) / seconds if seconds > 0 else 0.0


# -- the bundle -------------------------------------------------------------------------------------------


def _default_detectors() -> tuple[Detector, ...]:
    return (DropToZero(), RatioDrop("ctr"), RatioDrop("cvr"), RoiDrop(), SpendSurge())


@dataclass(frozen=True)
class Detectors:
    """The detectors run together on one history, with one finding per fingerprint.

    Order matters only for ties: when two detectors describe the same condition (DropToZero's CTR
    collapse and RatioDrop's CTR drop share the fingerprint ``anomaly:ctr:…``), the more severe
    finding wins, and on equal severity the earlier detector (the more specific wording) does.
    """

    detectors: tuple[Detector, ...] = field(default_factory=_default_detectors)
    timer_detectors: tuple[Detector, ...] = field(default_factory=lambda: (DropToZero(),))

    def run(self, history: Sequence[Observation], subject: Subject) -> list[Finding]:
        """Judge the newest window of ``history`` (a window closed by event time)."""
        return _merge(detector(history, subject) for detector in self.detectors)

    def on_timer(self, history: Sequence[Observation], subject: Subject) -> list[Finding]:
        """Judge a window closed by the wall clock, where silence is the evidence (drop to zero)."""
        return _merge(detector(history, subject) for detector in self.timer_detectors)


def _merge(findings: Iterable[Finding | None]) -> list[Finding]:
    chosen: dict[str, Finding] = {}
    for finding in findings:
        if finding is None:
            continue
        held = chosen.get(finding.fingerprint)
        if held is None or SEVERITY_ORDER[finding.severity] > SEVERITY_ORDER[held.severity]:
            chosen[finding.fingerprint] = finding
    return list(chosen.values())
