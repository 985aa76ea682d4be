"""The fold stage's state for one source partition: validate, deduplicate, judge lateness, fold.

Pure (no Kafka, no Redis): records go in, partial aggregates, checkpoints and rejects come out.

Exactly-once without broker transactions (DESIGN.md, "local-global aggregation"): a source partition
is cut into fixed blocks of ``block_records`` offsets. A partial says "block k of partition p
contributes these absolute totals to channel c" — never an increment — so a re-send after a crash
overwrites instead of adding. The stage checkpoints only at block starts, after every partial of
the earlier blocks is acknowledged; the table folds a block into its base once a later block of the
same partition arrives and ignores older blocks from then on (``agents.partials``).

Replays must decide every record exactly as the first run did, so every decision depends only on
the partition's own records: the watermark advances with ``min(event ts, record timestamp)`` (a
tracker cannot push event time past the moment it sent the record), deduplicated ids are evicted
only at block boundaries, and a checkpoint carries the watermark and the offset from which the
dedup set can be rebuilt (``rebuild_from``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streams.codec import N_SLOTS, Accepted, Rejection, decode
from streams.windows import MINUTE_S, TOTAL, Calendar


class SourceRecord(Protocol):
    """What the fold needs of a Kafka record, and the DLQ of a rejected one (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class FoldConfig:
    """The knobs of the fold, in seconds (converted to milliseconds inside)."""

    block_records: int
    grace_s: float
    max_future_skew_s: float
    max_record_bytes: int
    currency: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a partition can resume: a block start, its watermark and the dedup rebuild point."""

    offset: int
    watermark_ms: int
    rebuild_from: int


@dataclass(frozen=True, slots=True)
class Partial:
    """Absolute totals of one block of one source partition for one channel.

    ``rows`` are ``[window, bucket_start_s, campaign, *counts]``; ``upto`` is the last source offset
    the totals include (later partials of the same block supersede earlier ones).
    """

    channel: str
    src: str
    block: int
    upto: int
    rows: list[list[object]]


@dataclass(slots=True)
class FoldOutput:
    """What one call to ``PartitionFold.process`` or ``flush`` produced, in order."""

    partials: list[Partial] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    rejects: list[tuple[SourceRecord, Rejection]] = field(default_factory=list)


OUTCOMES = ("accepted", "invalid", "late", "duplicate")


class PartitionFold:
    """Fold state of one source partition (topic short name + partition number)."""

    def __init__(
        self,
        topic: str,
        partition: int,
        config: FoldConfig,
        calendar: Calendar,
        checkpoint: Checkpoint,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.src = f"{topic}/{partition}"
        self.config = config
        self.calendar = calendar
        self._grace_ms = int(config.grace_s * 1000)
        self._skew_ms = int(config.max_future_skew_s * 1000)
        self.block = checkpoint.offset // config.block_records
        self.watermark_ms = checkpoint.watermark_ms
        self.position = checkpoint.offset
        # channel -> (campaign, minute) -> counts, for the current block only.
        self._acc: dict[str, dict[tuple[str, int], list[int]]] = {}
        # channel -> minutes changed since the last flush (only their roll-ups are re-sent).
        self._dirty: dict[str, set[int]] = {}
        # Dedup: event_id -> minute; per minute, the ids and the smallest offset that added one.
        self._seen: dict[str, int] = {}
        self._seen_by_minute: defaultdict[int, list[str]] = defaultdict(list)
        self._first_offset_by_minute: dict[int, int] = {}
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.late_within_grace = 0

    # -- restart -------------------------------------------------------------------------------

    def rebuild(self, records: Sequence[SourceRecord]) -> None:
        """Re-read ``[rebuild_from, checkpoint)`` to restore the dedup set the first run had there."""
        for record in records:
            decoded = decode(self.topic, record.value, self.config.currency, self.config.max_record_bytes)
            if (
                isinstance(decoded, Accepted)
                and not self._from_future(decoded.ts_ms, record.timestamp)
                and decoded.event_id not in self._seen
            ):
                self._remember(decoded.event_id, decoded.ts_ms, record.offset)
        self._evict()

    def _from_future(self, ts: int, sent: int) -> bool:
        """The same test ``process`` applies: an event time too far past the record's send time."""
        return sent > 0 and ts > sent + self._skew_ms

    # -- the hot path --------------------------------------------------------------------------

    def process(self, records: Sequence[SourceRecord]) -> FoldOutput:
        """Fold a batch of consecutive records of this partition."""
        out = FoldOutput()
        block_records = self.config.block_records
        block_end = (self.block + 1) * block_records
        currency = self.config.currency
        max_bytes = self.config.max_record_bytes
        grace_ms = self._grace_ms
        skew_ms = self._skew_ms
        seen = self._seen
        seen_by_minute = self._seen_by_minute
        first_offset = self._first_offset_by_minute
        acc = self._acc
        dirty = self._dirty
        outcomes = self.outcomes
        topic = self.topic
        accepted = 0
        for record in records:
            offset = record.offset
            if offset < self.position:
                continue  # already folded (a re-delivered fetch)
            if offset >= block_end:
                self._close_block(out, offset // block_records)
                block_end = (self.block + 1) * block_records
                acc = self._acc
            self.position = offset + 1
            decoded = decode(topic, record.value, currency, max_bytes)
            if type(decoded) is Rejection:
                outcomes["invalid"] += 1
                out.rejects.append((record, decoded))
                continue
            event_id, ts, channel, campaign, contribution = decoded  # type: ignore[misc]
            sent = record.timestamp
            if sent > 0 and ts > sent + skew_ms:  # _from_future, inlined on the hot path
                outcomes["invalid"] += 1
                out.rejects.append((record, _future(ts, sent, skew_ms)))
                continue
            if event_id in seen:
                outcomes["duplicate"] += 1
                continue
            minute_ms = ts - ts % 60_000
            minute = minute_ms // 1000
            # _remember_minute, inlined on the hot path.
            seen[event_id] = minute
            seen_by_minute[minute].append(event_id)
            if minute not in first_offset:
                first_offset[minute] = offset
            watermark = self.watermark_ms
            if minute_ms + 60_000 + grace_ms <= watermark:
                outcomes["late"] += 1
                out.rejects.append((record, _late(ts, watermark, grace_ms)))
                continue
            if ts < watermark:
                self.late_within_grace += 1
            elif (ts if sent <= 0 or ts < sent else sent) > watermark:
                self.watermark_ms = ts if sent <= 0 or ts < sent else sent
            cells = acc.get(channel)
            if cells is None:
                cells = acc[channel] = {}
            cell = cells.get((campaign, minute))
            if cell is None:
                cell = cells[(campaign, minute)] = [0] * N_SLOTS
            for slot, amount in contribution:
                cell[slot] += amount
            minutes = dirty.get(channel)
            if minutes is None:
                minutes = dirty[channel] = set()
            minutes.add(minute)
            accepted += 1
        outcomes["accepted"] += accepted
        return out

    def flush(self) -> list[Partial]:
        """Partials of every channel changed since the last flush: the absolute block totals of the
        buckets (1m, 1h, 1d, total) those changes touched; untouched buckets keep their last value."""
        partials = [self._partial(channel, minutes) for channel, minutes in sorted(self._dirty.items())]
        self._dirty.clear()
        return partials

    # -- internals -----------------------------------------------------------------------------

    def _close_block(self, out: FoldOutput, next_block: int) -> None:
        out.partials.extend(self.flush())
        self._evict()
        self.block = next_block
        self._acc = {}
        offset = next_block * self.config.block_records
        out.checkpoints.append(Checkpoint(offset, self.watermark_ms, self._rebuild_from(offset)))

    def _partial(self, channel: str, dirty_minutes: set[int]) -> Partial:
        rows: dict[tuple[str, int, str], list[int]] = {}
        calendar = self.calendar
        touched = {(TOTAL, 0)}
        for minute in dirty_minutes:
            touched.update(
                (("1m", minute), ("1h", calendar.hour_start(minute)), ("1d", calendar.day_start(minute)))
            )
        for (campaign, minute), counts in self._acc.get(channel, {}).items():
            for window, start in (
                ("1m", minute),
                ("1h", calendar.hour_start(minute)),
                ("1d", calendar.day_start(minute)),
                (TOTAL, 0),
            ):
                if (window, start) not in touched:
                    continue
                row = rows.get((window, start, campaign))
                if row is None:
                    rows[(window, start, campaign)] = list(counts)
                else:
                    for slot in range(N_SLOTS):
                        row[slot] += counts[slot]
        return Partial(
            channel=channel,
            src=self.src,
            block=self.block,
            upto=self.position - 1,
            rows=[[window, start, campaign, *counts] for (window, start, campaign), counts in rows.items()],
        )

    def _remember(self, event_id: str, ts_ms: int, offset: int) -> None:
        self._remember_minute(event_id, (ts_ms // 1000) - (ts_ms // 1000) % MINUTE_S, offset)

    def _remember_minute(self, event_id: str, minute: int, offset: int) -> None:
        self._seen[event_id] = minute
        self._seen_by_minute[minute].append(event_id)
        if minute not in self._first_offset_by_minute:
            self._first_offset_by_minute[minute] = offset

    def _evict(self) -> None:
        """Forget ids whose minute is closed: a re-send of them is late whatever the set says."""
        horizon_s = (self.watermark_ms - self._grace_ms) / 1000 - MINUTE_S
        for minute in [m for m in self._seen_by_minute if m <= horizon_s]:
            for event_id in self._seen_by_minute.pop(minute):
                if self._seen.get(event_id) == minute:
                    del self._seen[event_id]
            self._first_offset_by_minute.pop(minute, None)

    def _rebuild_from(self, offset: int) -> int:
        return min(self._first_offset_by_minute.values(), default=offset)

    @property
    def dedup_size(self) -> int:
        """How many event ids the dedup set holds now."""
        return len(self._seen)


def _future(ts: int, sent: int, skew_ms: int) -> Rejection:
    return Rejection(
        "future",
        f"ts is {(ts - sent) / 1000:.0f} s after the record was sent; the limit is {skew_ms / 1000:.0f} s "
        "(ADPULSE_MAX_FUTURE_SKEW_S); is the tracker's clock or time unit wrong?",
    )


def _late(ts: int, watermark: int, grace_ms: int) -> Rejection:
    return Rejection(
        "late",
        f"event time is {(watermark - ts) / 1000:.0f} s behind this partition's watermark; its 1-minute "
        f"window closed after the {grace_ms / 1000:.0f} s grace period (ADPULSE_GRACE_S)",
    )
