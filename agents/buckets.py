"""The Faust side: the bucket table, the agent that merges partials into it, and the snapshot timer.

Table keys are ``channel \\x1f window \\x1f bucket_start \\x1f shard``: a bucket's campaigns are spread over
``BucketConfig.shards`` keys (``agents.partials.shard_of``), so that no changelog record holds a whole
channel's campaigns; readers see a bucket's shards joined (``BucketViews``). A key without the shard is a
bucket kept whole by a version before shards: it is read as it is, and cut into shards the first time a
partial is merged into it. Partials are keyed (and partitioned, see ``streams.partitioning``) by channel,
and Faust writes a table key's changelog record to the partition of the message being processed, so every
key of a channel, each of its shards too, lives on the partition that carries that channel's partials: the
table is co-partitioned with its source by construction.

Nothing one key or one message holds stops the worker: a partials message that is not what the fold
stage sends is skipped, and a key whose merge, snapshot or closing raises is quarantined (logged once,
counted in ``adpulse_quarantined_total``, left out from then on); the other keys go on.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, KeysView
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

import faust
import orjson
from faust.exceptions import PartitionsMismatch
from faust.tables.base import E_SOURCE_PARTITIONS_MISMATCH
from faust.types import TableT

from agents.closing import WindowCloser
from agents.evaluate import Evaluator
from agents.health import HealthMonitor
from agents.metrics import MAX_LOGGED_OVERFLOWS, PipelineMetrics
from agents.partials import (
    CEILING,
    BucketValue,
    Row,
    campaigns_of,
    combined,
    compact,
    encoded_over,
    merge,
    overflowing,
    own_campaigns,
    retire,
    shard_of,
    split,
)
from agents.redis_retry import RedisRetry
from agents.snapshot import KpiRow, closed_rows
from agents.snapshot_rows import SnapshotRows
from alerts.model import Finding, Fingerprint
from streams.codec import N_SLOTS
from streams.events import MAX_TS_MS, name_problem
from streams.keys import Keys
from streams.partitioning import partition_of
from streams.redis_client import AsyncRedis
from streams.topics import value_limit
from streams.windows import TOTAL, WINDOWS, Calendar

log = logging.getLogger(__name__)
SEP = "\x1f"
#: Days before the retention cutoff a worker deletes closed-window hashes of when it starts (older ones
#: went by their TTL).
PRUNE_DAYS = 14
#: The merge agent gives the event loop a turn after running this long without one.
YIELD_AFTER_S = 0.02
#: How often (in event time) a partition's buckets are checked against their retention.
SWEEP_S = 60.0
#: Faust's ``producer_max_request_size`` (its default, which ``streams.app.make_app`` keeps).
FAUST_MAX_REQUEST_BYTES = 1_000_000


#: The shard of a key without one (a bucket kept whole, by a version before shards).
WHOLE = -1
#: ``BucketConfig.shards`` by default (``ADPULSE_BUCKET_SHARDS``).
DEFAULT_SHARDS = 1
#: The most shards a bucket has (``ADPULSE_BUCKET_SHARDS``' bound): a key naming a higher shard is not a
#: bucket key (and would cost ``BucketIndex`` an int of that many bits).
MAX_SHARDS = 256


def bucket_key(channel: str, window: str, start: int, shard: int = WHOLE) -> str:
    """The table key of one shard of a channel's window bucket (``WHOLE``: the bucket kept whole)."""
    if shard == WHOLE:
        return f"{channel}{SEP}{window}{SEP}{start}"
    return f"{channel}{SEP}{window}{SEP}{start}{SEP}{shard}"


def split_key(key: str) -> tuple[str, str, int, int]:
    """``(channel, window, start, shard)`` of a table key (shard ``WHOLE`` for a key without one);
    ValueError if it is not one."""
    parts = key.split(SEP)
    if len(parts) == 4:
        channel, window, start, shard = parts[0], parts[1], int(parts[2]), int(parts[3])
    elif len(parts) == 3:
        channel, window, start, shard = parts[0], parts[1], int(parts[2]), WHOLE
    else:
        raise ValueError(f"not a bucket key: {key!r}")
    if window not in _WINDOW_NAMES:
        raise ValueError(f"unknown window {window!r} in table key {key!r}")
    if shard < WHOLE or (shard == WHOLE and len(parts) == 4) or shard >= MAX_SHARDS:
        raise ValueError(f"not a bucket key: {key!r}")
    if str(start) != parts[2] or (len(parts) == 4 and str(shard) != parts[3]):
        # " 5", "+5", "05", "٥": int() reads them, but the agent reads and deletes the keys it writes.
        raise ValueError(f"not a bucket key as the agent writes them: {key!r}")
    return channel, window, start, shard


_WINDOW_NAMES = frozenset((*WINDOWS, TOTAL))


def _bit(shard: int) -> int:
    """A shard's bit in ``BucketIndex``'s int of a bucket's shards (``WHOLE`` is bit 0)."""
    return 1 << (shard + 1)


_T = TypeVar("_T")


class Offload(Protocol):
    """Runs a pure computation off the event loop and awaits its result."""

    def __call__(self, fn: Callable[..., _T], *args: Any) -> Awaitable[_T]: ...


Rows = dict[tuple[str, int], dict[str, Row]]


def parse_partial(key: bytes | None, message: dict[str, Any]) -> tuple[str, str, int, int, Rows]:
    """``(channel, src, block, upto, rows by (window, start))`` of a decoded partials message; ValueError
    (or another exception) if it is not what the fold stage sends."""
    if key is None:
        raise ValueError("a partial without a key (the channel)")
    channel = key.decode("utf-8")
    problem = name_problem(channel)
    if problem is not None or not 0 < len(channel) <= 64:
        raise ValueError(f"channel {channel!r}: {problem or 'not 1-64 characters'}")
    src, block, upto = message["src"], message["blk"], message["upto"]
    if type(src) is not str or type(block) is not int or type(upto) is not int:
        raise ValueError("src, blk and upto must be a string and two integers")
    grouped: Rows = {}
    for window, start, campaign, *counts in message["rows"]:
        if (
            window not in _WINDOW_NAMES
            or type(start) is not int
            or type(campaign) is not str
            or len(counts) != N_SLOTS
            or not all(type(count) is int and 0 <= count <= CEILING for count in counts)
        ):
            raise ValueError(f"malformed row for {window!r} {start!r} {campaign!r}")
        grouped.setdefault((window, start), {})[sys.intern(campaign)] = tuple(counts)
    return channel, src, block, upto, grouped


class Quarantine:
    """Table keys and channels left out because handling them raised, and partials messages skipped."""

    def __init__(self, metrics: PipelineMetrics) -> None:
        self.metrics = metrics
        self.keys: set[str] = set()
        self._noted_partitions: set[int] = set()

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def add(self, key: str, where: str, exc: BaseException) -> None:
        """Leave ``key`` (a table key or a channel) out from now on: logged and counted once."""
        if key in self.keys:
            return
        self.keys.add(key)
        self.metrics.quarantined.labels(where).inc()
        log.error("bucket agent: %s: %r quarantined after %s: %s", where, key, type(exc).__name__, exc)

    def skip_message(self, partition: int, exc: BaseException) -> None:
        """A partials message that is not what the fold stage sends: counted, logged once per partition."""
        self.metrics.quarantined.labels("message").inc()
        if partition not in self._noted_partitions:
            self._noted_partitions.add(partition)
            log.error(
                "bucket agent: skipping a malformed message on partials partition %d (%s: %s); further "
                'ones are only counted in adpulse_quarantined_total{where="message"}',
                partition,
                type(exc).__name__,
                exc,
            )


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
    #: Campaigns of their own a bucket's folded history keeps per channel (``agents.partials``).
    max_campaigns: int | None = None
    #: The largest bucket value the table's changelog takes (one Kafka message).
    max_value_bytes: int = value_limit(FAUST_MAX_REQUEST_BYTES)
    #: Keys a bucket's campaigns are spread over (``agents.partials.shard_of``).
    shards: int = DEFAULT_SHARDS

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards must be 1..{MAX_SHARDS}, got {self.shards}")


@dataclass(slots=True)
class SnapshotHolder:
    """The latest snapshot of this worker, read by the Prometheus collector at scrape time."""

    rows: list[KpiRow] = field(default_factory=list)


class BucketIndex:
    """channel → window → bucket start → the shards present in the table, kept in step with it.

    The agent updates it on every write and delete; when the table changes underneath (recovery
    from the changelog, a rebalance), the sizes (in keys) differ and the index is rebuilt from the keys:
    on the event loop (``sync``), or off it (``resync``: a million keys take seconds), journaling the
    agent's writes and deletes meanwhile and replaying them on the rebuilt index.

    A bucket's shards are the bits of one int (``_bit``), not a set: a million buckets held a million sets
    (~200 MB, and a young collection had them all to walk), and rebuilding the index after a recovery
    spent most of its time making them.
    """

    def __init__(self) -> None:
        self._starts: dict[str, dict[str, dict[int, int]]] = {}
        self._size = 0
        self._buckets = 0
        self._unreadable = 0
        # While ``resync`` rebuilds off the loop: the adds and discards made meanwhile, in order.
        self._journal: list[tuple[Callable[..., None], tuple[Any, ...]]] | None = None

    def add(self, channel: str, window: str, start: int, shard: int = WHOLE) -> None:
        if self._journal is not None:
            self._journal.append((self.add, (channel, window, start, shard)))
        # get before set: setdefault would make two empty dicts on every call (a write of the merge agent).
        windows = self._starts.get(channel)
        if windows is None:
            windows = self._starts[channel] = {}
        starts = windows.get(window)
        if starts is None:
            starts = windows[window] = {}
        shards = starts.get(start, 0)
        if not shards & _bit(shard):
            self._buckets += not shards
            self._size += 1
            starts[start] = shards | _bit(shard)

    def discard(self, channel: str, window: str, start: int, shard: int | None = None) -> None:
        """Forget one shard of a bucket, or (``None``) all of them."""
        if self._journal is not None:
            self._journal.append((self.discard, (channel, window, start, shard)))
        starts = self._starts.get(channel, {}).get(window)
        shards = 0 if starts is None else starts.get(start, 0)
        if starts is None or not shards:
            return
        gone = shards if shard is None else shards & _bit(shard)
        self._size -= gone.bit_count()
        if shards == gone:
            del starts[start]
            self._buckets -= 1
        else:
            starts[start] = shards & ~gone

    def buckets(self) -> int:
        """How many buckets (channel, window, start) the table holds keys of."""
        return self._buckets

    def sync(
        self,
        size: int,
        keys: Callable[[], Iterable[str]],
        unreadable: Callable[[str, Exception], None] | None = None,
    ) -> None:
        """Rebuild from the table's keys if the table holds a different number of keys; a key that is
        not one (``split_key``) is left out and handed to ``unreadable``."""
        if self._in_step(size):
            return
        fresh, failed = BucketIndex.built(keys())
        self._adopt(fresh, failed, unreadable)

    async def resync(
        self,
        size: int,
        keys: Callable[[], Iterable[str]],
        offload: Offload,
        unreadable: Callable[[str, Exception], None] | None = None,
    ) -> None:
        """``sync``, rebuilding in ``offload``'s thread from the keys listed now; the writes and deletes
        made on the loop meanwhile are replayed on the rebuilt index before it replaces this one."""
        if self._in_step(size):
            return
        listed = list(keys())
        self._journal = []
        try:
            fresh, failed = await offload(BucketIndex.built, listed)
            journal = self._journal
        finally:
            self._journal = None
        self._adopt(fresh, failed, unreadable)
        for change, args in journal:
            change(*args)

    def _in_step(self, size: int) -> bool:
        """Whether the index holds as many keys as the table's ``size`` (else it is rebuilt)."""
        return size == self._size + self._unreadable

    @staticmethod
    def built(keys: Iterable[str]) -> tuple[BucketIndex, list[tuple[str, Exception]]]:
        """An index of ``keys``, and the keys that are not bucket keys with why (touches nothing else: it
        runs in a worker thread). A million keys took 3.1 s with a set per bucket, ~1.2 s now."""
        fresh = BucketIndex()
        failed: list[tuple[str, Exception]] = []
        for key in keys:
            try:
                channel, window, start, shard = split_key(key)
            except Exception as exc:  # noqa: BLE001 - one bad key (an older version's?) never stops a tick
                failed.append((key, exc))
                continue
            fresh.add(channel, window, start, shard)
        fresh._unreadable = len(failed)
        return fresh, failed

    def _adopt(
        self,
        fresh: BucketIndex,
        failed: list[tuple[str, Exception]],
        unreadable: Callable[[str, Exception], None] | None,
    ) -> None:
        self._starts, self._size, self._buckets = fresh._starts, fresh._size, fresh._buckets
        self._unreadable = fresh._unreadable
        if unreadable is not None:
            for key, exc in failed:
                unreadable(key, exc)

    def channels(self) -> set[str]:
        return {channel for channel, windows in self._starts.items() if any(windows.values())}

    def starts(self, channel: str, window: str) -> KeysView[int]:
        return self._starts.get(channel, {}).get(window, {}).keys()


class BucketViews:
    """A bucket's shards joined for reading (``agents.partials.combined``), the same object as long as none
    of its shards changed: the snapshot and the judges tell an unchanged bucket by identity and keep sums
    per value. A bucket kept whole (an older version's key) is read as it is.

    Called on the event loop and in the snapshot's worker thread, so the cache is under a lock; it keeps
    the views of up to ``max_rows`` campaign rows (a view holds its shards' values: a stale one keeps old
    values alive until it is read again or evicted).
    """

    def __init__(
        self, get: Callable[[str], BucketValue | None], shards: int, max_rows: int = 200_000
    ) -> None:
        self.get = get
        self.shards = shards
        self.max_rows = max_rows
        self._rows = 0
        self._views: OrderedDict[tuple[str, str, int], tuple[tuple[BucketValue, ...], BucketValue]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def __call__(self, channel: str, window: str, start: int) -> BucketValue | None:
        whole = self.get(bucket_key(channel, window, start))
        if whole is not None:
            return whole
        parts = tuple(
            value
            for shard in range(self.shards)
            if (value := self.get(bucket_key(channel, window, start, shard))) is not None
        )
        if len(parts) <= 1:
            return parts[0] if parts else None
        bucket = (channel, window, start)
        with self._lock:
            hit = self._views.get(bucket)
            if hit is not None and len(hit[0]) == len(parts) and all(map(_same, hit[0], parts)):
                self._views.move_to_end(bucket)
                return hit[1]
        view = combined(parts)
        with self._lock:
            self._forget(bucket)
            self._views[bucket] = (parts, view)
            self._rows += _rows(view)
            while self._rows > self.max_rows and len(self._views) > 1:
                self._forget(next(iter(self._views)))
        return view

    def forget(self, channel: str, window: str, start: int) -> None:
        """Drop the view of a bucket that is gone."""
        with self._lock:
            self._forget((channel, window, start))

    def _forget(self, bucket: tuple[str, str, int]) -> None:
        gone = self._views.pop(bucket, None)
        if gone is not None:
            self._rows -= _rows(gone[1])


def _same(a: object, b: object) -> bool:
    return a is b


def _rows(value: BucketValue) -> int:
    return len(value["b"]) + sum(len(rows) for _block, _upto, rows in value["p"].values())


class BucketTable(faust.Table[str, BucketValue]):
    """The bucket table: values read back from its changelog (recovery) are compacted as merges leave
    them (``agents.partials.compact``), or a recovered table would hold every row as a list the garbage
    collector walks."""

    def _to_value(self, v: Any) -> Any:
        return compact(v)

    def _verify_source_topic_partitions(self, source_topic: str) -> None:
        """Faust's check that the partials topic and the changelog have as many partitions, made on complete
        metadata only. Faust reads both counts from the consumer's group metadata, where a topic a metadata
        answer left out (one just created that a broker has not applied yet) counts 0: its check then raised
        ``PartitionsMismatch`` at every table write of the worker, and each key was quarantined, its counts
        lost. An unknown count is no mismatch: the check is made again at the next write. Each count is read
        once (the consumer thread may replace the metadata between two reads)."""
        if source_topic in self._verified_source_topics_for_partitions:
            return
        change_topic = self.changelog_topic_name
        source_n = self.app.consumer.topic_partitions(source_topic)
        change_n = self.app.consumer.topic_partitions(change_topic)
        if not source_n or not change_n:
            return
        if source_n != change_n:
            raise PartitionsMismatch(
                E_SOURCE_PARTITIONS_MISMATCH.format(
                    source_topic=source_topic,
                    table_name=self.name,
                    source_n=source_n,
                    change_topic=change_topic,
                    change_n=change_n,
                )
            )
        self._verified_source_topics_for_partitions.add(source_topic)


class TickLaps:
    """Where a snapshot tick's time went, logged when the tick took ``slow_s`` or more (a restart with a
    million buckets, a backfill): what the operator reads to see what the pipeline waits on."""

    def __init__(self, slow_s: float = 1.0) -> None:
        self.slow_s = slow_s
        self.started = self._last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self._last))
        self._last = now

    def log_if_slow(self, closed: int) -> None:
        total = time.perf_counter() - self.started
        if total >= self.slow_s:
            laps = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.laps)
            log.info("snapshot tick took %.1f s (%d closed window rows): %s", total, closed, laps)


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
    health: Callable[[], HealthMonitor] | None = None,
    retry: RedisRetry | None = None,
) -> TableT[str, BucketValue]:
    """Register the bucket table, its agent and the snapshot timer on ``app``. The timer's Redis writes wait
    for Redis through ``retry`` (``agents.redis_retry``): a tick that cannot write waits, and the windows it
    closed are recorded and judged once Redis answers."""
    retry = retry if retry is not None else RedisRetry(metrics)
    source = app.topic(
        config.partials_topic,
        key_serializer="raw",
        value_serializer="raw",
        partitions=config.partitions,
    )
    table = cast(
        TableT[str, BucketValue],
        app.tables.add(
            BucketTable(
                app,
                name="buckets",
                default=None,
                beacon=app.tables.beacon,
                partitions=config.partitions,
                key_type=str,
            )
        ),
    )
    index = BucketIndex()
    closer = WindowCloser(calendar, config.grace_s, config.idle_partition_s, config.stale_mark_s)
    quarantine = Quarantine(metrics)
    overflow_logged: set[str] = set()
    swept_at: dict[int, float] = {}

    shards = config.shards
    lookup = BucketViews(table.get, shards)

    def keys_of(channel: str, window: str, start: int) -> list[str]:
        """Every key a bucket can have: kept whole, and each shard."""
        return [bucket_key(channel, window, start, shard) for shard in range(WHOLE, shards)]

    def cut_into_shards(channel: str, window: str, start: int) -> bool:
        """Replace a bucket kept whole (an older version's key) by its shards; False if it cannot be.

        Readers take the whole key while it exists, so the shards are written first and the whole key
        deleted last: they never see both or half. The changelog keeps that order (one partition), so a
        crash in between leaves the whole key, cut again the next time."""
        key = bucket_key(channel, window, start)
        if key in quarantine:
            return False
        try:
            parts = split(table[key], shards)
        except Exception as exc:  # noqa: BLE001 - one key never stops the agent
            quarantine.add(key, "merge", exc)
            return False
        for shard, part in enumerate(parts):
            table[bucket_key(channel, window, start, shard)] = part
            index.add(channel, window, start, shard)
        del table[key]
        index.discard(channel, window, start, WHOLE)
        return True

    def merge_rows(channel: str, src: str, block: int, upto: int, grouped: Rows) -> None:
        for (window, start), rows in grouped.items():
            if bucket_key(channel, window, start) in table and not cut_into_shards(channel, window, start):
                continue
            by_shard: dict[int, dict[str, Row]] = {}
            for campaign, row in rows.items():
                by_shard.setdefault(shard_of(campaign, shards), {})[campaign] = row
            parts = [table.get(bucket_key(channel, window, start, shard)) for shard in range(shards)]
            # The cap is the channel's, over all shards: a shard takes new campaigns while the bucket's
            # shards hold fewer than the cap of their own.
            own = [own_campaigns(part) for part in parts]
            was_overflowing = any(part is not None and overflowing(part) for part in parts)
            # A shard the block carries no rows of still folds the source's older pending block, as a
            # bucket kept whole did with any partial: else a shard whose campaigns went quiet would keep
            # it pending for good, out of reach of the total's retirement (only the base retires).
            for shard, part in enumerate(parts):
                if shard not in by_shard and part is not None and part["p"].get(src, (block,))[0] < block:
                    by_shard[shard] = {}
            for shard, shard_rows in by_shard.items():
                key = bucket_key(channel, window, start, shard)
                if key in quarantine:
                    continue
                cap = None if config.max_campaigns is None else config.max_campaigns - sum(own) + own[shard]
                try:
                    merged = merge(parts[shard], src, block, upto, shard_rows, cap)
                    size = None if merged is None else encoded_over(merged, config.max_value_bytes)
                    if merged is not None and size is None:
                        table[key] = merged
                except Exception as exc:  # noqa: BLE001 - one key never stops the agent
                    quarantine.add(key, "merge", exc)
                    continue
                if merged is None:
                    continue
                if size is not None:
                    message = (
                        f"the bucket's shard would be {size} bytes, more than its changelog takes "
                        f"({config.max_value_bytes}): its updates are dropped; raise ADPULSE_BUCKET_SHARDS, "
                        "lower ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL or shorten the campaign names"
                    )
                    quarantine.add(key, "size", ValueError(message))
                    continue
                own[shard] = own_campaigns(merged)
                index.add(channel, window, start, shard)
                closer.touched(channel, window, start)
                if overflowing(merged) and not was_overflowing:
                    was_overflowing = True
                    metrics.overflowing_buckets.inc()
                    if channel not in overflow_logged and len(overflow_logged) < MAX_LOGGED_OVERFLOWS:
                        overflow_logged.add(channel)
                        log.warning(
                            "channel %r has more than %s campaigns in a %s window; the others are counted "
                            "under (other) (ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL; logged once per channel)",
                            channel,
                            config.max_campaigns,
                            window,
                        )

    def sweep(partition: int) -> None:
        """Retention, in event time: once per ``SWEEP_S`` of ``partition``'s event time, drop the buckets of
        its channels older than their window's retention, and the all-time rows of campaigns no retained
        day bucket holds (a channel no day bucket holds any more goes altogether). Event time, not the
        wall clock: a backfill keeps what it needs, and a fast replay of a month still stays bounded."""
        now = closer.event_time(partition)
        if now is None or now - swept_at.get(partition, -SWEEP_S) < SWEEP_S:
            return
        swept_at[partition] = now
        for channel in index.channels():
            if partition_of(channel, config.partitions) != partition:
                continue
            expired = _expired(index, channel, config.retention_s, now)
            for window, start in expired:
                drop(channel, window, start)
            if any(window == "1d" for window, _ in expired):
                retire_total(channel)

    def drop(channel: str, window: str, start: int) -> None:
        for key in keys_of(channel, window, start):
            if key in table:
                del table[key]
        index.discard(channel, window, start)
        lookup.forget(channel, window, start)

    def retire_total(channel: str) -> None:
        days = index.starts(channel, "1d")
        if not days:
            drop(channel, TOTAL, 0)
            return
        live: set[str] = set()
        for start in days:
            day = lookup(channel, "1d", start)
            if day is not None:
                live |= campaigns_of(day)
        for key in keys_of(channel, TOTAL, 0):
            value = table.get(key)
            if value is None or key in quarantine:
                continue
            retired = retire(value, live)
            if retired is not None:
                table[key] = retired

    @app.agent(source, name="merge-partials")
    async def merge_partials(stream: faust.StreamT[bytes]) -> None:
        ran_since = time.perf_counter()
        async for event in stream.events():
            if time.perf_counter() - ran_since > YIELD_AFTER_S:
                # Buffered events come without a pause: let the consumers' heartbeats and the fold stage
                # run between big buckets' merges.
                await asyncio.sleep(0)
                ran_since = time.perf_counter()
            try:
                message = orjson.loads(event.value)
                if "marks" in message:
                    for src, (watermark_ms, active_at, caught_up) in message["marks"].items():
                        if not 0 <= watermark_ms <= MAX_TS_MS:  # the calendar could not place it
                            raise ValueError(
                                f"watermark {watermark_ms!r} of {src!r} is not epoch ms before 2100"
                            )
                        closer.mark(
                            event.message.partition,
                            src,
                            float(watermark_ms) / 1000,
                            float(active_at),
                            bool(caught_up),
                            float(message["at"]),
                        )
                    closer.sources(message.get("sources"))
                else:
                    channel, src, block, upto, grouped = parse_partial(event.key, message)
            except Exception as exc:  # noqa: BLE001 - not what the fold stage sends: skip it, go on
                quarantine.skip_message(event.message.partition, exc)
                continue
            if "marks" in message:
                sweep(event.message.partition)
                continue
            merge_rows(channel, src, block, upto, grouped)
            sweep(event.message.partition)

    snapshot_rows = SnapshotRows(calendar, config.grace_s)
    pruned_days: dict[str, date] = {}
    # The event time of the last tick that had one: while ticks wait for a rebalance, the lag still grows.
    last_watermark: list[float] = []
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adpulse-snapshot")

    def assigned() -> frozenset[int]:
        return frozenset(
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == config.partials_topic
        )

    async def offload(fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    @app.timer(interval=config.tick_s, name="kpi-snapshot")  # type: ignore[untyped-decorator]
    async def snapshot() -> None:
        laps = TickLaps()
        still_owned = ownership(app, assigned)
        if still_owned is None:
            # The table is being handed over or read back from its changelog: rows read now would be half
            # of it. The judge and the KPIs wait for the rebalance to end (Faust ends it after recovery);
            # the event-time lag keeps growing meanwhile, so that a worker stuck there is alerted on.
            if last_watermark:
                metrics.event_time_lag.set(max(0.0, time.time() - last_watermark[0]))
            return
        client = redis()
        owned = OwnedChannels(assigned(), config.partitions)
        now = time.time()

        def abandon() -> None:
            # The partitions moved while the tick ran: the table its rows were read from may be half
            # revoked, and the channels' new owner may have recorded them already. Written now, these older
            # rows would replace the new owner's, for good unless later data revises them. So nothing more
            # of this tick is written (and, found before its writes, no channel is quarantined for what it
            # read); the next ticks redo every row and every closed window of what this worker then owns.
            snapshot_rows.forget()
            closer.forget()
            metrics.abandoned_ticks.inc()
            log.info("tick: the partitions moved while it ran; it wrote no more, the next ones redo it")

        async def write(what: str, op: Callable[[], Awaitable[None]]) -> bool:
            """``op`` until Redis answers, each attempt only while the partitions are still the tick's (a
            write that waited out a Redis outage must not land after a rebalance meanwhile); False, the
            tick abandoned, once they moved."""
            try:
                await retry.call(what, lambda: _if_owned(still_owned, op))
            except PartitionsMovedError:
                abandon()
                return False
            return True

        closer.keep_only(owned.__contains__)
        watermarks = closer.watermarks(owned.partitions)
        if not watermarks:
            return
        # Not before: while the table is read back from its changelog (no marks yet) it grows between ticks,
        # and rebuilding the index from every key at each tick slowed the read back (a million keys). Off
        # the loop: after a recovery of a million keys it took 2.5 s.
        await index.resync(
            len(table), table.keys, offload, lambda key, exc: quarantine.add(key, "index", exc)
        )
        laps.lap("index")
        by_partition: dict[int, set[str]] = {}
        for channel in index.channels():
            p = partition_of(channel, config.partitions)
            if p in watermarks and channel not in quarantine:
                by_partition.setdefault(p, set()).add(channel)
        watermark_of = {c: watermarks[p] for p, cs in by_partition.items() for c in cs}
        watermark = min(watermarks.values())
        metrics.bucket_keys.set(index.buckets())
        due = list(closer.due(watermark_of, index.starts))
        laps.lap("due")
        # The rows are built off the event loop (thousands of campaigns take longer than a heartbeat
        # may wait); only this timer touches the snapshot's state, and table values never change in place.
        built = await offload(_build, snapshot_rows, watermark_of, due, lookup, calendar)
        laps.lap("build")
        if not still_owned():
            abandon()
            return
        for channel, where, exc in built.failed:
            quarantine.add(channel, where, exc)
        for channel, window in built.recorded:
            closer.recorded(channel, window)

        try:
            if not await write(
                "writing the KPI snapshot",
                lambda: _write_snapshot(client, config.redis_prefix, built.mapping, built.deleted, watermark),
            ):
                return
        except Exception:
            snapshot_rows.forget()  # rewrite every row next tick: Redis may hold some of them, or none
            raise
        laps.lap("write")
        expired = expired_days(calendar, config.retention_s, watermark, pruned_days)
        if built.closed_fields or expired:
            if not await write(
                "recording closed windows",
                lambda: _write_closed(
                    client, config.redis_prefix, built.closed_fields, config.retention_s, expired
                ),
            ):
                return
            laps.lap("record closed")
        if evaluator is not None:
            judge_started = time.perf_counter()
            try:
                judged = await _judge(
                    evaluator(),
                    owned,
                    built.closed,
                    lookup,
                    index,
                    watermark,
                    now,
                    health,
                    offload,
                    still_owned,
                    config.retention_s,
                )
            except Exception:
                # Judge these windows again next tick: recompute what closed, reload progress from Redis.
                closer.forget()
                evaluator().invalidate()
                raise
            if not judged:
                # The partitions moved while the judge ran (off the loop): what it read of the table may
                # be half revoked. Its rounds are not saved; whoever owns the channels now judges them.
                closer.forget()
                evaluator().invalidate()
            metrics.judge_seconds.observe(time.perf_counter() - judge_started)
            laps.lap("judge")
        holder.rows = built.channel_rows
        metrics.watermark.set(watermark)
        metrics.event_time_lag.set(max(0.0, time.time() - watermark))
        last_watermark[:] = [watermark]
        metrics.snapshot_seconds.observe(time.perf_counter() - laps.started)
        laps.log_if_slow(len(built.closed))

    return table


async def _judge(
    judge: Evaluator,
    owned: OwnedChannels,
    closed: list[KpiRow],
    lookup: Callable[[str, str, int], Any],
    index: BucketIndex,
    watermark: float,
    now: float,
    health: Callable[[], HealthMonitor] | None,
    offload: Offload,
    still_owned: Callable[[], bool],
    retention_s: dict[str, float],
) -> bool:
    """Judge the windows closed since the last judged one, in event-time order, one lifecycle round each
    (a backfill closes many at once), then the budgets, then the data health of the fold's counters.

    The windows are judged off the event loop (``offload``): with many campaigns a round takes longer than
    the loop may stall. Returns False, having published nothing more, if the partitions moved meanwhile.
    """
    await judge.ensure_loaded(owned)
    rounds: dict[int, list[KpiRow]] = {}
    for row in closed:
        if judge.claim(row, now):
            rounds.setdefault(row.window_end or 0, []).append(row)
    log.debug("tick: watermark %s, %d windows closed, %d judging rounds", watermark, len(closed), len(rounds))
    for end, batch in sorted(rounds.items()):
        findings, judged = await offload(_judge_round, judge, batch, lookup, health)
        if not still_owned():
            return False
        await judge.publish(findings, judged, at_s=end)
    await judge.save_progress()
    await judge.prune(watermark, retention_s)
    await judge.publish(
        *judge.judge_budgets(owned, lookup, index.starts, await judge.approvals(), watermark),
        evidence_s=watermark,
    )
    if health is not None:
        counters = await health().judge_counters(owned, judge.book.firing())
        if counters is not None:
            await judge.publish(*counters)
    return True


def _judge_round(
    judge: Evaluator,
    batch: list[KpiRow],
    lookup: Callable[[str, str, int], Any],
    health: Callable[[], HealthMonitor] | None,
) -> tuple[list[Finding], dict[Fingerprint, float | None]]:
    """One round's findings: the judge's, screened for data health (pure: runs off the event loop)."""
    findings, judged = judge.judge_windows(batch, lookup)
    if health is not None:
        findings, judged = health().screen(findings, judged, batch, lookup)
    return findings, judged


@dataclass(slots=True)
class _Built:
    """What one tick computed off the event loop, for the loop to write and judge."""

    mapping: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    channel_rows: list[KpiRow] = field(default_factory=list)
    closed: list[KpiRow] = field(default_factory=list)
    closed_fields: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    recorded: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, Exception]] = field(default_factory=list)


def _build(
    rows: SnapshotRows,
    watermark_of: dict[str, float],
    due: list[tuple[str, str, list[int]]],
    lookup: Callable[[str, str, int], Any],
    calendar: Calendar,
) -> _Built:
    """The snapshot's changed rows (encoded) and the closed windows' rows; a channel that raises is left
    out and reported in ``failed`` (pure apart from ``rows``' own state: runs off the event loop)."""
    built = _Built()
    delta = rows.update(
        watermark_of, lookup, lambda channel, exc: built.failed.append((channel, "snapshot", exc))
    )
    zone = calendar.zone
    # As text: orjson's bytes keep a buffer of kilobytes each, and a tick that closes an hour holds a row for
    # every campaign (seen: 300 MB for 10 channels × 1000 campaigns, kept by the allocator afterwards).
    built.mapping = {row.field: orjson.dumps(row.to_json(zone)).decode() for row in delta.changed}
    built.deleted = delta.deleted
    built.channel_rows = delta.channel_rows
    broken = {channel for channel, _, _ in built.failed}
    for channel, window, todo in due:
        if channel in broken:
            continue
        try:
            built.closed.extend(closed_rows(channel, window, todo, lookup, calendar))
        except Exception as exc:  # noqa: BLE001 - one channel never stops the tick
            built.failed.append((channel, "closing", exc))
            broken.add(channel)
            continue
        built.recorded.append((channel, window))
    built.closed_fields = closed_fields(built.closed, calendar)
    return built


def _expired(
    index: BucketIndex, channel: str, retention_s: dict[str, float], now: float
) -> list[tuple[str, int]]:
    """This channel's buckets older than their window's retention at event time ``now`` (the all-time total
    has none: its campaigns retire with their last day bucket, see ``agents.partials.retire``)."""
    return [
        (window, start)
        for window in WINDOWS
        for start in index.starts(channel, window)
        if start + retention_s[window] < now
    ]


def ownership(app: Any, assigned: Callable[[], frozenset[int]]) -> Callable[[], bool] | None:
    """For a tick starting now: ``None`` while ``app`` (Faust) rebalances, else a check that no rebalance
    began since and the partitions are the same (one that came and went leaves Faust's count moved)."""
    if app.rebalancing:
        return None
    generation = app.rebalancing_count
    partitions = assigned()

    def still_owned() -> bool:
        return not app.rebalancing and app.rebalancing_count == generation and assigned() == partitions

    return still_owned


class PartitionsMovedError(Exception):
    """A tick's write was not made: the worker's partitions moved since the tick began."""


async def _if_owned(still_owned: Callable[[], bool], write: Callable[[], Awaitable[None]]) -> None:
    """``await write()`` if the tick's partitions are still this worker's; else PartitionsMovedError."""
    if not still_owned():
        raise PartitionsMovedError("the partitions moved while the tick ran")
    await write()


async def _write_snapshot(
    client: AsyncRedis, prefix: str, mapping: dict[str, str], deleted: list[str], watermark: float
) -> None:
    """One pipelined write per tick: the rows that changed, and the fields of rows that are gone."""
    keys = Keys(prefix)
    pipe = client.pipeline(transaction=False)
    if mapping:
        pipe.hset(keys.kpis, mapping=mapping)
    if deleted:
        pipe.hdel(keys.kpis, *deleted)
    pipe.hset(keys.kpis_meta, mapping={"watermark_s": watermark, "updated_at": time.time()})
    await pipe.execute()


def closed_key(prefix: str, window: str, day: str) -> str:
    """The Redis hash holding one local day's closed ``window`` buckets (field ``channel|campaign|start``)."""
    return Keys(prefix).closed_windows(window, day)


def closed_fields(rows: list[KpiRow], calendar: Calendar) -> dict[tuple[str, str], dict[str, str]]:
    """Closed windows' rows encoded for Redis, by (window, local day of their start)."""
    by_day: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        day = datetime.fromtimestamp(row.window_start, calendar.zone).date().isoformat()
        field = f"{row.channel}|{row.campaign}|{row.window_start}"
        by_day.setdefault((row.window, day), {})[field] = orjson.dumps(row.to_json(calendar.zone)).decode()
    return by_day


def expired_days(
    calendar: Calendar, retention_s: dict[str, float], watermark: float, pruned: dict[str, date]
) -> list[tuple[str, str]]:
    """(window, local day) of closed-window hashes past their retention in event time (and a day more, as
    their TTL), not already pruned: the TTL alone counts wall-clock time, which a fast backfill or a replay
    of a month outruns. ``pruned`` remembers the newest day pruned per window."""
    found = []
    for window, kept_s in retention_s.items():
        cutoff = datetime.fromtimestamp(watermark - kept_s - 86400, calendar.zone).date()
        first = pruned.get(window, cutoff - timedelta(days=PRUNE_DAYS))
        day = first + timedelta(days=1)
        while day < cutoff:
            found.append((window, day.isoformat()))
            day += timedelta(days=1)
        pruned[window] = max(first, cutoff - timedelta(days=1))
    return found


async def _write_closed(
    client: AsyncRedis,
    prefix: str,
    by_day: dict[tuple[str, str], dict[str, str]],
    retention_s: dict[str, float],
    expired: list[tuple[str, str]],
) -> None:
    """Record closed windows once (re-recording after a restart overwrites with the same values), and
    delete the days past their retention."""
    pipe = client.pipeline(transaction=False)
    for (window, day), mapping in by_day.items():
        key = closed_key(prefix, window, day)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, int(retention_s[window] + 86400))
    if expired:
        pipe.delete(*(closed_key(prefix, window, day) for window, day in expired))
    await pipe.execute()
