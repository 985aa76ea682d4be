"""The fold stage's I/O: a bare aiokafka consumer group over the source topics (DESIGN.md, "Speed").

Per fetch: read the worker's clock once (the receive time that bounds event time, ``agents.fold``),
decode, deduplicate and fold (no Faust, no per-event I/O), persist the clock steps of the fetch if it
held records ahead of that clock, then publish partials to the internal topic (one message per channel
and flush), rejects to the DLQ and metrics once per batch. Publishing keeps the order of
``agents.outbox``: a checkpoint (block start, watermark, dedup rebuild point) goes to Redis, and the
block start is committed to Kafka, only after every message before it is acknowledged; nothing after
it is sent before it is written; a failed send makes the partition replay from its last checkpoint.
After each flush, every partition's delivered watermark follows the partials down every partials
partition.

The Redis checkpoint is the source of truth at restart, because the embedded broker does not keep
commit metadata; the Kafka commit keeps consumer-lag tooling meaningful. On assignment one fetch checks
that the log still holds the record a checkpoint was taken at (its ``Anchor``): a topic recreated and
refilled past the checkpoint is told from the old log only that way. A newly assigned partition
is paused while its dedup set is rebuilt in the background (read up to the checkpoint, which lies
within the log seen at assignment), so a long rebuild holds up neither the rebalance nor the other
partitions.

Redis errors are transient (``agents.redis_retry``): the stage keeps polling the broker and holds progress
back instead. A partition whose checkpoint cannot be read at assignment stays paused, its start tried again
until Redis answers. A partition whose clock steps or checkpoint cannot be written publishes nothing more:
it is dropped and paused, and resumes from its last written checkpoint once Redis answers, as after a
``kill -9`` (nothing is held in memory meanwhile, nothing decided by an unsaved clock is published, and no
offset is committed past a checkpoint not written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from agents.fold import (
    Checkpoint,
    ClockStep,
    FoldConfig,
    FoldOutput,
    Partial,
    PartitionFold,
    Resume,
    encode_partial,
    resume_point,
)
from agents.health import HealthConfig, HealthTally, write_tally
from agents.metrics import MAX_LOGGED_OVERFLOWS, PipelineMetrics
from agents.outbox import Batch, Lane
from agents.redis_retry import RedisRetry, RedisUnavailableError
from streams.dlq import dlq_headers, dlq_key, dlq_value
from streams.events import OVERFLOW_CAMPAIGN
from streams.keys import Keys
from streams.metadata import GROUP_METADATA_MAX_AGE_MS
from streams.partitioning import partition_of
from streams.redis_client import AsyncRedis
from streams.topics import SOURCE_TOPICS, value_limit
from streams.windows import Calendar

log = logging.getLogger(__name__)
#: A partition counts as caught up only if a fetch response for it arrived this recently.
CAUGHT_UP_POLL_MS = 2000
#: Rounds of "wait for acknowledgements, write checkpoints, send what they held back" when giving up
#: partitions (a round per block boundary still queued; more only if sends keep failing).
DRAIN_ROUNDS = 10
#: Fetches (of up to 2 s each) for the record a checkpoint was taken at before trusting its offsets.
ANCHOR_FETCHES = 5


@dataclass(frozen=True, slots=True)
class FoldStageConfig:
    """Everything the fold stage needs to know, resolved from the settings by the shell."""

    kafka: dict[str, Any]
    group_id: str
    topic_prefix: str
    partials_partitions: int
    redis_prefix: str
    fold: FoldConfig
    flush_interval_s: float
    fetch_max_records: int
    fetch_wait_ms: int = 100
    #: How long the producer tries to deliver a message before its send fails (aiokafka's default).
    producer_timeout_ms: int = 40_000
    #: The broker's limit on one message: no DLQ record or partial piece is larger.
    max_message_bytes: int = 1024 * 1024
    #: The consumer-group session (``ADPULSE_GROUP_SESSION_TIMEOUT_S``).
    session_timeout_ms: int = 10_000
    health: HealthConfig = field(default_factory=HealthConfig)

    def topic(self, short: str) -> str:
        return f"{self.topic_prefix}{short}"


class _Message(NamedTuple):
    topic: str
    value: bytes
    key: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


@dataclass(eq=False)
class _Partition:
    """One assigned source partition: its fold, its output lane and what its metrics reported."""

    fold: PartitionFold
    lane: Lane[_Message]
    reported: dict[str, int]
    ready: bool = False
    rebuild: asyncio.Task[None] | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    def __init__(self, stage: FoldStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.stage.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.stage.on_assigned(assigned)


class FoldStage:
    """Consumes the source topics of one worker's share of partitions and publishes partials.

    ``clock`` is the worker's wall clock (epoch seconds), read once per fetch.
    """

    def __init__(
        self,
        config: FoldStageConfig,
        redis: AsyncRedis,
        calendar: Calendar,
        metrics: PipelineMetrics,
        clock: Callable[[], float] = time.time,
        retry: RedisRetry | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        self.retry = retry if retry is not None else RedisRetry(metrics)
        self._turns = self.retry.schedule()
        self.calendar = calendar
        self.metrics = metrics
        self.parts: dict[TopicPartition, _Partition] = {}
        #: Assigned partitions whose checkpoint Redis could not give yet: paused, their start tried again.
        self.unstarted: set[TopicPartition] = set()
        self._clock = clock
        self._clock_ms = 0
        self._short = {config.topic(short): short for short in SOURCE_TOPICS}
        self._last_seen: dict[TopicPartition, float] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._keys = Keys(config.redis_prefix)
        self._message_limit = value_limit(config.max_message_bytes)
        self._overflow_logged: set[str] = set()
        self.health = HealthTally(config.health.max_channels, config.health.clock_ahead_s)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled."""
        cfg = self.config
        self._producer = AIOKafkaProducer(
            **cfg.kafka,
            linger_ms=5,
            acks="all",
            max_batch_size=256 * 1024,
            max_request_size=cfg.max_message_bytes,
            request_timeout_ms=cfg.producer_timeout_ms,
        )
        self._consumer = AIOKafkaConsumer(
            **cfg.kafka,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=500,
            rebalance_timeout_ms=6_000,
            max_poll_interval_ms=60_000,
            metadata_max_age_ms=GROUP_METADATA_MAX_AGE_MS,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            # The broker holds an empty fetch this long: it bounds how late fresh spend reaches the fold.
            fetch_max_wait_ms=cfg.fetch_wait_ms,
        )
        await self._producer.start()
        try:
            # Learn where the output topics live before the first send: on Kafka a producer's first send to a
            # topic waits for its metadata and, should the broker stall meanwhile, raises at once instead of
            # handing back a delivery that fails (which the lanes replay). Tansu lists every topic in any
            # metadata answer, which hid this.
            for short in ("partials", "dlq"):
                await self._producer.partitions_for(cfg.topic(short))
            await self._consumer.start()
            self._consumer.subscribe([cfg.topic(short) for short in SOURCE_TOPICS], listener=_Rebalance(self))
            await self._loop()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        try:
            if self.parts and self._producer is not None:
                await self._give_up(set(self.parts))
        except Exception:
            log.exception("fold stage: final flush failed; the next owner replays from the last checkpoint")
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _loop(self) -> None:
        assert self._consumer is not None
        last_flush = time.monotonic()
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=self.config.fetch_max_records)
            if batches:
                await self._fold(batches)
            now = time.monotonic()
            if now - last_flush >= self.config.flush_interval_s:
                last_flush = now
                await self._flush_all()
                await self._publish_marks()
                await self._write_health()
            await self._settle()
            await self._start_waiting()

    async def _fold(self, batches: dict[TopicPartition, list[Any]]) -> None:
        # The trusted clock: read once per fetch, and never backwards within this process.
        self._clock_ms = received_ms = max(self._clock_ms, int(self._clock() * 1000))
        outputs: list[tuple[TopicPartition, _Partition, FoldOutput]] = []
        for tp, records in batches.items():
            part = self.parts.get(tp)
            if part is None or not part.ready or not records:
                continue  # not ours, or paused for its rebuild: it is fetched again from its checkpoint
            self._last_seen[tp] = time.time()
            out = part.fold.process(records, received_ms)
            outputs.append((tp, part, out))
            self.health.stamps(records, received_ms, out.newest_stamp)
            self.health.accepted(part.fold.drain_accepted())
        steps = [(part, out.steps) for _, part, out in outputs if out.steps]
        if steps:
            # Before anything decided by this clock is published: a replay must decide the same way.
            try:
                await self._turns.attempt("saving fold clock steps", lambda: self._save_steps(steps))
            except RedisUnavailableError:
                # Not published, so not decided yet: these partitions decide again once Redis answers.
                unsaved = {id(part) for part, _ in steps}
                for tp, part, _ in outputs:
                    if id(part) in unsaved:
                        await self._replay(tp)
                outputs = [output for output in outputs if id(output[1]) not in unsaved]
        for tp, part, out in outputs:
            self._emit(part, out)
            await self._pump(part)
            self._count(tp, part)

    # -- assignment ----------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Resume each new partition from its checkpoint; it is fetched once its dedup set is rebuilt."""
        new = sorted(tp for tp in assigned if tp not in self.parts)
        if not new:
            return
        assert self._consumer is not None
        self._consumer.pause(*new)  # each until its dedup set is rebuilt
        bounds = await self._log_bounds(new)
        for tp in new:
            await self._start_or_wait(tp, bounds[tp])

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Publish what was folded and forget the partitions; their next owner replays from the checkpoint."""
        await self._give_up(revoked)

    async def _give_up(self, tps: set[TopicPartition]) -> None:
        self.unstarted -= tps
        parts = {tp: part for tp, part in self.parts.items() if tp in tps}
        for part in parts.values():
            if part.rebuild is not None:
                part.rebuild.cancel()
            if part.ready:
                self._put_flush(part)
                await self._pump(part)
        producer = self._producer
        for _ in range(DRAIN_ROUNDS if producer is not None else 0):
            if all(part.lane.idle or part.lane.failed is not None for part in parts.values()):
                break
            assert producer is not None
            await producer.flush()
            await self._settle(restart=False)
        for tp, part in parts.items():
            if part.lane.failed is not None:
                log.error("fold: a send for %s failed (%s); its next owner replays it", tp, part.lane.failed)
            if self.parts.get(tp) is part:
                del self.parts[tp]
            _forget(part)

    async def _log_bounds(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """Log start and end offset of each partition (two requests for all of them)."""
        assert self._consumer is not None
        starts = await self._consumer.beginning_offsets(tps)
        ends = await self._consumer.end_offsets(tps)
        return {tp: (starts[tp], ends[tp]) for tp in tps}

    async def _start_or_wait(self, tp: TopicPartition, bounds: tuple[int, int] | None = None) -> None:
        """Start ``tp`` (paused); if Redis cannot give its checkpoint now, leave it paused, to be started by
        ``_start_waiting`` once Redis answers: never folded from a guessed position, never left unfolded."""
        self.unstarted.discard(tp)
        try:
            await self._start(tp, bounds)
        except RedisUnavailableError:
            assert self._consumer is not None
            if tp in self._consumer.assignment():
                self.unstarted.add(tp)

    async def _start_waiting(self) -> None:
        """Start the partitions waiting for their checkpoint, when Redis is due to be asked again."""
        for tp in sorted(self.unstarted):
            if not self._turns.due():
                return
            await self._start_or_wait(tp)

    async def _start(self, tp: TopicPartition, bounds: tuple[int, int] | None) -> None:
        """Resume ``tp`` (paused) where ``resume_point`` says, with ``bounds`` its log start and end now
        (learnt here if ``None``); :class:`RedisUnavailableError` if Redis cannot give or take what it needs
        (then nothing of ``tp`` changed: starting it again is safe)."""
        consumer = self._consumer
        assert consumer is not None
        short = self._short[tp.topic]
        src = f"{short}/{tp.partition}"
        if not self._turns.due():
            raise RedisUnavailableError("Redis is not to be asked again yet")
        saved = await self._turns.attempt("reading fold checkpoints", lambda: self._saved(src))
        committed = await consumer.committed(tp)
        log_start, log_end = bounds if bounds is not None else (await self._log_bounds([tp]))[tp]
        same_log = None
        anchor = saved.anchor if saved is not None else None
        if anchor is not None and anchor.offset >= log_start:
            # One small fetch per assignment: offsets alone miss a topic recreated and refilled past them.
            found, fetched_end = await read_record(self.config.kafka, tp, anchor.offset)
            log_end = max(log_end, fetched_end or 0)
            same_log = anchor.verdict(found, fetched_end)
            if same_log is None:
                log.warning(
                    "fold: %s partition %d: the record at offset %d that its checkpoint was taken at could "
                    "not be read; trusting the offsets that the log is the same",
                    tp.topic,
                    tp.partition,
                    anchor.offset,
                )
        if same_log is None and (saved.offset if saved is not None else committed or 0) > log_end:
            # Not yet proof of a new log: the embedded broker reports the start of its last record batch.
            log_end = await fetched_log_end(self.config.kafka, tp, log_end)
        resume = resume_point(saved, committed, log_start, log_end, self.config.fold.block_records, same_log)
        checkpoint = resume.checkpoint
        clock_key = self._keys.fold_clock(src)
        steps: list[ClockStep] = []
        if not resume.keep_steps:
            # They describe records of another log.
            await self._turns.attempt("clearing fold clock steps", lambda: self.redis.delete(clock_key))
        else:
            members = await self._turns.attempt(
                "reading fold clock steps",
                lambda: self.redis.zrangebyscore(clock_key, checkpoint.rebuild_from, "+inf"),
            )
            steps = [_step(member) for member in members]
        if resume.problem == "recreated":
            # Before the first partial of the new blocks, so that a restart finds them numbered the same.
            await self._turns.attempt(
                "writing fold checkpoints",
                lambda: self.redis.hset(self._keys.fold_checkpoints, src, _checkpoint_json(checkpoint)),
            )
        # Once, after the last Redis call: a start that waits for Redis is tried again from the top.
        self._report(tp, src, saved, resume, log_start, log_end)
        if resume.problem == "recreated":
            with contextlib.suppress(Exception):  # advisory, as every commit: the old one is past the log
                await consumer.commit({tp: OffsetAndMetadata(checkpoint.offset, "")})
        if tp not in consumer.assignment():
            return  # revoked while this ran (a restart after a failed send): its next owner resumes it
        fold = PartitionFold(short, tp.partition, self.config.fold, self.calendar, checkpoint, steps)
        part = _Partition(fold, Lane((checkpoint.watermark_ms, checkpoint.offset)), dict(fold.outcomes))
        self.parts[tp] = part
        self._last_seen.setdefault(tp, time.time())
        consumer.seek(tp, checkpoint.offset)
        start = max(checkpoint.rebuild_from, log_start)
        log.info(
            "fold: %s resumes at offset %d (watermark %d ms, dedup set rebuilt from offset %d first)",
            src,
            checkpoint.offset,
            checkpoint.watermark_ms,
            start,
        )
        if start < checkpoint.offset:
            part.rebuild = asyncio.create_task(self._rebuild(tp, part, start, checkpoint.offset))
        else:
            self._ready(tp, part)

    def _report(
        self,
        tp: TopicPartition,
        src: str,
        saved: Checkpoint | None,
        resume: Resume,
        log_start: int,
        log_end: int,
    ) -> None:
        """Say what ``resume_point`` found wrong with the saved position, loudly when records are lost."""
        checkpoint = resume.checkpoint
        where = f"{tp.topic} partition {tp.partition}"
        if resume.problem == "behind":
            log.warning(
                "fold: %s: the Redis checkpoint (offset %d) is behind the committed offset (Redis lost its "
                "last writes?): resuming from the checkpoint, its later blocks are replayed",
                where,
                checkpoint.offset,
            )
        elif resume.problem == "no_checkpoint":
            log.warning(
                "fold: %s has no checkpoint in Redis but a committed offset %d: resuming there with an "
                "empty dedup set and watermark (was Redis reset?)",
                where,
                checkpoint.offset,
            )
        elif resume.problem in ("recreated", "expired"):
            saved_offset = saved.offset if saved is not None else checkpoint.offset
            anchor = saved.anchor if saved is not None else None
            if resume.problem == "recreated" and saved_offset <= log_end and anchor is not None:
                what = (
                    f"the log (offsets {log_start}..{log_end - 1}) does not hold the record at offset "
                    f"{anchor.offset} that the saved position {saved_offset} was taken at: the topic was "
                    "recreated. Starting the partition over from its beginning"
                )
            elif resume.problem == "recreated":
                what = (
                    f"the saved position {saved_offset} is past the end of the log ({log_end}): the topic "
                    "was recreated or truncated. Starting the partition over from its beginning"
                )
            else:
                what = (
                    f"records {saved_offset}..{log_start - 1} were deleted (retention) before they were read "
                    f"and are not counted. Resuming at the log start"
                )
            log.error("fold: %s (%s): %s, offset %d", where, src, what, checkpoint.offset)
            self.metrics.source_resets.labels(self._short[tp.topic], resume.problem).inc()
        if resume.problem != "expired" and checkpoint.rebuild_from < log_start < checkpoint.offset:
            log.warning(
                "fold: %s: records %d..%d of the dedup horizon were deleted (retention): duplicates of them "
                "may count twice",
                where,
                checkpoint.rebuild_from,
                log_start - 1,
            )

    async def _rebuild(self, tp: TopicPartition, part: _Partition, start: int, end: int) -> None:
        """Read records ``[start, end)`` of ``tp`` into the fold's dedup set, then let ``tp`` be fetched.

        Re-reading after an error is harmless: the dedup set takes every record once.
        """
        began = time.monotonic()
        while True:
            try:
                read = await read_range(self.config.kafka, tp, start, end, part.fold.rebuild)
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fold: rebuilding the dedup set of %s failed; trying again", part.fold.src)
                await asyncio.sleep(1.0)
        part.fold.finish_rebuild()
        log.info(
            "fold: %s dedup set rebuilt from %d records in %.1f s",
            part.fold.src,
            read,
            time.monotonic() - began,
        )
        if self.parts.get(tp) is part:
            self._ready(tp, part)

    def _ready(self, tp: TopicPartition, part: _Partition) -> None:
        part.ready = True
        part.rebuild = None
        assert self._consumer is not None
        self._consumer.resume(tp)

    async def _restart_partition(self, tp: TopicPartition, error: BaseException) -> None:
        log.error("fold: a send for %s failed (%s); replaying it from its last checkpoint", tp, error)
        await self._replay(tp)

    async def _replay(self, tp: TopicPartition) -> None:
        """Drop what ``tp`` folded since its last written checkpoint and resume it there (paused until then,
        and until Redis answers)."""
        part = self.parts.pop(tp, None)
        if part is not None:
            if part.rebuild is not None:
                part.rebuild.cancel()
            _forget(part)
        assert self._consumer is not None
        if tp in self._consumer.assignment():  # else its next owner replays it
            self._consumer.pause(tp)
            log.debug("fold: %s dropped; it resumes from its last written checkpoint", tp)
            await self._start_or_wait(tp)

    # -- Redis ---------------------------------------------------------------------------------

    async def _saved(self, src: str) -> Checkpoint | None:
        raw = await self.redis.hget(self._keys.fold_checkpoints, src)
        if raw is None:
            return None
        return Checkpoint.from_fields(orjson.loads(raw))

    async def _save_steps(self, steps: list[tuple[_Partition, list[ClockStep]]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for part, new in steps:
            members = {f"{step.first}:{step.last}:{step.received_ms}": step.last for step in new}
            pipe.zadd(self._keys.fold_clock(part.fold.src), members)
        await pipe.execute()

    # -- output --------------------------------------------------------------------------------

    def _emit(self, part: _Partition, out: FoldOutput) -> None:
        """Queue a fold output in order: rejects and the partials of each closed block, its checkpoint."""
        fold = part.fold
        messages: list[_Message] = []
        dlq_topic = self.config.topic("dlq")
        reasons: dict[str, int] = {}
        for record, rejection in out.rejects:
            self.health.reject(record.key, record.value, rejection)
            value = dlq_value(record, rejection, self._message_limit)
            messages.append(_Message(dlq_topic, value, dlq_key(record), None, dlq_headers(rejection)))
            reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
        # Once per reason and fetch: each labelled increment takes a lock and a label lookup (~1 µs).
        for reason, count in reasons.items():
            self.metrics.dlq.labels(fold.topic, reason).inc(count)
        self._note_overflow(fold, out.overflow)
        partials = out.partials
        for checkpoint in out.checkpoints:
            block = checkpoint.base + checkpoint.offset // self.config.fold.block_records
            closed = [partial for partial in partials if partial.block < block]
            partials = [partial for partial in partials if partial.block >= block]
            part.lane.put(Batch([*messages, *self._partial_messages(closed)]))
            part.lane.put(checkpoint)
            messages = []
        if messages or partials:
            part.lane.put(Batch([*messages, *self._partial_messages(partials)]))

    def _note_overflow(self, fold: PartitionFold, overflow: dict[str, int]) -> None:
        for channel, events in overflow.items():
            self.metrics.campaign_overflow.labels(fold.topic).inc(events)
            if channel not in self._overflow_logged and len(self._overflow_logged) < MAX_LOGGED_OVERFLOWS:
                self._overflow_logged.add(channel)
                log.warning(
                    "fold: channel %r has more than %d campaigns in a block of %s; the others are counted "
                    "under the campaign %r (ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL; logged once per channel)",
                    channel,
                    self.config.fold.max_campaigns_per_channel,
                    fold.src,
                    OVERFLOW_CAMPAIGN,
                )

    def _partial_messages(self, partials: list[Partial]) -> list[_Message]:
        """One message per partial, or pieces under the broker's limit (``encode_partial``)."""
        topic = self.config.topic("partials")
        return [
            _Message(
                topic,
                value,
                partial.channel.encode(),
                partition_of(partial.channel, self.config.partials_partitions),
            )
            for partial in partials
            for value in encode_partial(partial, self._message_limit)
        ]

    def _put_flush(self, part: _Partition) -> None:
        """Queue the partials of everything folded so far, marked with the watermark they carry."""
        fold = part.fold
        messages = self._partial_messages(fold.flush())
        part.lane.put(Batch(messages, mark=(fold.watermark_ms, fold.position)))

    async def _pump(self, part: _Partition) -> None:
        """Send what the lane lets go now."""
        producer = self._producer
        assert producer is not None
        partials_topic = self.config.topic("partials")
        for batch in part.lane.sendable():
            deliveries = []
            for message in batch.messages:
                deliveries.append(
                    await producer.send(
                        message.topic,
                        message.value,
                        key=message.key,
                        partition=message.partition,
                        headers=message.headers,
                    )
                )
            part.lane.sent(batch, deliveries)
            sent = sum(message.topic == partials_topic for message in batch.messages)
            if sent:
                self.metrics.partials.inc(sent)

    async def _write_health(self) -> None:
        health = self.config.health
        ttl_s = health.window_s + health.baseline_s + 2 * health.bucket_s
        tally = self.health.drain()
        if not tally:
            return
        if not self._turns.due():
            # Kept for when Redis answers (bounded: channels beyond the tally's bound count as "(other)").
            self.health.put_back(tally)
            return
        try:
            await self._turns.attempt(
                "adding data-health counters",
                lambda: write_tally(
                    self.redis, self.config.redis_prefix, tally, health.bucket_s, ttl_s, time.time()
                ),
            )
        except RedisUnavailableError:
            self.health.put_back(tally)
        except Exception as exc:  # noqa: BLE001 - data-health counters must never stop the folding
            log.warning("fold: data-health counters not written (%s)", exc)

    async def _flush_all(self) -> None:
        for part in list(self.parts.values()):
            if part.ready:
                self._put_flush(part)
                await self._pump(part)

    def _count(self, tp: TopicPartition, part: _Partition) -> None:
        fold, before = part.fold, part.reported
        for outcome, total in fold.outcomes.items():
            if total != before[outcome]:
                self.metrics.events.labels(fold.topic, outcome).inc(total - before[outcome])
        late = fold.late_within_grace - before.get("late_within_grace", 0)
        if late:
            self.metrics.late_within_grace.labels(fold.topic).inc(late)
        part.reported = {**fold.outcomes, "late_within_grace": fold.late_within_grace}

    async def _settle(self, restart: bool = True) -> None:
        """Write the checkpoints whose earlier sends are all acknowledged, then send what they held back.

        A failed send replays its partition from the last written checkpoint (``restart``), or, while
        the partition is being given up, leaves that to its next owner.
        """
        due: dict[TopicPartition, tuple[_Partition, Checkpoint]] = {}
        for tp, part in list(self.parts.items()):
            error = part.lane.retire()
            if error is not None:
                if restart:
                    await self._restart_partition(tp, error)
                continue
            checkpoint = part.lane.checkpoint_due()
            if checkpoint is not None:
                due[tp] = (part, checkpoint)
        if not due or not self._turns.due():
            return  # during an outage, until Redis is to be asked again (the lanes hold what follows)
        try:
            await self._turns.attempt("writing fold checkpoints", lambda: self._write_checkpoints(due))
        except RedisUnavailableError:
            # Rather than hold their output for as long as Redis is away: resume them there once it is back.
            for tp, (part, _) in due.items() if restart else ():
                if self.parts.get(tp) is part:
                    await self._replay(tp)
            return
        for tp, (part, checkpoint) in due.items():
            if self.parts.get(tp) is part:  # not given up or restarted meanwhile
                part.lane.checkpoint_written(checkpoint)
                await self._pump(part)
        assert self._consumer is not None
        try:
            await self._consumer.commit(
                {tp: OffsetAndMetadata(checkpoint.offset, "") for tp, (_, checkpoint) in due.items()}
            )
        except Exception as exc:  # noqa: BLE001 - the Redis checkpoint already holds; the commit is advisory
            log.warning("fold: offset commit failed (%s); the Redis checkpoint stands", exc)

    async def _write_checkpoints(self, due: dict[TopicPartition, tuple[_Partition, Checkpoint]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for part, checkpoint in due.values():
            src = part.fold.src
            pipe.hset(self._keys.fold_checkpoints, src, _checkpoint_json(checkpoint))
            # After the checkpoint, so that Redis cannot keep the trim but lose the checkpoint.
            pipe.zremrangebyscore(self._keys.fold_clock(src), "-inf", f"({checkpoint.rebuild_from}")
        await pipe.execute()

    async def _publish_marks(self) -> None:
        """Send every partition's delivered watermark to every partials partition, after the partials.

        The Faust agent reads them in order with the partials, so when it has a mark it has merged
        everything the mark covers: windows never close ahead of their data. A mark covers only what is
        acknowledged (a lost partial must not close its windows), so it trails the flush by a round
        trip. Every assigned partition is listed, also before its first record: one not read yet must
        hold event time back (a backlog is not silence), and so must one waiting for its checkpoint.
        """
        if not self.parts and not self.unstarted:
            return
        assert self._consumer is not None and self._producer is not None
        marks = {}
        now_ms = time.time() * 1000
        for tp, part in self.parts.items():
            watermark_ms, position = part.lane.delivered_mark
            highwater = self._consumer.highwater(tp)
            polled = self._consumer.last_poll_timestamp(tp)
            # Caught up only on fresh news: a highwater from a fetch long ago says nothing about now.
            caught_up = (
                part.ready
                and highwater is not None
                and position >= highwater
                and polled is not None
                and now_ms - polled < CAUGHT_UP_POLL_MS
            )
            marks[part.fold.src] = [watermark_ms, self._last_seen.get(tp, 0.0), caught_up]
        for tp in self.unstarted:
            # Watermark 0: event time unknown until its checkpoint is read.
            marks[f"{self._short[tp.topic]}/{tp.partition}"] = [0, self._last_seen.get(tp, 0.0), False]
        value = orjson.dumps({"marks": marks, "sources": self._sources(), "at": time.time()})
        topic = self.config.topic("partials")
        for partition in range(self.config.partials_partitions):
            # A mark that fails is only late: the next flush sends the next one.
            (await self._producer.send(topic, value, partition=partition)).add_done_callback(_swallow)
        self.metrics.dedup_ids.set(sum(part.fold.dedup_size for part in self.parts.values()))

    def _sources(self) -> list[str]:
        """Every source partition the broker's metadata lists, this stage's or not: a worker that has read
        no mark of one yet holds event time back for it (``agents.closing``)."""
        assert self._consumer is not None
        return sorted(
            f"{short}/{partition}"
            for topic, short in self._short.items()
            for partition in self._consumer.partitions_for_topic(topic) or ()
        )


async def read_range(
    kafka: dict[str, Any], tp: TopicPartition, start: int, end: int, sink: Callable[[list[Any]], None]
) -> int:
    """Hand records ``[start, end)`` of ``tp`` to ``sink`` batch by batch; return how many.

    Reads until its position reaches ``end`` however slowly the broker answers (an empty fetch is no
    end), with a consumer of its own outside the group. ``end`` must lie within the log.
    """
    reader = AIOKafkaConsumer(**kafka, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest")
    read = 0
    try:
        await reader.start()
        reader.assign([tp])
        reader.seek(tp, start)
        while await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=1000, max_records=10_000)
            records = [record for record in batch.get(tp, ()) if record.offset < end]
            if records:
                sink(records)
                read += len(records)
    finally:
        await reader.stop()
    return read


async def read_record(
    kafka: dict[str, Any], tp: TopicPartition, offset: int
) -> tuple[Any | None, int | None]:
    """The first record of ``tp`` at or past ``offset`` and the log end a fetch reported; ``(None, None)``
    if neither could be learnt (a broker too slow to answer).

    ``(None, end)``: the log ends at or before ``offset``. A fetch answers with the true end even where
    ListOffsets does not (``fetched_log_end``).
    """
    reader = AIOKafkaConsumer(**kafka, enable_auto_commit=False, group_id=None, auto_offset_reset="latest")
    try:
        await reader.start()
        reader.assign([tp])
        reader.seek(tp, offset)
        for _ in range(ANCHOR_FETCHES):
            batch = await reader.getmany(tp, timeout_ms=2_000)
            # A fetch may start at its record batch's first offset: skip what lies before.
            found = next((record for record in batch.get(tp, ()) if record.offset >= offset), None)
            end = reader.highwater(tp)
            if found is not None or (end is not None and end <= offset):
                return found, end
    finally:
        await reader.stop()
    return None, None


async def fetched_log_end(kafka: dict[str, Any], tp: TopicPartition, listed: int) -> int:
    """The end of ``tp``'s log as a fetch reports it (its high watermark), ``listed`` if that is further.

    Tansu answers ListOffsets(latest) with the first offset of the last record batch plus one, short of
    the end by the batch's size; its fetch responses carry the true high watermark.
    """
    reader = AIOKafkaConsumer(**kafka, enable_auto_commit=False, group_id=None, auto_offset_reset="latest")
    try:
        await reader.start()
        reader.assign([tp])
        reader.seek(tp, max(listed - 1, 0))
        batch = await reader.getmany(tp, timeout_ms=5_000)
        ends = [
            listed,
            int(reader.highwater(tp) or 0),
            *(int(record.offset) + 1 for record in batch.get(tp, ())),
        ]
    finally:
        await reader.stop()
    return max(ends)


def _forget(part: _Partition) -> None:
    """Drop a partition's sends still under way: their outcome no longer matters (only their logging)."""
    for delivery in part.lane.outstanding():
        delivery.add_done_callback(_swallow)  # type: ignore[attr-defined]


def _swallow(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _checkpoint_json(checkpoint: Checkpoint) -> bytes:
    return orjson.dumps({**checkpoint.fields(), "at": time.time()})


def _step(member: bytes | str) -> ClockStep:
    first, last, received_ms = (member.decode() if isinstance(member, bytes) else member).split(":")
    return ClockStep(int(first), int(last), int(received_ms))
