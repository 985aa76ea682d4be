"""Reading what the reports need from Redis: the stored windows of a day, the alerts stream, approvals.

Days come from the closed windows the workers record (``<prefix>:windows:<window>:<day>``, kept for
``ADPULSE_RETENTION_1D_S`` / ``_1H_S``), so a report for last Tuesday works after any restart. A day whose
1-day window is still open (today) comes from the live snapshot (``<prefix>:kpis``), marked incomplete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from alerts.budgets import Approval, Budget
from alerts.report.daily import DailySheet, DayData, build_daily, day_bounds
from alerts.report.episodes import episodes
from alerts.report.model import Counts, Targets
from alerts.report.weekly import WeeklyReview, build_weekly, covered_days
from streams.events import NO_CAMPAIGN
from streams.keys import Keys
from streams.redis_client import AsyncRedis, as_text

#: The alerts stream is capped near 10,000 entries (``RedisAlertSink``): this many means it may be trimmed.
NEAR_CAP = 9_000


@dataclass(frozen=True, slots=True)
class AlertHistory:
    """The alerts stream, oldest first, and the time of its oldest entry if the stream is at its cap (so
    older entries may have been trimmed); None when it holds everything ever written."""

    alerts: list[Mapping[str, Any]]
    oldest: datetime | None


def _loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _local_date(text: object, zone: ZoneInfo) -> date | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(zone).date()
    except ValueError:
        return None


def _start(row: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(str(row["window_start"]))


async def _closed(
    redis: AsyncRedis, prefix: str, window: str, day: date, zone: ZoneInfo
) -> list[dict[str, Any]]:
    """The channel-level rows of ``day``'s closed ``window`` buckets (those that start on that local day)."""
    raw = await redis.hgetall(Keys(prefix).closed_windows(window, day.isoformat()))
    rows = [_loads(value) for value in raw.values()]
    return [
        row
        for row in rows
        if isinstance(row, dict)
        and row.get("campaign") == NO_CAMPAIGN
        and row.get("window") == window
        and _local_date(row.get("window_start"), zone) == day
    ]


async def read_snapshot(redis: AsyncRedis, prefix: str) -> tuple[list[dict[str, Any]], datetime | None]:
    """The live snapshot's channel-level rows and the event-time watermark it was taken at."""
    keys = Keys(prefix)
    raw = await redis.hgetall(keys.kpis)
    rows = [row for value in raw.values() if isinstance(row := _loads(value), dict)]
    meta = await redis.hgetall(keys.kpis_meta)
    mark = {as_text(k): as_text(v) for k, v in meta.items()}.get("watermark_s")
    try:
        watermark = datetime.fromtimestamp(float(mark), UTC) if mark is not None else None
    except ValueError:
        watermark = None
    return [r for r in rows if r.get("campaign") == NO_CAMPAIGN], watermark


Snapshot = tuple[list[dict[str, Any]], datetime | None]


async def read_day(
    redis: AsyncRedis,
    prefix: str,
    day: date,
    zone: ZoneInfo,
    *,
    hours: bool = True,
    snapshot: Snapshot | None = None,
) -> DayData:
    """Every channel's counts of one local day (and its hours, for charts).

    Closed windows first; a channel whose day is still open comes from the live snapshot, and then the day
    is marked incomplete. A channel recorded by several workers over time (a rebalance) has one row per day:
    the fields of the hash are per channel and window start. ``snapshot`` (:func:`read_snapshot`) saves
    reading it again when several days are read at once.
    """
    closed = await _closed(redis, prefix, "1d", day, zone)
    channels = {str(row["channel"]): Counts.from_row(row) for row in closed}
    live, watermark = snapshot if snapshot is not None else await read_snapshot(redis, prefix)
    live_days = [
        row
        for row in live
        if row.get("window") == "1d"
        and row.get("which") in ("current", "last")
        and _local_date(row.get("window_start"), zone) == day
        and str(row.get("channel")) not in channels
    ]
    complete = True
    for row in live_days:
        channels[str(row["channel"])] = Counts.from_row(row)
        complete = complete and bool(row.get("complete"))
    by_hour: dict[str, list[tuple[datetime, Counts]]] = {}
    if hours:
        hourly = await _closed(redis, prefix, "1h", day, zone)
        seen = {(str(r["channel"]), str(r["window_start"])) for r in hourly}
        hourly += [
            row
            for row in live
            if row.get("window") == "1h"
            and _local_date(row.get("window_start"), zone) == day
            and (str(row.get("channel")), str(row.get("window_start"))) not in seen
        ]
        for row in hourly:
            by_hour.setdefault(str(row["channel"]), []).append((_start(row), Counts.from_row(row)))
        for series in by_hour.values():
            series.sort(key=lambda point: point[0])
    return DayData(
        day=day,
        channels=channels,
        complete=complete,
        as_of=watermark if not complete else None,
        hours=by_hour,
    )


async def read_alerts(redis: AsyncRedis, prefix: str) -> AlertHistory:
    """Every entry of the alerts stream (``MAXLEN ~``-capped, so its oldest days may be gone)."""
    entries = await redis.xrevrange(Keys(prefix).alerts) or []
    alerts: list[Mapping[str, Any]] = []
    oldest: datetime | None = None
    for entry_id, fields in reversed(entries):
        if entry_id is not None and oldest is None:
            oldest = datetime.fromtimestamp(int(as_text(entry_id).split("-")[0]) / 1000, UTC)
        raw = (fields or {}).get(b"alert") or (fields or {}).get("alert")
        alert = _loads(raw) if raw is not None else None
        if isinstance(alert, dict):
            alerts.append(alert)
    return AlertHistory(alerts, oldest if len(entries) >= NEAR_CAP else None)


async def read_approvals(redis: AsyncRedis, prefix: str) -> dict[str, Approval]:
    """Budget approvals by field (``douyin|-|day|2026-11-24``); malformed ones left out."""
    approvals = {}
    for field, value in (await redis.hgetall(Keys(prefix).approvals)).items():
        try:
            approvals[as_text(field)] = Approval.from_json(value)
        except ValueError:
            continue
    return approvals


async def read_all_time_spend(redis: AsyncRedis, prefix: str) -> dict[str, int]:
    """Each channel's spend since the start (the snapshot's all-time totals), in micro-units."""
    snapshot, _ = await read_snapshot(redis, prefix)
    return {
        str(r["channel"]): Counts.from_row(r).spend_micros for r in snapshot if r.get("window") == "total"
    }


async def load_daily(
    redis: AsyncRedis,
    prefix: str,
    day: date,
    zone: ZoneInfo,
    currency: str,
    budgets: Sequence[Budget] = (),
) -> DailySheet:
    """The daily sheet of ``day``, from what Redis holds now."""
    data = await read_day(redis, prefix, day, zone)
    history = await read_alerts(redis, prefix)
    sheet = build_daily(
        data,
        episodes(history.alerts),
        zone,
        currency,
        approvals=await read_approvals(redis, prefix),
        budgets=budgets,
    )
    lo, _ = day_bounds(day, zone)
    if history.oldest is not None and history.oldest > lo:
        sheet = replace(sheet, footnotes=(*sheet.footnotes, _trimmed(history.oldest, zone)))
    return sheet


async def load_weekly(
    redis: AsyncRedis,
    prefix: str,
    monday: date,
    today: date,
    zone: ZoneInfo,
    currency: str,
    budgets: Sequence[Budget] = (),
    targets: Targets | None = None,
) -> WeeklyReview:
    """The review of the ISO week starting ``monday`` (its days over by ``today``) from what Redis holds."""
    covered = covered_days(monday, today)
    snapshot = await read_snapshot(redis, prefix)
    days = {d: await read_day(redis, prefix, d, zone, snapshot=snapshot) for d in covered}
    before = {
        d - timedelta(days=7): await read_day(
            redis, prefix, d - timedelta(days=7), zone, hours=False, snapshot=snapshot
        )
        for d in covered
    }
    before = {d: data for d, data in before.items() if data.channels}
    month_spend: dict[str, int] = {}
    if covered and any(b.period == "month" for b in budgets):
        day = covered[-1].replace(day=1)
        while day <= covered[-1]:
            data = days.get(day) or await read_day(redis, prefix, day, zone, hours=False, snapshot=snapshot)
            for channel, counts in data.channels.items():
                month_spend[channel] = month_spend.get(channel, 0) + counts.spend_micros
            day += timedelta(days=1)
    history = await read_alerts(redis, prefix)
    review = build_weekly(
        monday,
        days,
        before,
        episodes(history.alerts),
        zone,
        currency,
        targets=targets,
        budgets=budgets,
        month_spend=month_spend,
        all_time_spend=await read_all_time_spend(redis, prefix)
        if any(b.period == "total" for b in budgets)
        else {},
        approvals=await read_approvals(redis, prefix),
    )
    if covered and history.oldest is not None and history.oldest > day_bounds(covered[0], zone)[0]:
        review = replace(review, footnotes=(*review.footnotes, _trimmed(history.oldest, zone)))
    return review


def _trimmed(oldest: datetime, zone: ZoneInfo) -> str:
    return (
        f"The alerts stream begins at {oldest.astimezone(zone):%Y-%m-%d %H:%M}: alerts before then were "
        "trimmed (the stream keeps about its last 10,000 entries) and are not listed."
    )
