"""The fold stage's state for one source partition: validate, deduplicate, judge lateness, fold.

Pure (no Kafka, no Redis): records go in, partial aggregates, checkpoints and rejects come out.

Exactly-once without broker transactions (DESIGN.md, "local-global aggregation"): a source partition
is cut into fixed blocks of ``block_records`` offsets. A partial says "block k of partition p
contributes these absolute totals to channel c" — never an increment — so a re-send after a crash
overwrites instead of adding. The stage checkpoints only at block starts, after every partial of
the earlier blocks is acknowledged, and sends nothing of a block before its checkpoint is written;
the table folds a block into its base once a later block of the same partition arrives and ignores
older blocks from then on (``agents.partials``).

Event time and clocks. A record's event time ``ts`` and its Kafka CreateTime are the tracker's; the
tracker's clock can be wrong. So the watermark advances with ``min(ts, bound)``, where ``bound`` is a
time the tracker cannot push forward: the broker's LogAppendTime where the topic stamps it, else the
worker's receive time of the fetch (``received_ms``, read once per batch), lowered to the CreateTime
when that is earlier (a tracker can only hold its own events back). An event more than
``max_future_skew_s`` past its bound is rejected as ``future``. A host whose clock runs fast therefore
only gets its own events rejected, never other trackers' events judged late.

Replays must decide every record exactly as the first run did, because a replayed block may be
merged with keys the first run published. Everything but the receive time is in the log (event
time, CreateTime, LogAppendTime, offsets) or in the checkpoint (the watermark, the offset from which
the dedup set is rebuilt, ``rebuild_from``). The receive time differs on a replay, and it can only be
later (the worker's clock is trusted). A record whose ``min(ts, CreateTime)`` is at or below the
receive time is decided the same way under any later receive time (its bound never binds); only a
record ahead of the receive time ("ahead": a fast clock) would be decided differently. The fold
reports every batch holding such a record as a ``ClockStep`` (its offsets and receive time), the
stage persists the steps before it publishes anything computed from them, and a replay or dedup
rebuild judges those offsets with the recorded time instead of its own. So nothing is counted twice
or lost: a replay publishes exactly what the first run would have published. (Two assumptions: the
workers' clocks do not run behind each other by more than a fetch's delay, and Redis keeps what it
acknowledged. A Redis that loses its last second loses the steps with the checkpoints: records of a fast
clock in that second may then be judged again, by a later time.)

No record can stop the stage: one whose handling raises goes to the DLQ as ``error``. A channel's
campaigns beyond ``max_campaigns_per_channel`` in a block are counted under ``OVERFLOW_CAMPAIGN``
(first come, first kept: the same on a replay), so a partial has at most that many campaigns.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from agents.partials import CEILING
from streams.codec import N_SLOTS, Accepted, Rejection, decode, fast_check
from streams.events import NO_CAMPAIGN, OVERFLOW_CAMPAIGN
from streams.windows import MINUTE_S, TOTAL, Calendar


class SourceRecord(Protocol):
    """What the fold needs of a Kafka record, and the DLQ of a rejected one (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    timestamp_type: int
    value: bytes | None


#: ``timestamp_type`` of a record the broker stamped on append (topic config message.timestamp.type).
LOG_APPEND_TIME = 1
#: The "receive time" of a batch whose bound is every record's own LogAppendTime (or a dedup rebuild of
#: records no step covers): later than any timestamp, so only the record's own timestamp bounds it.
NO_CLOCK = 1 << 62
#: At most this many event ids ahead of the watermark travel in a checkpoint (see ``_rebuild_point``).
CARRY_MAX = 1_000
#: Blocks of a new incarnation of a topic partition are numbered this far past the last checkpointed
#: block of the old one: the table may have seen blocks past the checkpoint that Redis lost, and no
#: partition closes a million blocks (ten million records at least) in the second Redis can lose.
BASE_GAP = 1_000_000


@dataclass(frozen=True, slots=True)
class FoldConfig:
    """The knobs of the fold, in seconds (converted to milliseconds inside)."""

    block_records: int
    grace_s: float
    max_future_skew_s: float
    max_record_bytes: int
    currency: str
    max_campaigns_per_channel: int = 2000


@dataclass(frozen=True, slots=True)
class Anchor:
    """The record whose arrival closed the block before a checkpoint: it names the log the checkpoint
    was taken on.

    Offsets alone cannot tell a recreated topic that already holds more records than the checkpoint from
    the old one. The record at the anchor's offset can: a new log holds another record there, or none.
    It is the first record at or past the checkpoint, so it is in the log whenever the checkpoint is
    (retention deletes from the start).
    """

    offset: int
    timestamp: int
    #: ``record_digest`` of the record.
    digest: str

    @classmethod
    def of(cls, record: SourceRecord) -> Anchor:
        """The anchor of ``record``."""
        return cls(record.offset, record.timestamp, record_digest(record))

    def verdict(self, found: SourceRecord | None, log_end: int | None) -> bool | None:
        """Whether the log holds this anchor: ``found`` is its first record at or past the anchor's offset
        (None if none was read), ``log_end`` its end as a fetch reported it (None if unknown).

        True: the same log. False: another log (the anchor's offset holds another record, or the log
        ends before it). None: nothing read and the log reaches past the anchor, so no evidence either way.
        """
        if found is not None:
            return (
                found.offset == self.offset
                and found.timestamp == self.timestamp
                and record_digest(found) == self.digest
            )
        if log_end is not None and log_end <= self.offset:
            return False
        return None


def record_digest(record: SourceRecord) -> str:
    """A short hash of a record's key, value and timestamp (hex), to recognise it in a log again."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (record.key, record.value):
        # Length-prefixed, so that key and value cannot trade bytes; -1 for a null.
        digest.update((-1 if part is None else len(part)).to_bytes(8, "big", signed=True))
        digest.update(part or b"")
    digest.update(record.timestamp.to_bytes(8, "big", signed=True))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a partition can resume: a block start, its watermark and the dedup rebuild point.

    ``base`` is the block number of offset 0: 0 for a partition's first incarnation, higher after the
    topic was recreated (``resume_point``), so that the table takes the new offsets' blocks as newer.
    ``ahead`` holds the dedup set's minutes past the watermark that the rebuild does not re-read:
    ``(minute, first offset, event ids)``. ``anchor`` names the log (None for a checkpoint not taken at a
    record: a partition's start, or one saved before anchors existed).
    """

    offset: int
    watermark_ms: int
    rebuild_from: int
    base: int = 0
    ahead: tuple[tuple[int, int, tuple[str, ...]], ...] = ()
    anchor: Anchor | None = None

    def fields(self) -> dict[str, object]:
        """The checkpoint as JSON-ready fields (``from_fields`` reads them back)."""
        fields: dict[str, object] = {
            "offset": self.offset,
            "watermark_ms": self.watermark_ms,
            "rebuild_from": self.rebuild_from,
            "base": self.base,
            "ahead": self.ahead,
        }
        if self.anchor is not None:
            fields["anchor"] = [self.anchor.offset, self.anchor.timestamp, self.anchor.digest]
        return fields

    @classmethod
    def from_fields(cls, saved: dict[str, Any]) -> Checkpoint:
        """A checkpoint from ``fields`` as JSON returns them, also one saved without ``base``, ``ahead`` or
        ``anchor`` by an earlier version."""
        ahead = tuple((minute, first, tuple(ids)) for minute, first, ids in saved.get("ahead", ()))
        anchor = saved.get("anchor")
        return cls(
            saved["offset"],
            saved["watermark_ms"],
            saved["rebuild_from"],
            saved.get("base", 0),
            ahead,
            None if anchor is None else Anchor(*anchor),
        )


@dataclass(frozen=True, slots=True)
class ClockStep:
    """Records ``first``..``last`` were judged with receive time ``received_ms``, and one of them was
    ahead of it: a replay or a dedup rebuild must judge them with the same time."""

    first: int
    last: int
    received_ms: int


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
    #: To persist before anything of this output (or of later flushes) is published.
    steps: list[ClockStep] = field(default_factory=list)
    #: channel -> events counted under ``OVERFLOW_CAMPAIGN`` (the channel had its fill of campaigns).
    overflow: dict[str, int] = field(default_factory=dict)
    #: The largest Kafka timestamp of the records processed (0 if none): data health looks for records
    #: stamped ahead of the worker's clock only when this is.
    newest_stamp: int = 0


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
        steps: Sequence[ClockStep] = (),
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.src = f"{topic}/{partition}"
        self.config = config
        self.calendar = calendar
        self._grace_ms = int(config.grace_s * 1000)
        self._skew_ms = int(config.max_future_skew_s * 1000)
        self.base = checkpoint.base
        self.block = checkpoint.offset // config.block_records
        self.watermark_ms = checkpoint.watermark_ms
        self.position = checkpoint.offset
        # The first run's receive times for the offsets it judged by them (from the rebuild point on).
        self._steps = sorted(steps, key=lambda step: step.first)
        self._replay_steps = deque(step for step in self._steps if step.last >= checkpoint.offset)
        # channel -> what the current block folded of it.
        self._channels: dict[str, _Channel] = {}
        # Dedup: event_id -> minute; per minute, the ids and the smallest offset that added one.
        self._seen: dict[str, int] = {}
        self._seen_by_minute: defaultdict[int, list[str]] = defaultdict(list)
        self._first_offset_by_minute: dict[int, int] = {}
        for minute, first, event_ids in checkpoint.ahead:
            for event_id in event_ids:
                self._remember_minute(event_id, minute, first)
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._fast = fast_check(topic, config.currency)
        self.late_within_grace = 0
        # Accepted records per channel of closed blocks since the last ``drain_accepted`` (the open block's
        # are in ``_Channel.accepted``).
        self._accepted_by_channel: dict[str, int] = {}

    # -- restart -------------------------------------------------------------------------------

    def rebuild(self, records: Iterable[SourceRecord]) -> None:
        """Re-read ``[rebuild_from, checkpoint)`` to restore the dedup set the first run had there.

        Call it with consecutive batches of that range (streamed, never all at once), then
        ``finish_rebuild``. A record is remembered when the first run remembered it: valid and not
        ``future`` under the first run's bound (a recorded step's receive time, else none was binding).
        """
        cursor = _StepCursor(self._steps)
        skew_ms = self._skew_ms
        for record in records:
            try:
                decoded = decode(self.topic, record.value, self.config.currency, self.config.max_record_bytes)
                if not isinstance(decoded, Accepted) or decoded.event_id in self._seen:
                    continue
                clock = NO_CLOCK if record.timestamp_type == LOG_APPEND_TIME else cursor.clock(record.offset)
                sent = record.timestamp
                if decoded.ts_ms > (sent if 0 < sent < clock else clock) + skew_ms:
                    continue
                self._remember(decoded.event_id, decoded.ts_ms, record.offset)
            except Exception:  # noqa: BLE001 - process sent it to the DLQ as an error, remembering nothing
                continue

    def finish_rebuild(self) -> None:
        """The rebuild range is read: forget what the first run had forgotten at the checkpoint."""
        self._evict()
        self._steps = []

    # -- the hot path --------------------------------------------------------------------------

    def process(self, records: Sequence[SourceRecord], received_ms: int) -> FoldOutput:
        """Fold a batch of consecutive records of this partition, fetched at ``received_ms`` (epoch ms of
        the worker's clock, read once per batch)."""
        out = FoldOutput()
        if not records:
            return out
        steps = self._replay_steps
        while steps and steps[0].last < self.position:
            steps.popleft()
        log_append = records[0].timestamp_type == LOG_APPEND_TIME
        if (steps and steps[0].first <= records[-1].offset) or log_append != (
            records[-1].timestamp_type == LOG_APPEND_TIME
        ):
            # A replay over offsets the first run judged by its own clock, or a topic switching its
            # timestamp type: fold the runs of records that share a clock one after the other.
            for segment, clock, recorded in self._segments(records, received_ms):
                self._fold(segment, clock, out, record_steps=not recorded)
        else:
            self._fold(records, NO_CLOCK if log_append else received_ms, out, record_steps=not log_append)
        return out

    def _segments(
        self, records: Sequence[SourceRecord], received_ms: int
    ) -> Iterator[tuple[Sequence[SourceRecord], int, bool]]:
        """Runs of consecutive records with the same clock: (records, clock, clock already recorded)."""
        cursor = _StepCursor(self._replay_steps)
        begin, current = 0, None
        for i, record in enumerate(records):
            if record.timestamp_type == LOG_APPEND_TIME:
                key = (NO_CLOCK, True)
            else:
                clock = cursor.clock(record.offset)
                key = (received_ms, False) if clock == NO_CLOCK else (clock, True)
            if key != current:
                if current is not None:
                    yield records[begin:i], *current
                begin, current = i, key
        if current is not None:
            yield records[begin:], *current

    def _fold(self, records: Sequence[SourceRecord], clock: int, out: FoldOutput, record_steps: bool) -> None:
        # The hot path: attributes read once into locals, and the position, watermark and counters written
        # back at a block boundary (which reads them) and at the end.
        block_records = self.config.block_records
        block_end = (self.block + 1) * block_records
        currency = self.config.currency
        max_bytes = self.config.max_record_bytes
        grace_ms = self._grace_ms
        skew_ms = self._skew_ms
        seen = self._seen
        seen_by_minute = self._seen_by_minute
        first_offset = self._first_offset_by_minute
        channels = self._channels
        outcomes = self.outcomes
        topic = self.topic
        fast = self._fast
        loads = orjson.loads
        start = position = self.position
        watermark = self.watermark_ms
        ahead = False
        accepted = within_grace = 0
        newest = out.newest_stamp
        # The last record's minute, as [minute_ms, minute_end_ms), its start in seconds, when its window
        # closes (minute_end_ms + grace) and its dedup list: records come roughly in event-time order, and
        # this spares the big-integer arithmetic and the lookups of a new minute.
        minute_ms = minute_end_ms = closes_ms = minute = 0
        minute_ids: list[str] = []
        for record in records:
            offset = record.offset
            sent = record.timestamp
            if sent > newest:
                newest = sent
            if offset < position:
                continue  # already folded (a re-delivered fetch)
            if offset >= block_end:
                self.position, self.watermark_ms = position, watermark
                self._close_block(out, offset // block_records, record)
                block_end = (self.block + 1) * block_records
                channels = self._channels
                minute_ms = minute_end_ms = 0  # the block's eviction may have dropped that minute's list
            position = offset + 1
            try:
                value = record.value
                decoded: Accepted | Rejection | None = None
                if value is not None and len(value) <= max_bytes:
                    try:
                        doc = loads(value)
                    except orjson.JSONDecodeError:
                        doc = None
                    if type(doc) is dict:
                        decoded = fast(doc)
                if decoded is None:
                    # Not the common shape: decode gives the model's verdict and the reason of a reject.
                    decoded = decode(topic, value, currency, max_bytes)
                    if type(decoded) is Rejection:
                        outcomes["invalid"] += 1
                        out.rejects.append((record, decoded))
                        continue
                event_id, ts, channel, campaign, contribution = decoded  # type: ignore[misc]
                # The tracker's CreateTime can only lower its own bound, never raise it past the clock.
                bound = sent if 0 < sent < clock else clock
                if ts > bound:
                    if bound == clock:
                        ahead = True  # judged by this batch's clock: a replay must judge it by the same
                    if ts > bound + skew_ms:
                        outcomes["invalid"] += 1
                        out.rejects.append((record, _future(ts, bound, skew_ms)))
                        continue
                    capped = bound
                else:
                    capped = ts
                if event_id in seen:
                    outcomes["duplicate"] += 1
                    out.rejects.append((record, _duplicate(event_id)))
                    continue
                if not minute_ms <= ts < minute_end_ms:
                    # _remember_minute, inlined on the hot path; the cache changes once _place passed.
                    new_ms = ts - ts % 60_000
                    new_minute = new_ms // 1000
                    if new_minute not in first_offset:
                        self._place(new_minute)
                        first_offset[new_minute] = offset
                    minute_ids = seen_by_minute[new_minute]
                    minute, minute_ms, minute_end_ms = new_minute, new_ms, new_ms + 60_000
                    closes_ms = minute_end_ms + grace_ms
                seen[event_id] = minute
                minute_ids.append(event_id)
                if closes_ms <= watermark:
                    outcomes["late"] += 1
                    out.rejects.append((record, _late(ts, watermark, grace_ms)))
                    continue
                if ts < watermark:
                    within_grace += 1
                elif capped > watermark:
                    watermark = capped
                folded = channels.get(channel)
                if folded is None:
                    folded = channels[channel] = _Channel()
                cell = folded.cells.get((campaign, minute))
                if cell is None:
                    cell = self._new_cell(folded, channel, campaign, minute, out)
                for slot, amount in contribution:
                    cell[slot] += amount
                folded.dirty.add(minute)
                folded.accepted += 1
                accepted += 1
            except Exception as exc:  # noqa: BLE001 - one record never stops the stage: it goes to the DLQ
                outcomes["invalid"] += 1
                out.rejects.append((record, _error(exc)))
        self.position, self.watermark_ms = position, watermark
        out.newest_stamp = newest
        self.late_within_grace += within_grace
        outcomes["accepted"] += accepted
        if ahead and record_steps:
            first = next(record.offset for record in records if record.offset >= start)
            out.steps.append(ClockStep(first, self.position - 1, clock))

    def flush(self) -> list[Partial]:
        """Partials of every channel changed since the last flush: the absolute block totals of the
        buckets (1m, 1h, 1d, total) those changes touched; untouched buckets keep their last value."""
        partials = []
        for channel, folded in sorted(self._channels.items()):
            if folded.dirty:
                partials.append(self._partial(channel, folded))
                folded.dirty = set()
        return partials

    def drain_accepted(self) -> dict[str, int]:
        """Accepted records per channel since the last call (replays count again: these feed data-health
        ratios, not KPIs)."""
        drained, self._accepted_by_channel = self._accepted_by_channel, {}
        for channel, folded in self._channels.items():
            if folded.accepted:
                drained[channel] = drained.get(channel, 0) + folded.accepted
                folded.accepted = 0
        return drained

    # -- internals -----------------------------------------------------------------------------

    def _new_cell(
        self, folded: _Channel, channel: str, campaign: str, minute: int, out: FoldOutput
    ) -> list[int]:
        """The counters of a (campaign, minute) the block has none for yet, the campaign cap applied."""
        cells = folded.cells
        if campaign != NO_CAMPAIGN:
            own = folded.campaigns
            if campaign not in own:
                if len(own) >= self.config.max_campaigns_per_channel:
                    out.overflow[channel] = out.overflow.get(channel, 0) + 1
                    campaign = OVERFLOW_CAMPAIGN
                    cell = cells.get((campaign, minute))
                    if cell is not None:
                        return cell
                else:
                    own.add(campaign)
        cell = cells[(campaign, minute)] = [0] * N_SLOTS
        return cell

    def _close_block(self, out: FoldOutput, next_block: int, record: SourceRecord) -> None:
        out.partials.extend(self.flush())
        self._evict()
        self.block = next_block
        carried = self._accepted_by_channel
        for channel, folded in self._channels.items():
            if folded.accepted:
                carried[channel] = carried.get(channel, 0) + folded.accepted
        self._channels = {}
        offset = next_block * self.config.block_records
        rebuild_from, ahead = self._rebuild_point(offset)
        out.checkpoints.append(
            Checkpoint(offset, self.watermark_ms, rebuild_from, self.base, ahead, Anchor.of(record))
        )

    def _partial(self, channel: str, folded: _Channel) -> Partial:
        rows: dict[tuple[str, int, str], list[int]] = {}
        calendar = self.calendar
        touched = {(TOTAL, 0)}
        for minute in folded.dirty:
            touched.update(
                (("1m", minute), ("1h", calendar.hour_start(minute)), ("1d", calendar.day_start(minute)))
            )
        for (campaign, minute), counts in folded.cells.items():
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
            block=self.base + self.block,
            upto=self.position - 1,
            rows=[
                [window, start, campaign, *(min(count, CEILING) for count in counts)]
                for (window, start, campaign), counts in rows.items()
            ],
        )

    def _remember(self, event_id: str, ts_ms: int, offset: int) -> None:
        self._remember_minute(event_id, (ts_ms // 1000) - (ts_ms // 1000) % MINUTE_S, offset)

    def _remember_minute(self, event_id: str, minute: int, offset: int) -> None:
        if minute not in self._first_offset_by_minute:
            self._place(minute)
            self._first_offset_by_minute[minute] = offset
        self._seen[event_id] = minute
        self._seen_by_minute[minute].append(event_id)

    def _place(self, minute: int) -> None:
        """Raise now, before the record changes anything, if the calendar cannot place its minute (the
        flush would fail later, away from the record)."""
        self.calendar.hour_start(minute)
        self.calendar.day_start(minute)

    def _evict(self) -> None:
        """Forget ids whose minute is closed: a re-send of them is late whatever the set says."""
        horizon_s = (self.watermark_ms - self._grace_ms) / 1000 - MINUTE_S
        for minute in [m for m in self._seen_by_minute if m <= horizon_s]:
            for event_id in self._seen_by_minute.pop(minute):
                if self._seen.get(event_id) == minute:
                    del self._seen[event_id]
            self._first_offset_by_minute.pop(minute, None)

    def _rebuild_point(self, offset: int) -> tuple[int, tuple[tuple[int, int, tuple[str, ...]], ...]]:
        """Where a dedup rebuild starts re-reading for a checkpoint at ``offset``, and the ids it takes from
        the checkpoint instead.

        The set holds each id until its minute closes. Minutes past the watermark hold only events ahead
        of their bound (up to ``max_future_skew_s``): one such event would pin the rebuild that far back
        in the log. A few of them travel in the checkpoint; many (a whole host whose clock runs fast) are
        re-read.
        """
        first = self._first_offset_by_minute
        ahead = sorted(minute for minute in first if minute * 1000 > self.watermark_ms)
        if not ahead or sum(len(self._seen_by_minute[minute]) for minute in ahead) > CARRY_MAX:
            return min(first.values(), default=offset), ()
        seen = self._seen
        carried = tuple(
            (minute, first[minute], tuple(i for i in self._seen_by_minute[minute] if seen.get(i) == minute))
            for minute in ahead
        )
        return min(
            (o for minute, o in first.items() if minute * 1000 <= self.watermark_ms), default=offset
        ), carried

    @property
    def dedup_size(self) -> int:
        """How many event ids the dedup set holds now."""
        return len(self._seen)


class _Channel:
    """What the current block folded of one channel."""

    __slots__ = ("accepted", "campaigns", "cells", "dirty")

    def __init__(self) -> None:
        #: (campaign, minute) -> counts.
        self.cells: dict[tuple[str, int], list[int]] = {}
        #: The campaigns with rows of their own (at most the cap).
        self.campaigns: set[str] = set()
        #: Minutes changed since the last flush (only their roll-ups are re-sent).
        self.dirty: set[int] = set()
        #: Accepted records since the last ``drain_accepted``.
        self.accepted = 0


class _StepCursor:
    """The recorded receive time of ascending offsets (``NO_CLOCK`` where no step covers one)."""

    def __init__(self, steps: Iterable[ClockStep]) -> None:
        self._steps = iter(steps)
        self._step: ClockStep | None = next(self._steps, None)

    def clock(self, offset: int) -> int:
        step = self._step
        while step is not None and step.last < offset:
            step = self._step = next(self._steps, None)
        return step.received_ms if step is not None and step.first <= offset else NO_CLOCK


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a source partition resumes (``resume_point``), and why if not at its saved checkpoint."""

    checkpoint: Checkpoint
    #: None, or: ``behind`` (the committed offset is past the checkpoint), ``no_checkpoint`` (Redis has
    #: none but Kafka has a commit), ``recreated`` (the saved position is past the log end, or the log does
    #: not hold the checkpoint's anchor), ``expired``
    #: (records past the saved position were deleted before they were read).
    problem: str | None = None
    #: Whether the recorded clock steps still describe this log (else they must be dropped).
    keep_steps: bool = True


def resume_point(
    saved: Checkpoint | None,
    committed: int | None,
    log_start: int,
    log_end: int,
    block_records: int,
    same_log: bool | None = None,
) -> Resume:
    """Decide where a source partition resumes, from its checkpoint in Redis, its committed offset in Kafka,
    the bounds of its log now and whether that log holds the checkpoint's anchor (``Anchor.verdict``; None
    if unknown or unchecked).

    The Redis checkpoint wins over a committed offset ahead of it (Redis lost its last writes after the
    commit): resuming at the commit would start with no watermark and no dedup set, so duplicates across
    it would count twice; the blocks in between are replayed and ignored by the table. A checkpoint past
    the log end means the topic was recreated (or truncated): the partition starts over at its log start
    with fresh state, its blocks numbered past the old ones so that the table counts them; so does a log
    without the anchor (recreated and refilled past the checkpoint). A checkpoint before the log start
    means retention deleted records before they were read: they are lost.
    """
    if saved is None:
        if not committed:
            return Resume(Checkpoint(log_start, 0, log_start), keep_steps=False)
        if committed > log_end:
            fresh = Checkpoint(log_start, 0, log_start, committed // block_records + BASE_GAP)
            return Resume(fresh, "recreated", keep_steps=False)
        if committed < log_start:
            return Resume(Checkpoint(log_start, 0, log_start), "expired", keep_steps=False)
        return Resume(Checkpoint(committed, 0, committed), "no_checkpoint", keep_steps=False)
    if saved.offset > log_end or same_log is False:
        base = saved.base + saved.offset // block_records + BASE_GAP
        return Resume(Checkpoint(log_start, 0, log_start, base), "recreated", keep_steps=False)
    if saved.offset < log_start:
        return Resume(Checkpoint(log_start, saved.watermark_ms, log_start, saved.base), "expired")
    if committed is not None and committed > saved.offset:
        return Resume(saved, "behind")
    return Resume(saved)


def encode_partial(partial: Partial, max_bytes: int) -> list[bytes]:
    """The Kafka message values of one partial: one, or several pieces of whole rows, none over
    ``max_bytes`` (pieces share block and ``upto``; ``agents.partials.merge`` adds them up)."""
    head = {"src": partial.src, "blk": partial.block, "upto": partial.upto}
    whole = orjson.dumps({**head, "rows": partial.rows})
    if len(whole) <= max_bytes:
        return [whole]
    empty = len(orjson.dumps({**head, "rows": []}))
    pieces: list[list[list[object]]] = [[]]
    size = empty
    for row in partial.rows:
        row_bytes = len(orjson.dumps(row)) + 1  # and a comma
        if pieces[-1] and size + row_bytes > max_bytes:
            pieces.append([])
            size = empty
        pieces[-1].append(row)
        size += row_bytes
    return [orjson.dumps({**head, "rows": rows}) for rows in pieces]


def _error(exc: Exception) -> Rejection:
    return Rejection("error", f"{type(exc).__name__} while folding the record: {exc}"[:500])


def _future(ts: int, bound: int, skew_ms: int) -> Rejection:
    return Rejection(
        "future",
        f"ts is {(ts - bound) / 1000:.0f} s ahead of when the record was sent or received; the limit is "
        f"{skew_ms / 1000:.0f} s (ADPULSE_MAX_FUTURE_SKEW_S); is the tracker's clock or time unit wrong?",
        "ts",
    )


def _duplicate(event_id: str) -> Rejection:
    return Rejection(
        "duplicate",
        f"event_id {event_id!r} was already counted on this partition (a retry or a double send): "
        "counted once",
        "event_id",
    )


def _late(ts: int, watermark: int, grace_ms: int) -> Rejection:
    return Rejection(
        "late",
        f"event time is {(watermark - ts) / 1000:.0f} s behind this partition's watermark; its 1-minute "
        f"window closed after the {grace_ms / 1000:.0f} s grace period (ADPULSE_GRACE_S)",
        "ts",
    )
