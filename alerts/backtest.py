"""Backtests: replay recorded events or a KPI series through the detectors and count the alerts. Pure.

Two inputs (``adpulse backtest FILE``):

- **Events** (JSONL, CONTRACT §1): every line is one tracker event, decoded by the pipeline's own
  ``streams.codec.decode`` and folded into tumbling windows per channel; then the detectors of
  :mod:`alerts.detectors` judge every closed window, as the worker would.
- **A KPI series** (CSV ``timestamp,value``, e.g. hourly CPC from an ad exchange): there are no counts
  to test, so a series detector of :mod:`alerts.series` judges each point (``SeasonalShift``, or
  ``RollingZScore`` for the comparison).

Reading the files is the CLI's job (:mod:`adpulse.backtest_cli`); this module takes their lines.

An *alert* in a backtest is one episode: a fingerprint that holds over consecutive windows (or points)
is one alert, reported at its first window, as the alert lifecycle notifies once per firing.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from itertools import pairwise
from typing import Any, Final

import orjson

from alerts.detectors import Detectors, Observation, Subject
from alerts.kpi import RATIOS, ratio
from alerts.model import Finding
from alerts.series import SeriesDetector, SeriesFlag, SeriesPoint
from alerts.stats import median
from alerts.wording import DAY_S, rfc3339
from streams.codec import MONEY_SLOTS, SLOT_NAMES, Accepted, decode
from streams.events import MICROS
from streams.topics import topic_of
from streams.windows import Calendar

_UNITS: Final = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": DAY_S}


def parse_window(text: str) -> tuple[str, int]:
    """``"10m"`` → ``("10m", 600)``; minutes, hours or days (``1d`` is a calendar day in the zone)."""
    match = re.fullmatch(r"\s*(\d+)\s*(s|m|min|h|d)\s*", text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"window {text!r}: use a duration such as 1m, 10m, 1h or 1d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds % 60 or (seconds > 3600 and seconds % 3600) or (seconds > DAY_S and seconds % DAY_S):
        raise ValueError(f"window {text!r}: use whole minutes, hours or days")
    return text.strip(), seconds


# -- alerts and episodes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BacktestAlert:
    """One alert episode: the finding of its first window, where it was, and how long it held."""

    timestamp: str
    ts_s: int
    finding: Finding
    windows: int = 1
    last_timestamp: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The alert line of ``adpulse backtest --json``: CONTRACT §3 fields plus the row's timestamp."""
        f = self.finding
        return {
            "timestamp": self.timestamp,
            "fingerprint": f.fingerprint,
            "status": "firing",
            "kind": f.kind,
            "severity": f.severity,
            "metric": f.metric,
            "channel": f.channel,
            "campaign": f.campaign,
            "window": f.window,
            "window_start": f.window_start,
            "window_end": f.window_end,
            "value": f.value,
            "baseline": f.baseline,
            "threshold": f.threshold,
            "change_pct": f.change_pct,
            "evidence": f.evidence,
            "summary": f.summary,
            "description": f.description,
            "windows": self.windows,
            "last_timestamp": self.last_timestamp or self.timestamp,
        }


class _Episodes:
    """Turns per-window findings into alert episodes (consecutive windows of one fingerprint)."""

    def __init__(self) -> None:
        self.alerts: list[BacktestAlert] = []
        self._open: dict[str, int] = {}  # fingerprint -> index in alerts, while it keeps holding

    def step(self, timestamp: str, ts_s: int, findings: Iterable[Finding]) -> None:
        holding: dict[str, int] = {}
        for finding in findings:
            fp = finding.fingerprint
            if fp in self._open:
                index = self._open[fp]
                held = self.alerts[index]
                self.alerts[index] = BacktestAlert(
                    held.timestamp, held.ts_s, held.finding, held.windows + 1, timestamp
                )
            else:
                index = len(self.alerts)
                self.alerts.append(BacktestAlert(timestamp, ts_s, finding))
            holding[fp] = index
        self._open = holding


@dataclass
class BacktestResult:
    """Alerts of a backtest and what was read."""

    alerts: list[BacktestAlert]
    first_s: int | None
    last_s: int | None
    judged: int = 0
    notes: dict[str, int] = field(default_factory=dict)

    def per_day(self, zone: tzinfo) -> dict[str, int]:
        """Alerts by the day (in ``zone``) of their first window, every day of the span included."""
        if self.first_s is None or self.last_s is None:
            return {}
        days: dict[str, int] = {}
        start = datetime.fromtimestamp(self.first_s, zone).date()
        end = datetime.fromtimestamp(self.last_s, zone).date()
        for ordinal in range(start.toordinal(), end.toordinal() + 1):
            days[datetime.fromordinal(ordinal).date().isoformat()] = 0
        for alert in self.alerts:
            day = datetime.fromtimestamp(alert.ts_s, zone).date().isoformat()
            days[day] = days.get(day, 0) + 1
        return days

    def summary(self, zone: tzinfo) -> str:
        """Alerts per day, for humans: the total, the mean and the noisiest day."""
        days = self.per_day(zone)
        if not days:
            return "nothing to judge: the input holds no complete window"
        kinds = Counter(f"{a.finding.kind}/{a.finding.metric}" for a in self.alerts)
        worst = max(days.items(), key=lambda item: item[1])
        lines = [
            (
                f"{len(self.alerts)} alerts over {len(days)} days "
                f"({len(self.alerts) / len(days):.2f} per day; "
                f"busiest {worst[0]}: {worst[1]}), {self.judged} windows judged"
            ),
        ]
        if kinds:
            lines.append("by kind: " + ", ".join(f"{name} {count}" for name, count in sorted(kinds.items())))
        if self.notes:
            lines.append(
                "input: " + ", ".join(f"{name} {count}" for name, count in sorted(self.notes.items()))
            )
        return "\n".join(lines)


# -- events -------------------------------------------------------------------------------------------


@dataclass
class EventWindows:
    """Events folded into tumbling windows: per channel, window start → counts (money in units)."""

    window: str
    window_s: int
    windows: dict[str, dict[int, list[int]]] = field(default_factory=lambda: defaultdict(dict))
    notes: Counter[str] = field(default_factory=Counter)
    last_ts_ms: int | None = None

    def observations(self, calendar: Calendar) -> dict[str, list[Observation]]:
        """Every closed window of every channel from its first event on, silent ones as zeros.

        A window is closed when the newest event time, rounded up to the minute, has reached its end:
        a file cut at 12:00 closes the 11:00 hour, one cut at 11:59:59 too (its last second is in).
        """
        if self.last_ts_ms is None:
            return {}
        horizon = -(-self.last_ts_ms // 60_000) * 60
        result: dict[str, list[Observation]] = {}
        for channel, buckets in sorted(self.windows.items()):
            start = min(buckets)
            rows = []
            while True:
                end = self._end(calendar, start)
                if end > horizon:
                    break
                vector = buckets.get(start)
                counts = {
                    name: (vector[slot] / MICROS if slot in MONEY_SLOTS else float(vector[slot]))
                    if vector
                    else 0.0
                    for slot, name in enumerate(SLOT_NAMES)
                }
                rows.append(Observation(start, end, counts))
                start = end
            result[channel] = rows
        return result

    def start_of(self, calendar: Calendar, ts_s: int) -> int:
        if self.window in ("1m", "1h", "1d"):
            return calendar.start(self.window, ts_s)
        return ts_s - ts_s % self.window_s

    def _end(self, calendar: Calendar, start: int) -> int:
        return (
            calendar.end(self.window, start) if self.window in ("1m", "1h", "1d") else start + self.window_s
        )


def fold_events(
    lines: Iterable[bytes],
    window: str,
    calendar: Calendar,
    *,
    currency: str = "CNY",
    max_record_bytes: int = 64 * 1024,
) -> EventWindows:
    """Fold JSONL event lines into windows, channel level, each ``event_id`` once.

    Lateness does not apply: the whole file is known, so every valid event counts. Rejected lines are
    counted by reason in ``notes`` (as the DLQ would see them), never silently dropped.
    """
    _, window_s = parse_window(window)
    folded = EventWindows(window, window_s)
    seen: set[str] = set()
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            folded.notes["rejected not_json"] += 1
            continue
        topic = topic_of(doc) if isinstance(doc, dict) else None
        if topic is None:
            folded.notes["rejected unknown_topic"] += 1
            continue
        decoded = decode(topic, line, currency, max_record_bytes)
        if not isinstance(decoded, Accepted):
            folded.notes[f"rejected {decoded.reason}"] += 1
            continue
        if decoded.event_id in seen:
            folded.notes["duplicate"] += 1
            continue
        seen.add(decoded.event_id)
        folded.notes["accepted"] += 1
        start = folded.start_of(calendar, decoded.ts_ms // 1000)
        vector = folded.windows[decoded.channel].get(start)
        if vector is None:
            vector = folded.windows[decoded.channel][start] = [0] * len(SLOT_NAMES)
        for slot, amount in decoded.contribution:
            vector[slot] += amount
        if folded.last_ts_ms is None or decoded.ts_ms > folded.last_ts_ms:
            folded.last_ts_ms = decoded.ts_ms
    return folded


def _lookback(window_s: int, detectors_days: int = 7, recent: int = 24) -> int:
    """Windows of history a judgement can use: the recent ones and a week of the same time of day."""
    return max(recent, detectors_days * DAY_S // window_s) + 1


def backtest_events(
    observations: dict[str, list[Observation]],
    window: str,
    detectors: Detectors,
    zone: tzinfo,
    *,
    metrics: Sequence[str] = (),
) -> BacktestResult:
    """Run ``detectors`` over every closed window of every channel; ``metrics`` filters the findings."""
    alerts: list[BacktestAlert] = []
    judged = 0
    starts = [o.start_s for rows in observations.values() for o in rows]
    _, window_s = parse_window(window)
    lookback = _lookback(window_s)
    for channel, rows in observations.items():
        subject = Subject(channel, None, window, zone)
        episodes = _Episodes()
        for index, row in enumerate(rows):
            history = rows[max(0, index + 1 - lookback) : index + 1]
            findings = [f for f in detectors.run(history, subject) if not metrics or f.metric in metrics]
            episodes.step(rfc3339(row.start_s, zone), row.start_s, findings)
            judged += 1
        alerts.extend(episodes.alerts)
    alerts.sort(key=lambda a: (a.ts_s, a.finding.channel, a.finding.fingerprint))
    return BacktestResult(alerts, min(starts, default=None), max(starts, default=None), judged)


def kpi_series(rows: Sequence[Observation], metric: str, zone: tzinfo) -> list[SeriesPoint]:
    """One KPI of a channel's windows as a series (``None`` where its denominator is 0)."""
    if metric == "spend":
        return [SeriesPoint(o.start_s, o.get("spend"), rfc3339(o.start_s, zone)) for o in rows]
    numerator, denominator = RATIOS[metric]
    return [
        SeriesPoint(o.start_s, ratio(o.get(numerator), o.get(denominator)), rfc3339(o.start_s, zone))
        for o in rows
    ]


def backtest_event_series(
    observations: dict[str, list[Observation]],
    window: str,
    detector: SeriesDetector,
    zone: tzinfo,
    *,
    metrics: Sequence[str] = ("ctr", "cvr", "roi", "spend"),
) -> BacktestResult:
    """A series detector (e.g. :class:`RollingZScore`) on each channel's KPIs, for comparison."""
    alerts: list[BacktestAlert] = []
    judged = 0
    starts = [o.start_s for rows in observations.values() for o in rows]
    for channel, rows in observations.items():
        for metric in metrics:
            points = kpi_series(rows, metric, zone)
            result = backtest_series(points, detector, name=channel, metric=metric, window=window, zone=zone)
            alerts.extend(result.alerts)
            judged += result.judged
    alerts.sort(key=lambda a: (a.ts_s, a.finding.channel, a.finding.fingerprint))
    return BacktestResult(alerts, min(starts, default=None), max(starts, default=None), judged)


# -- series ---------------------------------------------------------------------------------------------


def read_series_csv(lines: Iterable[str], zone: tzinfo) -> list[SeriesPoint]:
    """Rows of a ``timestamp,value`` CSV (a header row is skipped), sorted by time.

    Timestamps: RFC 3339 / ISO 8601 (without an offset: in ``zone``) or epoch seconds / milliseconds.
    An empty, ``null`` or non-numeric value is "no data".
    """
    points = []
    for number, row in enumerate(csv.reader(lines), start=1):
        if not row or not row[0].strip():
            continue
        if len(row) < 2:
            raise ValueError(f"line {number}: expected 'timestamp,value', got {','.join(row)!r}")
        stamp, text = row[0].strip(), row[1].strip()
        try:
            ts_s = _parse_timestamp(stamp, zone)
        except ValueError:
            if number == 1:
                continue  # the header
            raise ValueError(f"line {number}: cannot read the timestamp {stamp!r}") from None
        try:
            value: float | None = float(text)
        except ValueError:
            value = None
        if value is not None and not math.isfinite(value):
            value = None
        points.append(SeriesPoint(ts_s, value, stamp))
    points.sort(key=lambda p: p.ts_s)
    return points


def _parse_timestamp(text: str, zone: tzinfo) -> int:
    if re.fullmatch(r"\d{9,13}(\.\d+)?", text):
        number = float(text)
        return int(number / 1000 if number >= 1e11 else number)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return int(parsed.timestamp())


def backtest_series(
    points: Sequence[SeriesPoint],
    detector: SeriesDetector,
    *,
    name: str = "series",
    metric: str = "value",
    window: str | None = None,
    zone: tzinfo = UTC,
) -> BacktestResult:
    """Run a series detector over ``points``; each episode is an alert at its first row's timestamp."""
    episodes = _Episodes()
    judged = 0
    step = _typical_step(points)
    for point, flag in zip(points, detector.scan(points), strict=True):
        judged += point.value is not None
        findings = (
            [] if flag is None else [_series_finding(point, flag, detector, name, metric, window, step, zone)]
        )
        episodes.step(point.timestamp, point.ts_s, findings)
    first = points[0].ts_s if points else None
    last = points[-1].ts_s if points else None
    return BacktestResult(episodes.alerts, first, last, judged)


def _typical_step(points: Sequence[SeriesPoint]) -> int:
    gaps = [b.ts_s - a.ts_s for a, b in pairwise(points) if b.ts_s > a.ts_s]
    return int(median(gaps)) if gaps else 3600


def _series_finding(
    point: SeriesPoint,
    flag: SeriesFlag,
    detector: SeriesDetector,
    name: str,
    metric: str,
    window: str | None,
    step: int,
    zone: tzinfo,
) -> Finding:
    value = point.value if point.value is not None else math.nan
    direction = "rose" if flag.change >= 0 else "fell"
    factor = value / flag.expected if flag.expected else math.inf
    summary = (
        f"{metric.upper()} {direction} to {value:.4g} at {point.timestamp} "
        f"(×{factor:.2f} the expected {flag.expected:.4g}, z {flag.z:.1f}, {detector.name})"
    )
    description = (
        f"{metric} of {name} was {value:.6g}; expected {flag.expected:.6g}. "
        f"{flag.evidence.get('test', '')}.\n"
        f"Check bids, auction competition and inventory on {name} around {point.timestamp}."
    )
    return Finding(
        kind="anomaly",
        metric=metric,
        severity="warning",
        channel=name,
        campaign=None,
        value=value,
        baseline=flag.expected,
        change_pct=flag.change * 100.0,
        summary=summary,
        description=description,
        evidence={"method": detector.name, **flag.evidence},
        window=window,
        window_start=rfc3339(point.ts_s, zone),
        window_end=rfc3339(point.ts_s + step, zone),
    )
