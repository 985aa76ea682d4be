"""Data health on the worker: the fold stage's counters into Redis, and the judges of ``alerts.data_health``.

The fold stage adds, per flush, what it saw of each channel to the Redis hash of the current wall-clock
bucket (``Keys.health``): records accepted, rejects per reason and per offending field, records stamped
ahead of the worker's clock. Every worker's fold stage writes there, whatever channels its partitions
carry; the evaluator that owns a channel (its partials partition) reads the buckets back once per bucket
and judges them. Wall-clock buckets, not event time: a reject may carry no usable time, and what matters is
what the trackers send now. The counters are at-least-once (a fold stage replaying a block after a crash
counts it again), which a ratio judged over minutes shrugs off.

The silent-tracker judge works on the KPI buckets instead (event time), next to the anomaly detectors:
``screen`` adds its finding to a judging round and withholds the funnel findings it makes meaningless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from agents.evaluate import vector_counts
from agents.fold import SourceRecord
from agents.partials import BucketValue
from agents.redis_retry import RedisRetry
from agents.snapshot import KpiRow
from alerts.data_health import (
    AHEAD,
    AHEAD_MS,
    COUNTER_METRICS,
    FIELD_PREFIX,
    HealthBounds,
    Minute,
    Span,
    clicks_per_spend,
    is_silent,
    judge_counters,
    judge_silence,
    withhold_funnel,
)
from alerts.lifecycle import Firing
from alerts.model import Finding, Fingerprint
from streams.codec import Rejection
from streams.dlq import record_channel
from streams.events import NO_CAMPAIGN
from streams.keys import Keys
from streams.redis_client import AsyncRedis, as_text
from streams.windows import MINUTE_S, TOTAL, Calendar

log = logging.getLogger(__name__)
Lookup = Callable[[str, str, int], BucketValue | None]
_TIMESTAMP = attrgetter("timestamp")
#: Where channels beyond the tally's bound are counted (a stream of junk keys must not grow Redis).
OTHER = "(other)"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Bucket and window sizes of the counters, and the judges' bounds."""

    bucket_s: int = 60
    window_s: int = 300
    baseline_s: int = 3600
    #: A bucket is judged this long after it ends, so that every fold stage's last flush is in.
    settle_s: float = 2.0
    clock_ahead_s: float = 60.0
    max_channels: int = 500
    rolling_s: int = 600
    bounds: HealthBounds = field(default_factory=HealthBounds)


# -- the fold stage's side ------------------------------------------------------------------------------


class HealthTally:
    """What the fold stage saw per channel since the last ``drain``."""

    def __init__(self, max_channels: int = 500, clock_ahead_s: float = 60.0) -> None:
        self.max_channels = max_channels
        self.ahead_ms = int(clock_ahead_s * 1000)
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, channel: str, what: str, n: int = 1) -> None:
        counts = self._counts.get(channel)
        if counts is None:
            if len(self._counts) >= self.max_channels:
                channel = OTHER
            counts = self._counts.setdefault(channel, {})
        counts[what] = counts.get(what, 0) + n

    def accepted(self, by_channel: Mapping[str, int]) -> None:
        """Accepted records per channel (``PartitionFold.drain_accepted``)."""
        for channel, n in by_channel.items():
            self.add(channel, "accepted", n)

    def reject(self, key: bytes | None, value: bytes | None, rejection: Rejection) -> None:
        """One reject: its reason, and its field where the record's shape is to blame."""
        channel = record_channel(key, value)
        self.add(channel, rejection.reason)
        if rejection.reason == "invalid" and rejection.field:
            self.add(channel, f"{FIELD_PREFIX}{rejection.field}:{rejection.problem or 'invalid'}")

    def stamps(self, records: Sequence[SourceRecord], received_ms: int, newest: int | None = None) -> None:
        """Records fetched at ``received_ms``: note those whose Kafka timestamp is ahead of it. A CreateTime
        later than the fetch is a producer clock running fast; one earlier says nothing (the record may have
        waited in a backlog). ``newest`` is their largest timestamp, if the caller knows it."""
        limit = received_ms + self.ahead_ms
        if newest is None:
            newest = max(map(_TIMESTAMP, records), default=limit)  # one pass in C
        if newest <= limit:
            return  # the common fetch: no record ahead
        for record in records:
            if record.timestamp > limit:
                channel = record_channel(record.key, record.value)
                self.add(channel, AHEAD)
                self.add(channel, AHEAD_MS, record.timestamp - received_ms)

    def drain(self) -> dict[str, dict[str, int]]:
        drained, self._counts = self._counts, {}
        return drained

    def put_back(self, drained: Mapping[str, Mapping[str, int]]) -> None:
        """Add a drained tally that could not be written (Redis away) back, to go with the next one."""
        for channel, counts in drained.items():
            for what, n in counts.items():
                self.add(channel, what, n)


async def write_tally(
    redis: AsyncRedis,
    prefix: str,
    tally: Mapping[str, Mapping[str, int]],
    bucket_s: int,
    ttl_s: int,
    now: float,
) -> None:
    """Add one drained tally to the current bucket's hash (one pipelined round trip)."""
    if not tally:
        return
    key = Keys(prefix).health(int(now) // bucket_s * bucket_s)
    pipe = redis.pipeline(transaction=False)
    for channel, counts in tally.items():
        for what, n in counts.items():
            pipe.hincrby(key, f"{channel}|{what}", n)
    pipe.expire(key, ttl_s)
    await pipe.execute()


# -- the evaluator's side -------------------------------------------------------------------------------


def _add(into: dict[str, dict[str, int]], raw: Mapping[bytes | str, bytes | str]) -> None:
    for field_name, count in raw.items():
        channel, _, what = as_text(field_name).rpartition("|")
        counts = into.setdefault(channel, {})
        counts[what] = counts.get(what, 0) + int(count)


class HealthMonitor:
    """Judges the data health of the channels a worker owns; see the module docstring."""

    def __init__(
        self,
        config: HealthConfig,
        redis: AsyncRedis,
        prefix: str,
        calendar: Calendar,
        clock: Callable[[], float] = time.time,
        retry: RedisRetry | None = None,
    ) -> None:
        """``retry``: how Redis calls wait out an outage (``agents.redis_retry``; the worker shares one)."""
        self.config = config
        self.redis = redis
        self.retry = retry if retry is not None else RedisRetry()
        self.prefix = prefix
        self.calendar = calendar
        self.clock = clock
        self._judged_end: int | None = None

    async def judge_counters(
        self, owned: Container[str], firing: Iterable[Firing]
    ) -> tuple[list[Finding], dict[Fingerprint, float | None]] | None:
        """Judge the newest complete window of counters, once per bucket; None when none is due."""
        cfg = self.config
        now = self.clock()
        end = int(now - cfg.settle_s) // cfg.bucket_s * cfg.bucket_s
        if self._judged_end is not None and end <= self._judged_end:
            return None
        self._judged_end = end
        keys = Keys(self.prefix)
        starts = range(end - cfg.window_s - cfg.baseline_s, end, cfg.bucket_s)

        async def read() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for start in starts:
                pipe.hgetall(keys.health(start))
            return await pipe.execute()

        raws = await self.retry.call("reading data-health counters", read)
        current: dict[str, dict[str, int]] = {}
        baseline: dict[str, dict[str, int]] = {}
        for start, raw in zip(starts, raws, strict=True):
            _add(current if start >= end - cfg.window_s else baseline, raw)
        span = Span(end - cfg.window_s, end, self.calendar.zone)
        findings: list[Finding] = []
        judged: dict[Fingerprint, float | None] = {}
        for channel, counts in current.items():
            if channel not in owned:
                continue
            found, ok = judge_counters(channel, counts, baseline.get(channel, {}), span, cfg.bounds)
            findings += found
            judged.update(ok)
        # A channel gone quiet has nothing wrong with its records any more: let its alerts resolve.
        for alert in firing:
            if (
                alert.kind == "data_health"
                and alert.finding.metric in COUNTER_METRICS
                and alert.channel in owned
            ):
                judged.setdefault(alert.fingerprint, None)
        return findings, judged

    def screen(
        self,
        findings: list[Finding],
        judged: dict[Fingerprint, float | None],
        rows: Iterable[KpiRow],
        lookup: Lookup,
    ) -> tuple[list[Finding], dict[Fingerprint, float | None]]:
        """One judging round of closed windows: add the silent-tracker findings, withhold the funnel findings
        of windows that hold a silent minute."""
        cfg = self.config
        spans: dict[str, tuple[int, int]] = {}
        newest: dict[str, int] = {}
        for row in rows:
            if row.campaign != NO_CAMPAIGN or row.window_end is None or row.window == TOTAL:
                continue
            # The rolling window is what the 1-minute round judges; the others judge their own span.
            start = row.window_end - cfg.rolling_s if row.window == "1m" else row.window_start
            low, high = spans.get(row.channel, (start, row.window_end))
            spans[row.channel] = (min(low, start), max(high, row.window_end))
            if row.window == "1m":
                newest[row.channel] = row.window_end
        silent: set[str] = set()
        for channel, (start, end) in spans.items():
            rate = clicks_per_spend(vector_counts(lookup(channel, TOTAL, 0), None), cfg.bounds)
            if rate is None:
                continue
            minutes = [
                Minute(s, vector_counts(lookup(channel, "1m", s), None)) for s in range(start, end, MINUTE_S)
            ]
            if any(is_silent(m, rate, cfg.bounds) for m in minutes):
                silent.add(channel)
            if channel in newest:
                recent = [m for m in minutes if m.start_s < newest[channel]]
                outage = judge_silence(channel, recent, rate, self.calendar.zone, cfg.bounds)
                # Only a finding: "no outage" is DropToZero's verdict on the same fingerprint, which it
                # gives whenever its baseline is warm (an unwarmed one must not resolve a real outage).
                if outage is not None:
                    findings = [*findings, outage]
        if not silent:
            return findings, judged
        log.info(
            "data health: %s silent while spend flows; their funnel findings are withheld", sorted(silent)
        )
        return withhold_funnel(findings, judged, silent)
