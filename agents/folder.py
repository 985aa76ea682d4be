"""The fold stage's I/O: a bare aiokafka consumer group over the source topics (DESIGN.md, "Speed").

Per fetch: decode, deduplicate and fold in ``agents.fold`` (no Faust, no per-event I/O), then
publish partials to the internal topic (one message per channel and flush), rejects to the DLQ and
metrics once per batch. Checkpoints (block start, watermark, dedup rebuild point) go to Redis and the
block start is committed to Kafka only after every message of the earlier blocks is acknowledged.
After each flush, every partition's watermark follows the partials down every partials partition.
The Redis checkpoint is the source of truth at restart, because the embedded broker does not keep
commit metadata; the Kafka commit keeps consumer-lag tooling meaningful.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from agents.fold import Checkpoint, FoldConfig, FoldOutput, Partial, PartitionFold
from agents.metrics import PipelineMetrics
from streams.dlq import dlq_headers, dlq_value
from streams.keys import Keys
from streams.partitioning import partition_of
from streams.redis_client import AsyncRedis
from streams.topics import SOURCE_TOPICS
from streams.windows import Calendar

log = logging.getLogger(__name__)
#: A partition counts as caught up only if a fetch response for it arrived this recently.
CAUGHT_UP_POLL_MS = 2000


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

    def topic(self, short: str) -> str:
        return f"{self.topic_prefix}{short}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    def __init__(self, stage: FoldStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.stage.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.stage.on_assigned(assigned)


class FoldStage:
    """Consumes the source topics of one worker's share of partitions and publishes partials."""

    def __init__(
        self, config: FoldStageConfig, redis: AsyncRedis, calendar: Calendar, metrics: PipelineMetrics
    ) -> None:
        self.config = config
        self.redis = redis
        self.calendar = calendar
        self.metrics = metrics
        self.folds: dict[TopicPartition, PartitionFold] = {}
        self._short = {config.topic(short): short for short in SOURCE_TOPICS}
        self._pending: dict[TopicPartition, deque[tuple[Checkpoint, list[asyncio.Future[Any]]]]] = {}
        self._inflight: dict[TopicPartition, list[asyncio.Future[Any]]] = {}
        self._last_seen: dict[TopicPartition, float] = {}
        self._reported: dict[TopicPartition, dict[str, int]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._checkpoint_key = Keys(config.redis_prefix).fold_checkpoints

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled."""
        cfg = self.config
        self._producer = AIOKafkaProducer(**cfg.kafka, linger_ms=5, acks="all", max_batch_size=256 * 1024)
        self._consumer = AIOKafkaConsumer(
            **cfg.kafka,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=500,
            rebalance_timeout_ms=6_000,
            max_poll_interval_ms=60_000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            # The broker holds an empty fetch this long: it bounds how late fresh spend reaches the fold.
            fetch_max_wait_ms=cfg.fetch_wait_ms,
        )
        await self._producer.start()
        try:
            await self._consumer.start()
            self._consumer.subscribe([cfg.topic(short) for short in SOURCE_TOPICS], listener=_Rebalance(self))
            await self._loop()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        try:
            if self.folds and self._producer is not None:
                await self._flush_all()
                await self._producer.flush()
                await self._settle()
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
            now = time.monotonic()
            for tp, records in batches.items():
                fold = self.folds.get(tp)
                if fold is None or not records:
                    continue
                self._last_seen[tp] = time.time()
                out = fold.process(records)
                await self._emit(tp, fold, out)
            if now - last_flush >= self.config.flush_interval_s:
                last_flush = now
                await self._flush_all()
                await self._publish_marks()
            await self._settle()

    # -- assignment ----------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Resume each new partition from its checkpoint, rebuilding the dedup set first."""
        for tp in sorted(assigned):
            if tp in self.folds:
                continue
            checkpoint = await self._load_checkpoint(tp)
            fold = PartitionFold(
                self._short[tp.topic], tp.partition, self.config.fold, self.calendar, checkpoint
            )
            if checkpoint.rebuild_from < checkpoint.offset:
                fold.rebuild(await self._read_range(tp, checkpoint.rebuild_from, checkpoint.offset))
            self.folds[tp] = fold
            self._pending[tp] = deque()
            self._inflight[tp] = []
            self._last_seen.setdefault(tp, time.time())
            self._reported[tp] = dict(fold.outcomes)
            assert self._consumer is not None
            self._consumer.seek(tp, checkpoint.offset)
            log.info(
                "fold: %s resumes at offset %d (watermark %d ms, dedup rebuilt from %d)",
                fold.src,
                checkpoint.offset,
                checkpoint.watermark_ms,
                checkpoint.rebuild_from,
            )

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Publish what was folded and forget the partitions; their next owner replays from the checkpoint."""
        for tp in revoked:
            fold = self.folds.get(tp)
            if fold is None:
                continue
            await self._send_partials(tp, fold.flush())
        if self._producer is not None:
            await self._producer.flush()
        await self._settle()
        for tp in revoked:
            self.folds.pop(tp, None)
            self._pending.pop(tp, None)
            self._inflight.pop(tp, None)
            self._reported.pop(tp, None)

    async def _load_checkpoint(self, tp: TopicPartition) -> Checkpoint:
        src = f"{self._short[tp.topic]}/{tp.partition}"
        raw = await self.redis.hget(self._checkpoint_key, src)
        assert self._consumer is not None
        committed = await self._consumer.committed(tp)
        if raw is not None:
            saved = orjson.loads(raw)
            checkpoint = Checkpoint(saved["offset"], saved["watermark_ms"], saved["rebuild_from"])
            if committed is None or checkpoint.offset >= committed:
                return checkpoint
            log.warning(
                "fold: %s: checkpoint %d is behind the committed offset %d", src, checkpoint.offset, committed
            )
        if committed:
            log.warning(
                "fold: %s has no checkpoint in Redis but a committed offset %d: resuming there with an "
                "empty dedup set and watermark (was Redis reset?)",
                src,
                committed,
            )
            return Checkpoint(committed, 0, committed)
        return Checkpoint(0, 0, 0)

    async def _read_range(self, tp: TopicPartition, start: int, end: int) -> list[Any]:
        """Records ``[start, end)`` of one partition, read by a throwaway consumer outside the group."""
        reader = AIOKafkaConsumer(**self.config.kafka, enable_auto_commit=False, group_id=None)
        await reader.start()
        records: list[Any] = []
        try:
            reader.assign([tp])
            reader.seek(tp, start)
            while True:
                batch = await reader.getmany(tp, timeout_ms=1000, max_records=10_000)
                got = batch.get(tp, [])
                if not got:
                    break
                records.extend(r for r in got if r.offset < end)
                if got[-1].offset >= end - 1:
                    break
        finally:
            await reader.stop()
        return records

    # -- output --------------------------------------------------------------------------------

    async def _emit(self, tp: TopicPartition, fold: PartitionFold, out: FoldOutput) -> None:
        # Partials and checkpoints come out in order; a checkpoint waits for every send before it.
        producer = self._producer
        assert producer is not None
        inflight = self._inflight[tp]
        partials = iter(out.partials)
        for reject_record, rejection in out.rejects:
            future = await producer.send(
                self.config.topic("dlq"),
                dlq_value(reject_record, rejection),
                key=reject_record.key,
                headers=dlq_headers(rejection),
            )
            inflight.append(future)
            self.metrics.dlq.labels(fold.topic, rejection.reason).inc()
        if out.checkpoints:
            # Partials of a closed block were produced before its checkpoint: send them all first.
            await self._send_partials(tp, list(partials))
            for checkpoint in out.checkpoints:
                self._pending[tp].append((checkpoint, list(inflight)))
            inflight.clear()
        else:
            await self._send_partials(tp, list(partials))
        self._count(tp, fold)

    async def _send_partials(self, tp: TopicPartition, partials: list[Partial]) -> None:
        producer = self._producer
        assert producer is not None
        topic = self.config.topic("partials")
        n = self.config.partials_partitions
        inflight = self._inflight.get(tp)
        for partial in partials:
            value = orjson.dumps(
                {"src": partial.src, "blk": partial.block, "upto": partial.upto, "rows": partial.rows}
            )
            future = await producer.send(
                topic, value, key=partial.channel.encode(), partition=partition_of(partial.channel, n)
            )
            if inflight is not None:
                inflight.append(future)
        if partials:
            self.metrics.partials.inc(len(partials))

    async def _flush_all(self) -> None:
        for tp, fold in list(self.folds.items()):
            await self._send_partials(tp, fold.flush())

    def _count(self, tp: TopicPartition, fold: PartitionFold) -> None:
        before = self._reported[tp]
        for outcome, total in fold.outcomes.items():
            if total != before[outcome]:
                self.metrics.events.labels(fold.topic, outcome).inc(total - before[outcome])
        late = fold.late_within_grace - before.get("late_within_grace", 0)
        if late:
            self.metrics.late_within_grace.labels(fold.topic).inc(late)
        self._reported[tp] = {**fold.outcomes, "late_within_grace": fold.late_within_grace}

    async def _settle(self) -> None:
        """Checkpoint every partition up to the newest block start whose earlier sends are all acked."""
        ready: dict[TopicPartition, Checkpoint] = {}
        for tp, queue in self._pending.items():
            while queue and all(f.done() for f in queue[0][1]):
                checkpoint, futures = queue.popleft()
                failed = next((f.exception() for f in futures if f.exception() is not None), None)
                if failed is not None:
                    await self._restart_partition(tp, failed)
                    break
                ready[tp] = checkpoint
        if not ready:
            return
        pipe = self.redis.pipeline(transaction=False)
        for tp, checkpoint in ready.items():
            src = f"{self._short[tp.topic]}/{tp.partition}"
            pipe.hset(
                self._checkpoint_key,
                src,
                orjson.dumps(
                    {
                        "offset": checkpoint.offset,
                        "watermark_ms": checkpoint.watermark_ms,
                        "rebuild_from": checkpoint.rebuild_from,
                        "at": time.time(),
                    }
                ),
            )
        await pipe.execute()
        assert self._consumer is not None
        try:
            await self._consumer.commit({tp: OffsetAndMetadata(c.offset, "") for tp, c in ready.items()})
        except Exception as exc:  # noqa: BLE001 - the Redis checkpoint already holds; the commit is advisory
            log.warning("fold: offset commit failed (%s); the Redis checkpoint stands", exc)

    async def _restart_partition(self, tp: TopicPartition, error: BaseException) -> None:
        log.error("fold: a send for %s failed (%s); replaying it from its last checkpoint", tp, error)
        self.folds.pop(tp, None)
        self._pending[tp].clear()
        self._inflight[tp] = []
        await self.on_assigned({tp})

    async def _publish_marks(self) -> None:
        """Send every partition's watermark to every partials partition, after this flush's partials.

        The Faust agent reads them in order with the partials, so when it has a mark it has merged
        everything the mark covers: windows never close ahead of their data. Every assigned partition is
        listed, also before its first record: one not read yet must hold event time back (a backlog is
        not silence).
        """
        if not self.folds:
            return
        assert self._consumer is not None and self._producer is not None
        marks = {}
        now_ms = time.time() * 1000
        for tp, fold in self.folds.items():
            highwater = self._consumer.highwater(tp)
            polled = self._consumer.last_poll_timestamp(tp)
            # Caught up only on fresh news: a highwater from a fetch long ago says nothing about now.
            caught_up = (
                highwater is not None
                and fold.position >= highwater
                and polled is not None
                and now_ms - polled < CAUGHT_UP_POLL_MS
            )
            marks[fold.src] = [fold.watermark_ms, self._last_seen.get(tp, 0.0), caught_up]
        value = orjson.dumps({"marks": marks, "at": time.time()})
        topic = self.config.topic("partials")
        for partition in range(self.config.partials_partitions):
            await self._producer.send(topic, value, partition=partition)
        self.metrics.dedup_ids.set(sum(fold.dedup_size for fold in self.folds.values()))
