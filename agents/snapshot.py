"""KPI snapshots: the current and the last complete window per channel and campaign. Pure.

The Faust timer hands in a lookup into the bucket table and the event-time watermark; this module
turns them into rows that go to Redis (``adpulse kpis``) and to Prometheus (``SnapshotCollector``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from agents.partials import CEILING, BucketValue, Row, row_totals, totals
from alerts.kpi import kpis
from alerts.wording import rfc3339
from streams.codec import MONEY_SLOTS, N_SLOTS, SLOT_NAMES
from streams.events import MICROS, NO_CAMPAIGN
from streams.windows import TOTAL, WINDOWS, Calendar

Lookup = Callable[[str, str, int], BucketValue | None]


def counts_of(vector: Sequence[int]) -> dict[str, float]:
    """Named counts of a counter vector, money in currency units; a count saturates at ``CEILING`` (sums
    of many campaigns could outgrow what JSON encoders take)."""
    return {
        name: (min(vector[slot], CEILING) / MICROS if slot in MONEY_SLOTS else min(vector[slot], CEILING))
        for slot, name in enumerate(SLOT_NAMES)
    }


class NamedCounts(Mapping[str, dict[str, float]]):
    """A bucket's counts per campaign, named (``counts_of``) only when one is read: the sequential judge keeps
    a channel's closed hours of the last day and the same hour of the last week for its baselines, and
    named counts for every campaign in them cost ~420 bytes each (a dict of 8 numbers) where this keeps a
    dict entry that shares the bucket's row."""

    __slots__ = ("_rows",)

    def __init__(self, value: BucketValue) -> None:
        self._rows = row_totals(value)

    def __getitem__(self, campaign: str) -> dict[str, float]:
        return counts_of(self._rows[campaign])

    def get(self, campaign: str, default: Any = None) -> Any:
        row: Row | None = self._rows.get(campaign)
        return default if row is None else counts_of(row)

    def __contains__(self, campaign: object) -> bool:
        return campaign in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass(frozen=True, slots=True)
class KpiRow:
    """One window of one channel (``campaign == "-"``) or one (channel, campaign)."""

    channel: str
    campaign: str
    window: str  # "1m" | "1h" | "1d" | "total"
    which: str  # "current" | "last" | "closed" | "total"
    window_start: int
    window_end: int | None
    complete: bool
    counts: dict[str, float] = field(default_factory=dict)

    def ratios(self) -> dict[str, float | None]:
        """CTR, CVR, ROI, AOV, CPC, CPA and the funnel; ``None`` where the denominator is 0."""
        return kpis(self.counts)

    def plus(self, other: KpiRow) -> KpiRow:
        """The same window with ``other``'s counts added (used to merge channels into ``other``)."""
        summed = {name: self.counts[name] + other.counts[name] for name in self.counts}
        return KpiRow(
            self.channel,
            self.campaign,
            self.window,
            self.which,
            self.window_start,
            self.window_end,
            self.complete,
            summed,
        )

    @property
    def field(self) -> str:
        """The Redis hash field of this row."""
        return f"{self.channel}|{self.campaign}|{self.window}|{self.which}"

    def to_json(self, zone: ZoneInfo) -> dict[str, object]:
        """The element of ``adpulse kpis --json`` (CONTRACT.md §5)."""
        return {
            "channel": self.channel,
            "campaign": self.campaign,
            "window": self.window,
            "which": self.which,
            "window_start": rfc3339(self.window_start, zone),
            "window_end": rfc3339(self.window_end, zone) if self.window_end is not None else None,
            "complete": self.complete,
            **{name: value for name, value in self.counts.items()},
            **self.ratios(),
        }


def _rows_for(
    channel: str,
    window: str,
    which: str,
    start: int,
    end: int | None,
    complete: bool,
    value: BucketValue | None,
) -> list[KpiRow]:
    per_campaign = totals(value) if value is not None else {}
    channel_vector = [0] * N_SLOTS
    rows = []
    for campaign, vector in sorted(per_campaign.items()):
        for slot in range(N_SLOTS):
            channel_vector[slot] += vector[slot]
        if campaign != NO_CAMPAIGN:
            rows.append(KpiRow(channel, campaign, window, which, start, end, complete, counts_of(vector)))
    rows.append(KpiRow(channel, NO_CAMPAIGN, window, which, start, end, complete, counts_of(channel_vector)))
    return rows


def build_rows(
    channels: Iterable[str], lookup: Lookup, calendar: Calendar, watermark_s: float, grace_s: float
) -> list[KpiRow]:
    """Rows for every channel: current and last complete window of 1m, 1h, 1d, and the all-time total.

    A window is complete once the watermark has passed its end plus the grace period; the last
    complete window is reported even when it holds no events (a silent channel shows zeros).
    """
    now = int(watermark_s)
    rows: list[KpiRow] = []
    for channel in sorted(channels):
        for window in WINDOWS:
            current = calendar.start(window, now)
            last = last_complete_start(calendar, window, watermark_s, grace_s)
            for which, start in (("current", current), ("last", last)):
                end = calendar.end(window, start)
                complete = end + grace_s <= watermark_s
                rows.extend(
                    _rows_for(channel, window, which, start, end, complete, lookup(channel, window, start))
                )
        rows.extend(_rows_for(channel, TOTAL, "total", 0, None, False, lookup(channel, TOTAL, 0)))
    return rows


def last_complete_start(calendar: Calendar, window: str, watermark_s: float, grace_s: float) -> int:
    """Start of the newest ``window`` bucket whose end plus the grace period the watermark has passed."""
    return calendar.previous(window, calendar.start(window, int(watermark_s - grace_s)))


def newly_closed(
    calendar: Calendar,
    window: str,
    starts_with_data: Iterable[int],
    last_emitted: int | None,
    last_complete: int,
) -> list[int]:
    """Bucket starts to record as closed: every bucket in ``(last_emitted, last_complete]``.

    Buckets with data are all recorded; empty ones only when they follow the last recorded one, so a
    silent channel's zero windows are recorded as they close but a restart does not invent history.
    """
    chosen = {
        start
        for start in starts_with_data
        if start <= last_complete and (last_emitted is None or start > last_emitted)
    }
    if last_emitted is not None:
        start = last_complete
        while start > last_emitted:
            chosen.add(start)
            start = calendar.previous(window, start)
    return sorted(chosen)


def closed_rows(
    channel: str, window: str, starts: Iterable[int], lookup: Lookup, calendar: Calendar
) -> list[KpiRow]:
    """Rows of closed windows (``which == "closed"``), for the history kept in Redis."""
    rows: list[KpiRow] = []
    for start in starts:
        end = calendar.end(window, start)
        rows.extend(_rows_for(channel, window, "closed", start, end, True, lookup(channel, window, start)))
    return rows


def global_watermark(marks: Iterable[tuple[float, float, bool]], now_s: float, idle_s: float) -> float | None:
    """Event-time watermark over all source partitions, from ``(watermark_s, last_active_wall_s, caught_up)``.

    The slowest partition holds event time back, unless it is idle: caught up (nothing left to read)
    and silent for ``idle_s``. A partition that is merely behind is never idle, however long since
    its last fetch, and one not read yet (watermark 0) holds time back at "unknown" (``None``). When
    every partition is idle, nothing is in flight: event time is taken to be the wall clock minus
    ``idle_s`` (or the newest watermark, if later), so the windows of a channel that stops sending still
    close, and so do those of a finished backfill.
    """
    marks = list(marks)
    if not marks:
        return None
    holding = [mark for mark, seen, caught_up in marks if not caught_up or now_s - seen < idle_s]
    if holding:
        lowest = min(holding)
        return lowest if lowest > 0 else None
    newest = max(mark for mark, _, _ in marks)
    # Nothing was ever read: there is no event time to speak of yet.
    return max(newest, now_s - idle_s) if newest > 0 else None
