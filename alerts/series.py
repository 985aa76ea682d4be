"""Series detectors: anomalies in a KPI series that has no counts behind it (hourly CPC from an ad
exchange, a KPI of closed windows). Pure.

:class:`SeasonalShift` judges each point against a robust seasonal baseline. :class:`RollingZScore`, the
usual "3 sigma over a rolling window" rule, is here as the comparison baseline so the comparison in
docs/backtest.md can be rerun, not as something to deploy. :mod:`alerts.backtest` runs them over a series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from alerts.stats import MAD_TO_SIGMA, median
from alerts.wording import DAY_S

Direction = Literal["both", "up", "down"]


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One row of a KPI series: epoch seconds, the value (``None``: no data) and the row's own timestamp."""

    ts_s: int
    value: float | None
    timestamp: str


@dataclass(frozen=True, slots=True)
class SeriesFlag:
    """A point a series detector finds anomalous, with the numbers behind the verdict."""

    expected: float
    z: float
    change: float  # relative: value / expected − 1
    evidence: dict[str, Any]


class SeriesDetector:
    """A detector over a KPI series without counts: ``scan`` returns a flag or ``None`` per point."""

    name: str = "series"

    def scan(self, points: Sequence[SeriesPoint]) -> list[SeriesFlag | None]:
        raise NotImplementedError


@dataclass(frozen=True)
class SeasonalShift(SeriesDetector):
    """A robust seasonal detector for a positive KPI series (CPC, CPM, CTR, ROI), in log space.

    Prices and rates move multiplicatively, so the series is judged as log(value); a value ≤ 0 or
    missing is "no data" and skipped. For each point:

    - *expected*: the median of the same time of day on the previous ``seasonal_days`` days (at least
      ``min_seasonal`` of them), else the median of the previous ``recent`` values;
    - *spread*: 1.4826 × MAD of the last ``scale_window`` residuals (log value − its seasonal expected),
      i.e. the noise left once the daily shape is removed; before ``min_residuals`` residuals exist,
      the MAD of the recent values is used;
    - the point fires when it is at least ``min_change`` above (or the same factor below) both the
      expected value and the median of the recent values, and ``z_min`` spreads away.

    Medians and MADs ignore the outliers being hunted (a spike does not raise the bar for the next
    one, as it does for a rolling mean and standard deviation); the seasonal term stops the daily
    peak from firing every day; the recent-median gate stops a level shift from firing on every
    point once the days before it no longer look alike. Defaults: ``min_change`` 0.5 is the issue's
    "50 %" (and ÷1.5 for drops); ``z_min`` 5 because the residuals of real hourly prices are
    heavy-tailed, so 3–4 robust sigmas happen every few days (measured in docs/backtest.md).
    """

    min_change: float = 0.5
    z_min: float = 5.0
    recent: int = 24
    seasonal_days: int = 7
    min_seasonal: int = 3
    scale_window: int = 168
    min_residuals: int = 24
    direction: Direction = "both"
    name: str = "robust"

    def __post_init__(self) -> None:
        if self.min_change <= 0 or self.z_min <= 0:
            raise ValueError("min_change and z_min must be positive")

    def scan(self, points: Sequence[SeriesPoint]) -> list[SeriesFlag | None]:
        logs_by_ts: dict[int, float] = {}
        recent_logs: list[float] = []
        residuals: list[float] = []
        flags: list[SeriesFlag | None] = []
        for point in points:
            if point.value is None or not point.value > 0 or not math.isfinite(point.value):
                flags.append(None)
                continue
            log_value = math.log(point.value)
            seasonal = [
                logs_by_ts[point.ts_s - d * DAY_S]
                for d in range(1, self.seasonal_days + 1)
                if point.ts_s - d * DAY_S in logs_by_ts
            ]
            window = recent_logs[-self.recent :]
            flag = None
            if len(window) >= self.recent:
                flag = self._judge(log_value, window, seasonal, residuals[-self.scale_window :])
            if len(seasonal) >= self.min_seasonal:
                residuals.append(log_value - median(seasonal))
            recent_logs.append(log_value)
            logs_by_ts[point.ts_s] = log_value
            flags.append(flag)
        return flags

    def _judge(
        self, log_value: float, window: list[float], seasonal: list[float], residuals: list[float]
    ) -> SeriesFlag | None:
        recent_median = median(window)
        if len(seasonal) >= self.min_seasonal and len(residuals) >= self.min_residuals:
            expected = median(seasonal)
            spread = MAD_TO_SIGMA * median([abs(r - median(residuals)) for r in residuals])
            basis = "same time on earlier days"
        else:
            expected = recent_median
            spread = MAD_TO_SIGMA * median([abs(v - recent_median) for v in window])
            basis = "recent values"
        spread = max(spread, 1e-9)
        deviation = log_value - expected
        from_recent = log_value - recent_median
        z = deviation / spread
        bar = math.log1p(self.min_change)
        up = deviation >= bar and from_recent >= bar and z >= self.z_min
        down = deviation <= -bar and from_recent <= -bar and z <= -self.z_min
        if not ((up and self.direction != "down") or (down and self.direction != "up")):
            return None
        return SeriesFlag(
            expected=math.exp(expected),
            z=z,
            change=math.expm1(deviation),
            evidence={
                "expected": math.exp(expected),
                "expected_from": basis,
                "seasonal_values": len(seasonal),
                "recent_median": math.exp(recent_median),
                "robust_z": z,
                "spread_log": spread,
                "test": "robust seasonal z (log scale; median, 1.4826 × MAD of residuals)",
                "min_change": self.min_change,
                "z_min": self.z_min,
            },
        )


@dataclass(frozen=True)
class RollingZScore(SeriesDetector):
    """The comparison baseline: |value − mean| > ``sigmas`` × std over the previous ``window`` values.

    The rule most dashboards ship. Kept only so that ``adpulse backtest --method zscore`` reproduces
    the comparison in docs/backtest.md; its mean and standard deviation are inflated by the very spikes
    it should find, and a daily peak is an outlier against the night before it.
    """

    window: int = 24
    sigmas: float = 3.0
    name: str = "zscore"

    def scan(self, points: Sequence[SeriesPoint]) -> list[SeriesFlag | None]:
        values: list[float] = []
        flags: list[SeriesFlag | None] = []
        for point in points:
            if point.value is None or not math.isfinite(point.value):
                flags.append(None)
                continue
            flag = None
            if len(values) >= self.window:
                recent = values[-self.window :]
                mean = sum(recent) / len(recent)
                std = math.sqrt(sum((v - mean) ** 2 for v in recent) / len(recent))
                if std > 0 and abs(point.value - mean) > self.sigmas * std:
                    z = (point.value - mean) / std
                    change = point.value / mean - 1.0 if mean else math.inf
                    flag = SeriesFlag(
                        expected=mean,
                        z=z,
                        change=change,
                        evidence={
                            "mean": mean,
                            "std": std,
                            "z": z,
                            "test": f"rolling {self.sigmas:g}-sigma z-score over {self.window} values",
                        },
                    )
            values.append(point.value)
            flags.append(flag)
        return flags
