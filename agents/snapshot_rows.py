"""The KPI snapshot's rows, rebuilt only where a bucket changed. Pure.

Every tick the snapshot reports, per channel and campaign, the current and the last complete 1m, 1h and 1d
window and the all-time total (``agents.snapshot.build_rows``). With thousands of campaigns, rebuilding and
rewriting all of those rows twice a second would cost more than the counting itself; but between two ticks
only the buckets that partials were merged into change, and in them only the campaigns those partials
carried. Bucket values are never changed in place (``agents.partials.merge`` returns a new value), so a
bucket whose value is the same object as at the last tick is unchanged, and in a changed one, a campaign
whose counts hash the same is too. Only what changed goes to Redis; rows of campaigns that left a window
(it rolled over, a campaign retired from the total) are deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agents.partials import BucketValue, totals
from agents.snapshot import KpiRow, Lookup, counts_of, last_complete_start
from streams.codec import N_SLOTS
from streams.events import NO_CAMPAIGN
from streams.windows import TOTAL, WINDOWS, Calendar


@dataclass(slots=True)
class _Written:
    """What was reported of one (channel, window, which): its bucket, and a hash per campaign row."""

    start: int
    value: BucketValue | None
    hashes: dict[str, int]
    channel_row: KpiRow


@dataclass(slots=True)
class Delta:
    """One tick's change of the snapshot: rows to (re)write, fields to delete, and every channel's rows."""

    changed: list[KpiRow] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    channel_rows: list[KpiRow] = field(default_factory=list)


def _field(channel: str, campaign: str, window: str, which: str) -> str:
    return f"{channel}|{campaign}|{window}|{which}"


class SnapshotRows:
    """The rows last reported per (channel, window, which); :meth:`update` says what changed since."""

    def __init__(self, calendar: Calendar, grace_s: float) -> None:
        self.calendar = calendar
        self.grace_s = grace_s
        self._written: dict[tuple[str, str, str], _Written] = {}

    def update(
        self,
        watermark_of: Mapping[str, float],
        lookup: Lookup,
        failed: Callable[[str, Exception], None] | None = None,
    ) -> Delta:
        """The change since the last call for the channels of ``watermark_of`` (channel → its event time);
        the rows of channels no longer in it are deleted. A channel whose rows raise is handed to ``failed``
        and keeps what it had (its partial change may be in the delta: it is re-sent next time)."""
        delta = Delta()
        for key in [key for key in self._written if key[0] not in watermark_of]:
            gone = self._written.pop(key)
            delta.deleted.append(gone.channel_row.field)
            delta.deleted.extend(_field(key[0], campaign, key[1], key[2]) for campaign in gone.hashes)
        for channel in sorted(watermark_of):
            try:
                for window, which, start, end, complete in self._windows(watermark_of[channel]):
                    value = lookup(channel, window, start)
                    self._one(delta, channel, window, which, start, end, complete, value)
            except Exception as exc:
                if failed is None:
                    raise
                failed(channel, exc)
        return delta

    def forget(self) -> None:
        """Rewrite every row next time, and delete those gone meanwhile (after a failed write to Redis)."""
        for written in self._written.values():
            written.start, written.value = -1, None

    def _windows(self, watermark_s: float) -> list[tuple[str, str, int, int | None, bool]]:
        now = int(watermark_s)
        found: list[tuple[str, str, int, int | None, bool]] = []
        for window in WINDOWS:
            current = self.calendar.start(window, now)
            last = last_complete_start(self.calendar, window, watermark_s, self.grace_s)
            for which, start in (("current", current), ("last", last)):
                end = self.calendar.end(window, start)
                found.append((window, which, start, end, end + self.grace_s <= watermark_s))
        found.append((TOTAL, "total", 0, None, False))
        return found

    def _one(
        self,
        delta: Delta,
        channel: str,
        window: str,
        which: str,
        start: int,
        end: int | None,
        complete: bool,
        value: BucketValue | None,
    ) -> None:
        key = (channel, window, which)
        before = self._written.get(key)
        if before is not None and before.start == start and before.value is value:
            delta.channel_rows.append(before.channel_row)
            return
        same_window = before is not None and before.start == start
        old = before.hashes if before is not None else {}
        per_campaign = totals(value) if value is not None else {}
        whole = [0] * N_SLOTS
        hashes: dict[str, int] = {}
        for campaign, vector in per_campaign.items():
            for slot in range(N_SLOTS):
                whole[slot] += vector[slot]
            if campaign == NO_CAMPAIGN:
                continue
            digest = hash(tuple(vector))
            hashes[campaign] = digest
            if not same_window or old.get(campaign) != digest:
                delta.changed.append(
                    KpiRow(channel, campaign, window, which, start, end, complete, counts_of(vector))
                )
        delta.deleted.extend(
            _field(channel, campaign, window, which) for campaign in old if campaign not in hashes
        )
        row = KpiRow(channel, NO_CAMPAIGN, window, which, start, end, complete, counts_of(whole))
        delta.changed.append(row)
        delta.channel_rows.append(row)
        self._written[key] = _Written(start, value, hashes, row)
