"""The Faust side: the bucket table, the agent that merges partials into it, and the snapshot timer.

Table keys are ``channel \\x1f window \\x1f bucket_start``; partials are keyed (and partitioned, see
``streams.partitioning``) by channel, so every key of a channel lives on the partition that carries
that channel's partials: the table is co-partitioned with its source by construction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import faust
import orjson
from faust.types import TableT

from agents.closing import WindowCloser
from agents.evaluate import Evaluator
from agents.metrics import PipelineMetrics
from agents.partials import BucketValue, merge
from agents.snapshot import (
    KpiRow,
    build_rows,
    closed_rows,
)
from streams.keys import Keys
from streams.partitioning import partition_of
from streams.redis_client import AsyncRedis
from streams.windows import WINDOWS, Calendar

log = logging.getLogger(__name__)
SEP = "\x1f"


def bucket_key(channel: str, window: str, start: int) -> str:
    """The table key of one channel's window bucket."""
    return f"{channel}{SEP}{window}{SEP}{start}"


@dataclass(frozen=True, slots=True)
class BucketConfig:
    """What the bucket agent and the snapshot timer need."""

    partials_topic: str
    partitions: int
    redis_prefix: str
    grace_s: float
    idle_partition_s: float
    tick_s: float
    retention_s: dict[str, float]
    stale_mark_s: float = 10.0


@dataclass(slots=True)
class SnapshotHolder:
    """The latest snapshot of this worker, read by the Prometheus collector at scrape time."""

    rows: list[KpiRow] = field(default_factory=list)


class BucketIndex:
    """channel → window → bucket starts present in the table, kept in step with it.

    The agent updates it on every write and delete; when the table changes underneath (recovery
    from the changelog, a rebalance), the sizes differ and the index is rebuilt from the keys.
    """

    def __init__(self) -> None:
        self._starts: dict[str, dict[str, set[int]]] = {}
        self._size = 0

    def add(self, channel: str, window: str, start: int) -> None:
        starts = self._starts.setdefault(channel, {}).setdefault(window, set())
        if start not in starts:
            starts.add(start)
            self._size += 1

    def discard(self, channel: str, window: str, start: int) -> None:
        starts = self._starts.get(channel, {}).get(window)
        if starts is not None and start in starts:
            starts.remove(start)
            self._size -= 1

    def sync(self, size: int, keys: Callable[[], Iterable[str]]) -> None:
        """Rebuild from the table's keys if the table holds a different number of keys."""
        if size == self._size:
            return
        self._starts, self._size = {}, 0
        for key in keys():
            channel, window, start = key.split(SEP)
            self.add(channel, window, int(start))

    def channels(self) -> set[str]:
        return {channel for channel, windows in self._starts.items() if any(windows.values())}

    def starts(self, channel: str, window: str) -> set[int]:
        return self._starts.get(channel, {}).get(window, set())


class OwnedChannels:
    """The channels whose partials land on the partitions this worker owns (a container for ``in``)."""

    def __init__(self, partitions: frozenset[int], total: int) -> None:
        self.partitions = partitions
        self.total = total

    def __contains__(self, channel: object) -> bool:
        return isinstance(channel, str) and partition_of(channel, self.total) in self.partitions


def install(
    app: faust.App,
    config: BucketConfig,
    calendar: Calendar,
    redis: Callable[[], AsyncRedis],
    holder: SnapshotHolder,
    metrics: PipelineMetrics,
    evaluator: Callable[[], Evaluator] | None = None,
) -> TableT[str, BucketValue]:
    """Register the bucket table, its agent and the snapshot timer on ``app``."""
    source = app.topic(
        config.partials_topic,
        key_serializer="raw",
        value_serializer="raw",
        partitions=config.partitions,
    )
    table: TableT[str, BucketValue] = app.Table(
        "buckets",
        default=None,
        partitions=config.partitions,
        key_type=str,
    )
    index = BucketIndex()
    closer = WindowCloser(calendar, config.grace_s, config.idle_partition_s, config.stale_mark_s)
    expired_at: dict[str, float] = {}

    def lookup(channel: str, window: str, start: int) -> BucketValue | None:
        return table.get(bucket_key(channel, window, start))

    @app.agent(source, name="merge-partials")
    async def merge_partials(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = orjson.loads(event.value)
            if "marks" in message:
                for src, (watermark_ms, active_at, caught_up) in message["marks"].items():
                    closer.mark(
                        event.message.partition, src, watermark_ms / 1000, active_at, caught_up, message["at"]
                    )
                continue
            channel = event.key.decode("utf-8")
            src, block, upto = message["src"], message["blk"], message["upto"]
            grouped: dict[tuple[str, int], dict[str, list[int]]] = {}
            for window, start, campaign, *counts in message["rows"]:
                grouped.setdefault((window, start), {})[campaign] = counts
            for (window, start), rows in grouped.items():
                key = bucket_key(channel, window, start)
                merged = merge(table.get(key), src, block, upto, rows)
                if merged is not None:
                    table[key] = merged
                    index.add(channel, window, start)
                    closer.touched(channel, window, start)
            now = time.time()
            if now - expired_at.get(channel, 0.0) > 60.0:
                expired_at[channel] = now
                for window, start in _expired(index, channel, config.retention_s, now):
                    del table[bucket_key(channel, window, start)]
                    index.discard(channel, window, start)

    @app.timer(interval=config.tick_s, name="kpi-snapshot")  # type: ignore[untyped-decorator]
    async def snapshot() -> None:
        started = time.perf_counter()
        client = redis()
        index.sync(len(table), lambda: list(table.keys()))
        owned = OwnedChannels(
            frozenset(
                tp.partition for tp in app.assignor.assigned_actives() if tp.topic == config.partials_topic
            ),
            config.partitions,
        )
        now = time.time()
        watermarks = closer.watermarks(owned.partitions)
        if not watermarks:
            return
        by_partition: dict[int, set[str]] = {}
        for channel in index.channels():
            p = partition_of(channel, config.partitions)
            if p in watermarks:
                by_partition.setdefault(p, set()).add(channel)
        watermark_of = {c: watermarks[p] for p, cs in by_partition.items() for c in cs}
        watermark = min(watermarks.values())
        rows = [
            row
            for p, cs in sorted(by_partition.items())
            for row in build_rows(cs, lookup, calendar, watermarks[p], config.grace_s)
        ]
        closed: list[KpiRow] = []
        for channel, window, todo in closer.due(watermark_of, index.starts):
            closed.extend(closed_rows(channel, window, todo, lookup, calendar))
            closer.recorded(channel, window)
        await _write_snapshot(client, config.redis_prefix, rows, calendar, holder, watermark)
        if closed:
            await _write_closed(client, config.redis_prefix, closed, calendar, config.retention_s)
        if evaluator is not None:
            try:
                await _judge(evaluator(), owned, closed, lookup, index, watermark, now)
            except Exception:
                # Judge these windows again next tick: recompute what closed, reload progress from Redis.
                closer.forget()
                evaluator().invalidate()
                raise
        holder.rows = rows
        metrics.watermark.set(watermark)
        metrics.event_time_lag.set(max(0.0, time.time() - watermark))
        metrics.snapshot_seconds.observe(time.perf_counter() - started)

    return table


async def _judge(
    judge: Evaluator,
    owned: OwnedChannels,
    closed: list[KpiRow],
    lookup: Callable[[str, str, int], Any],
    index: BucketIndex,
    watermark: float,
    now: float,
) -> None:
    """Judge the windows closed since the last judged one, in event-time order, one lifecycle round each
    (a backfill closes many at once), then the budgets."""
    await judge.ensure_loaded(owned)
    rounds: dict[int, list[KpiRow]] = {}
    for row in closed:
        if judge.claim(row, now):
            rounds.setdefault(row.window_end or 0, []).append(row)
    log.debug("tick: watermark %s, %d windows closed, %d judging rounds", watermark, len(closed), len(rounds))
    for _end, batch in sorted(rounds.items()):
        await judge.publish(*judge.judge_windows(batch, lookup))
    await judge.save_progress()
    await judge.publish(
        *judge.judge_budgets(owned, lookup, index.starts, await judge.approvals(), watermark),
        evidence_s=watermark,
    )


def _expired(
    index: BucketIndex, channel: str, retention_s: dict[str, float], now: float
) -> list[tuple[str, int]]:
    """This channel's buckets older than their window's retention (the all-time total never expires)."""
    return [
        (window, start)
        for window in WINDOWS
        for start in index.starts(channel, window)
        if start + retention_s[window] < now
    ]


async def _write_snapshot(
    client: AsyncRedis,
    prefix: str,
    rows: list[KpiRow],
    calendar: Calendar,
    holder: SnapshotHolder,
    watermark: float,
) -> None:
    """One pipelined write per tick: every row as a hash field, stale fields of this worker removed."""
    keys = Keys(prefix)
    key = keys.kpis
    mapping = {row.field: orjson.dumps(row.to_json(calendar.zone)) for row in rows}
    stale = {row.field for row in holder.rows} - mapping.keys()
    pipe = client.pipeline(transaction=False)
    if mapping:
        pipe.hset(key, mapping=mapping)
    if stale:
        pipe.hdel(key, *stale)
    pipe.hset(keys.kpis_meta, mapping={"watermark_s": watermark, "updated_at": time.time()})
    await pipe.execute()


def closed_key(prefix: str, window: str, day: str) -> str:
    """The Redis hash holding one local day's closed ``window`` buckets (field ``channel|campaign|start``)."""
    return Keys(prefix).closed_windows(window, day)


async def _write_closed(
    client: AsyncRedis, prefix: str, rows: list[KpiRow], calendar: Calendar, retention_s: dict[str, float]
) -> None:
    """Record closed windows once (re-recording after a restart overwrites with the same values)."""
    by_day: dict[tuple[str, str], dict[str, bytes]] = {}
    for row in rows:
        day = datetime.fromtimestamp(row.window_start, calendar.zone).date().isoformat()
        field = f"{row.channel}|{row.campaign}|{row.window_start}"
        by_day.setdefault((row.window, day), {})[field] = orjson.dumps(row.to_json(calendar.zone))
    pipe = client.pipeline(transaction=False)
    for (window, day), mapping in by_day.items():
        key = closed_key(prefix, window, day)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, int(retention_s[window] + 86400))
    await pipe.execute()
