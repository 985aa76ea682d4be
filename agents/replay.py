"""Recorded traffic through the worker's own judge, minute by minute, without Kafka or Redis (no I/O).

``adpulse backtest events.jsonl`` and ``benchmarks/alert_quality.py`` use this: events (or simulated
counts) go into 1-minute, 1-hour and 1-day buckets shaped like the worker's table, then every window is
judged as the worker judges it after a backfill: one lifecycle round per window end, in event-time order,
the closed rows of that end (each channel, each of its campaigns) through
:meth:`agents.evaluate.Evaluator.judge_windows` and :meth:`~agents.evaluate.Evaluator.decide`, with the
round's event time as the lifecycle's clock. So a backtest shows exactly the alerts the live worker would
have sent for the same events (``tests/integration/test_alerts_pipeline.py`` checks it on the real stack).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import orjson

from agents.evaluate import Evaluator
from agents.health import HealthMonitor
from agents.partials import BucketValue
from agents.snapshot import KpiRow, closed_rows
from alerts.payload import AlertJson
from streams.codec import N_SLOTS, Accepted, decode
from streams.topics import topic_of
from streams.windows import MINUTE_S, TOTAL, WINDOWS, Calendar


@dataclass
class MemoryBuckets:
    """The worker's bucket table in memory: (channel, window, start) → ``{"b": {campaign: counts}}``."""

    calendar: Calendar
    values: dict[tuple[str, str, int], BucketValue] = field(default_factory=dict)
    first_s: dict[str, int] = field(default_factory=dict)
    last_s: int | None = None

    def add(self, channel: str, campaign: str, ts_s: int, contribution: Iterable[tuple[int, int]]) -> None:
        """Count one event (``(slot, amount)`` pairs, money in micros) in its minute, hour and day, and in the
        channel's all-time total."""
        pairs = list(contribution)
        for window, start in self._buckets(ts_s):
            vector = self._vector(channel, campaign, window, start)
            for slot, amount in pairs:
                vector[slot] += amount
        self._seen(channel, ts_s)

    def add_minute(self, channel: str, campaign: str, start_s: int, vector: Iterable[int]) -> None:
        """Count a whole minute's counter vector (simulations)."""
        counts = list(vector)
        for window, start in self._buckets(start_s):
            target = self._vector(channel, campaign, window, start)
            for slot in range(N_SLOTS):
                target[slot] += counts[slot]
        self._seen(channel, start_s)

    def _buckets(self, ts_s: int) -> list[tuple[str, int]]:
        # The all-time total is the whole file's, where the live table's grows as events come: the data
        # health screen reads a clicks-per-spend ratio from it, which settles within minutes.
        return [(window, self.calendar.start(window, ts_s)) for window in WINDOWS] + [(TOTAL, 0)]

    def lookup(self, channel: str, window: str, start_s: int) -> BucketValue | None:
        """What the worker's table holds for this bucket (``None``: nothing)."""
        return self.values.get((channel, window, start_s))

    def _vector(self, channel: str, campaign: str, window: str, start: int) -> list[int]:
        value = self.values.get((channel, window, start))
        if value is None:
            value = self.values[(channel, window, start)] = {"b": {}, "p": {}, "f": {}}
        # A replay adds into its rows in place (lists, not the table's tuples): nothing else holds them, and
        # they live for one run.
        rows = cast(dict[str, list[int]], value["b"])
        vector = rows.get(campaign)
        if vector is None:
            vector = rows[campaign] = [0] * N_SLOTS
        return vector

    def _seen(self, channel: str, ts_s: int) -> None:
        minute = ts_s - ts_s % MINUTE_S
        if minute < self.first_s.get(channel, minute + 1):
            self.first_s[channel] = minute
        if self.last_s is None or ts_s > self.last_s:
            self.last_s = ts_s


def fold_event_lines(
    lines: Iterable[bytes],
    buckets: MemoryBuckets,
    *,
    currency: str = "CNY",
    max_record_bytes: int = 64 * 1024,
) -> Counter[str]:
    """Decode JSONL tracker events with the pipeline's own decoder into ``buckets``, each ``event_id`` once.

    Rejected lines are counted by reason (as the DLQ would see them); the counter is returned.
    """
    notes: Counter[str] = Counter()
    seen: set[str] = set()
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            notes["rejected not_json"] += 1
            continue
        topic = topic_of(doc) if isinstance(doc, dict) else None
        if topic is None:
            notes["rejected unknown_topic"] += 1
            continue
        decoded = decode(topic, line, currency, max_record_bytes)
        if not isinstance(decoded, Accepted):
            notes[f"rejected {decoded.reason}"] += 1
            continue
        if decoded.event_id in seen:
            notes["duplicate"] += 1
            continue
        seen.add(decoded.event_id)
        notes["accepted"] += 1
        buckets.add(decoded.channel, decoded.campaign, decoded.ts_ms // 1000, decoded.contribution)
    return notes


def rounds(buckets: MemoryBuckets, until_s: int | None = None) -> Iterator[tuple[int, list[KpiRow]]]:
    """Every window end from the first minute on, with the rows that close then, in event-time order.

    As in the worker, a channel's windows close from its first event on, silent ones included; the last
    window closes at ``until_s`` (default: the newest event's minute, rounded up).
    """
    if buckets.last_s is None:
        return
    calendar = buckets.calendar
    horizon = until_s if until_s is not None else -(-buckets.last_s // MINUTE_S) * MINUTE_S
    first = min(buckets.first_s.values())
    end = first + MINUTE_S
    while end <= horizon:
        rows: list[KpiRow] = []
        for channel, since in sorted(buckets.first_s.items()):
            if end - MINUTE_S < since:
                continue
            for window in WINDOWS:
                start = calendar.start(window, end - 1)
                if calendar.end(window, start) == end and calendar.end(window, start) > since:
                    rows += closed_rows(channel, window, [start], buckets.lookup, calendar)
        yield end, rows
        end += MINUTE_S


def replay(
    judge: Evaluator,
    buckets: MemoryBuckets,
    *,
    screen: HealthMonitor | None = None,
    until_s: int | None = None,
    on_round: Callable[[int], None] | None = None,
) -> list[AlertJson]:
    """The alert JSON the live worker would have written for these buckets, in order.

    Exactly the worker's path after a backfill (``agents.buckets._judge``): claim the rows closing at each
    window end, judge them, let the data-health ``screen`` add its silent-tracker findings and withhold the
    funnel findings a silent minute makes meaningless, run the lifecycle at that event time.
    """
    written: list[AlertJson] = []
    for end, rows in rounds(buckets, until_s):
        claimed = [row for row in rows if judge.claim(row, row.window_end or end)]
        if claimed:
            findings, judged = judge.judge_windows(claimed, buckets.lookup)
            if screen is not None:
                findings, judged = screen.screen(findings, judged, claimed, buckets.lookup)
            _, payloads = judge.decide(findings, judged, datetime.fromtimestamp(end, UTC))
            written += payloads
        if on_round is not None:
            on_round(end)
    return written
