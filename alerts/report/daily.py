"""The daily cross-channel sheet: one row per channel and a total, with that day's alerts as notes. Pure.

Columns, as the marketing team's tracking sheet has them: date, channel, visits, new users, orders, GMV, AOV,
channel cost, ROI, anomaly note. Visits are the landing-page ``visit`` events; a channel whose tracker sends
none shows its clicks instead, and a footnote says so. New users are orders flagged ``new_customer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from alerts.budgets import Approval, Budget
from alerts.report.episodes import Episode, clock_text, note
from alerts.report.model import Counts, total

TOTAL = "total"
#: The sheet's columns, in order (every format prints exactly these).
COLUMNS = (
    "date",
    "channel",
    "visits",
    "new users",
    "orders",
    "GMV",
    "AOV",
    "channel cost",
    "ROI",
    "anomaly note",
)


@dataclass(frozen=True, slots=True)
class DayData:
    """What is stored for one local day: each channel's counts, and its hours for the charts.

    ``complete`` is False while the day (its 1-day window) is still open; ``as_of`` is then the event time
    the figures run to.
    """

    day: date
    channels: Mapping[str, Counts]
    complete: bool = True
    as_of: datetime | None = None
    hours: Mapping[str, Sequence[tuple[datetime, Counts]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One line of the sheet. ``visits`` is the visit count shown (clicks where ``visits_are_clicks``).

    ``notes`` has one line per alert episode of the day, the channel's own and its campaigns' (each starting
    with the campaign's name); the sheet's cell, ``note``, spells out the channel's and counts the campaigns'.
    """

    day: date
    channel: str
    counts: Counts
    visits: int
    visits_are_clicks: bool
    notes: tuple[str, ...] = ()
    campaign_notes: int = 0

    @property
    def note(self) -> str:
        own = list(self.notes[: len(self.notes) - self.campaign_notes])
        if self.campaign_notes:
            own.append(f"+{self.campaign_notes} campaign alert(s)")
        return "; ".join(own)


@dataclass(frozen=True, slots=True)
class DailySheet:
    """The daily report: rows (channels by GMV, largest first), the total, notes on how to read it."""

    day: date
    zone: ZoneInfo
    currency: str
    rows: tuple[SheetRow, ...]
    total: SheetRow
    complete: bool
    as_of: datetime | None
    episodes: tuple[Episode, ...]
    footnotes: tuple[str, ...]
    data: DayData
    budgets: tuple[Budget, ...] = ()

    @property
    def empty(self) -> bool:
        """No channel has any data stored for the day."""
        return not self.rows


def day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The local day as ``[start, end)`` (23 or 25 hours long on the days clocks change)."""
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    following = day + timedelta(days=1)
    return start, datetime(following.year, following.month, following.day, tzinfo=zone)


def sheet_row(
    day: date, channel: str, counts: Counts, notes: tuple[str, ...] = (), campaign_notes: tuple[str, ...] = ()
) -> SheetRow:
    """One channel's row: visits fall back to clicks where no visit event came at all."""
    fallback = counts.visits == 0 and counts.clicks > 0
    shown = counts.clicks if fallback else counts.visits
    return SheetRow(day, channel, counts, shown, fallback, (*notes, *campaign_notes), len(campaign_notes))


def build_daily(
    data: DayData,
    alerts: Sequence[Episode],
    zone: ZoneInfo,
    currency: str,
    *,
    approvals: Mapping[str, Approval] | None = None,
    budgets: Sequence[Budget] = (),
) -> DailySheet:
    """The sheet of ``data.day`` with the notes of the alert episodes that belong to that day.

    A channel with an alert but no stored counts (a tracker silent all day) still gets its row, with zeros.
    """
    lo, hi = day_bounds(data.day, zone)
    todays = tuple(e for e in alerts if e.overlaps(lo, hi))
    notes: dict[str, list[str]] = {}
    campaigns: dict[str, list[str]] = {}
    for episode in todays:
        kept = campaigns if episode.campaign else notes
        kept.setdefault(episode.channel, []).append(note(episode, zone, data.day, approvals))
    channels = dict(data.channels)
    for channel in (*notes, *campaigns):
        channels.setdefault(channel, Counts())
    rows = sorted(
        (
            sheet_row(data.day, ch, counts, tuple(notes.get(ch, ())), tuple(campaigns.get(ch, ())))
            for ch, counts in channels.items()
        ),
        key=lambda r: (-r.counts.gmv_micros, r.channel),
    )
    summed = total(r.counts for r in rows)
    total_row = SheetRow(
        data.day,
        TOTAL,
        summed,
        sum(r.visits for r in rows),
        any(r.visits_are_clicks for r in rows),
        (f"{len(todays)} alert(s)",) if todays else (),
    )
    return DailySheet(
        day=data.day,
        zone=zone,
        currency=currency,
        rows=tuple(rows),
        total=total_row,
        complete=data.complete,
        as_of=data.as_of,
        episodes=todays,
        footnotes=_footnotes(data, rows, zone, currency),
        data=data,
        budgets=tuple(b for b in budgets if b.period == "day" and b.campaign is None),
    )


def _footnotes(data: DayData, rows: Sequence[SheetRow], zone: ZoneInfo, currency: str) -> tuple[str, ...]:
    notes = []
    if not rows:
        notes.append(
            f"No data is stored for {data.day.isoformat()}: no worker recorded that day's windows "
            "(or they are older than ADPULSE_RETENTION_1D_S, 62 days by default)."
        )
    if not data.complete:
        as_of = f" as of {clock_text(data.as_of, zone, data.day)}" if data.as_of is not None else ""
        notes.append(f"The day is not over (its 1-day window is still open): figures{as_of}, in event time.")
    clicks_for_visits = [r.channel for r in rows if r.visits_are_clicks]
    if clicks_for_visits:
        notes.append(
            f"¹ Visits: no landing-page visit events came from {', '.join(clicks_for_visits)}, so "
            f"{'its' if len(clicks_for_visits) == 1 else 'their'} clicks are shown (and counted in the "
            "total) instead."
        )
    notes.append(
        f"Money in {currency}, rounded half up to the cent from exact sums. ROI = GMV / channel cost (the "
        "total's: all GMV over all cost); AOV = GMV / orders; 'no data' where the divisor is 0. "
        f"Days are local days in {zone.key}."
    )
    return tuple(notes)
