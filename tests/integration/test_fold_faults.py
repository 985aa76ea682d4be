"""The fold stage under faults, on the real broker and Redis: every count exact afterwards.

The stage runs in this process (its clock injected, its partials read back from the partials topic and
merged as the bucket agent merges them), against the session's broker and Redis, or against a stack of
its own where the test freezes the broker (``SIGSTOP``) to play an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from adpulse.settings import Settings
from adpulse.stack import BROKERS, KAFKA, EmbeddedStack, ensure_topics
from adpulse.worker import fold_stage_config
from agents.fold_stage import FoldStage, FoldStageConfig, read_range
from agents.metrics import PipelineMetrics
from agents.partials import BucketValue, merge, totals
from streams.codec import N_SLOTS, Accepted, decode
from streams.keys import Keys
from streams.windows import TOTAL, Calendar
from tests.conftest import own_stack, require_kafka

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

T0 = 1_700_000_040_000  # event time of the records: a minute start (2023-11-14T22:14:00Z)
Key = tuple[str, str, int]  # channel, window, bucket start
Totals = dict[Key, dict[str, list[int]]]


class Clock:
    """The worker's clock as the stage reads it (epoch seconds), set by the test."""

    def __init__(self, ms: int, on_read: Callable[[], None] | None = None) -> None:
        self.ms = ms
        self.on_read = on_read

    def __call__(self) -> float:
        if self.on_read is not None:
            self.on_read()
        return self.ms / 1000


def click(event_id: str, ts: int, channel: str = "douyin") -> bytes:
    return orjson.dumps({"event_id": event_id, "ts": ts, "channel": channel, "type": "click"})


def stage_config(settings: Settings, **overrides: Any) -> FoldStageConfig:
    """What the worker builds from the settings, with ``overrides``."""
    return dataclasses.replace(fold_stage_config(settings), **overrides)


def new_stage(
    settings: Settings, clock: Clock, registry: CollectorRegistry | None = None, **overrides: Any
) -> FoldStage:
    return FoldStage(
        stage_config(settings, **overrides),
        aioredis.from_url(settings.redis_url),
        Calendar(settings.zone),
        PipelineMetrics(registry or CollectorRegistry()),
        clock,
    )


@contextlib.asynccontextmanager
async def running(stage: FoldStage) -> AsyncIterator[asyncio.Task[None]]:
    """The stage's consume loop as a task; stopped as a worker stops (its last partials published)."""
    task = asyncio.create_task(stage.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert isinstance(stage.redis, aioredis.Redis)
        await stage.redis.aclose()


def crash(stage: FoldStage) -> None:
    """From now on the stage publishes nothing more of what it folded, as if its process died here."""
    stage.parts.clear()


async def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``check`` (plain or async) until it is true; fail after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        done = check()
        if asyncio.iscoroutine(done):
            done = await done
        if done:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def settled(stage: FoldStage, position: int) -> Callable[[], bool]:
    """The stage folded the source partition up to ``position`` and everything it published is delivered."""

    def check() -> bool:
        part = stage.parts.get(TopicPartition(stage.config.topic("clicks"), 0))
        return part is not None and part.ready and part.lane.idle and part.lane.delivered_mark[1] >= position

    return check


async def produce(settings: Settings, values: list[bytes], timestamps: list[int] | None = None) -> None:
    """Append ``values`` to partition 0 of the clicks topic, in one batch, with these CreateTimes."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                settings.topic("clicks"),
                value,
                key=b"douyin",
                partition=0,
                timestamp_ms=timestamps[i] if timestamps else None,
            )
            for i, value in enumerate(values)
        ]
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()


async def partial_totals(settings: Settings) -> Totals:
    """The partials topic read to its end and merged as the bucket agent merges it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    tps = [TopicPartition(settings.topic("partials"), p) for p in range(settings.partitions)]
    table: dict[Key, BucketValue] = {}
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    message = orjson.loads(record.value)
                    if "marks" in message:
                        continue
                    grouped: dict[tuple[str, int], dict[str, list[int]]] = {}
                    for window, start, campaign, *counts in message["rows"]:
                        grouped.setdefault((window, start), {})[campaign] = counts
                    for (window, start), rows in grouped.items():
                        key = (record.key.decode(), window, start)
                        merged = merge(table.get(key), message["src"], message["blk"], message["upto"], rows)
                        if merged is not None:
                            table[key] = merged
    finally:
        await consumer.stop()
    return {key: totals(value) for key, value in table.items()}


def recount(settings: Settings, values: list[bytes]) -> Totals:
    """The totals of these events, computed directly."""
    calendar = Calendar(settings.zone)
    result: Totals = {}
    for value in values:
        event = decode("clicks", value, settings.currency, settings.max_record_bytes)
        assert isinstance(event, Accepted)
        ts_s = event.ts_ms // 1000
        for window in ("1m", "1h", "1d", TOTAL):
            cell = result.setdefault((event.channel, window, calendar.start(window, ts_s)), {})
            counts = cell.setdefault(event.campaign, [0] * N_SLOTS)
            for slot, amount in event.contribution:
                counts[slot] += amount
    return result


# -- event time: a replay judges a fast clock as the first run did --------------------------------


def test_a_replay_after_a_crash_judges_a_fast_clock_as_the_first_run(
    make_settings: Callable[..., Settings],
) -> None:
    """The first run judges a fast tracker's records by the time it received them, and dies; the replay
    runs ten minutes later. The clock steps the first run persisted make it decide the same."""
    asyncio.run(
        _fast_clock_replay(make_settings(partitions=1, block_records=10, grace_s=0.0, max_future_skew_s=60.0))
    )


async def _fast_clock_replay(settings: Settings) -> None:
    honest = [click(f"e{i}", T0 + i * 100) for i in range(10)]
    fast = click("F", T0 + 120_000)  # two minutes fast, CreateTime too: "future" when received at T0 + 2 s
    first_batch = [*honest[:3], fast, *honest[3:]]  # offsets 0..10: offset 10 starts block 1
    second_batch = [
        click("ahead", T0 + 61_000),  # ahead of the clock: the watermark stops at the receive time
        click("on time", T0 + 59_000),  # inside its minute for that watermark
        click("F", T0 + 62_000),  # the same event again, from a right clock now: it counts
    ]
    after_crash = [click("e14", T0 + 59_500)]
    created = (
        [T0 + i * 100 + 10 for i in range(3)] + [T0 + 120_000] + [T0 + i * 100 + 10 for i in range(3, 10)]
    )
    created += [T0 + 61_000, T0 + 59_010, T0 + 62_000, T0 + 59_510]

    await produce(settings, first_batch, created[:11])
    clock = Clock(T0 + 2_000)
    stage = new_stage(settings, clock)
    async with running(stage):
        await wait_until(settled(stage, 11), "the first fetch folded")
        clock.ms = T0 + 59_900
        await produce(settings, second_batch, created[11:14])
        await wait_until(settled(stage, 14), "the second fetch folded")
        crash(stage)
    redis = aioredis.from_url(settings.redis_url)
    steps = await redis.zrange(Keys(settings.redis_prefix).fold_clock("clicks/0"), 0, -1)
    await redis.aclose()
    assert steps, "the first run persisted no clock step"

    await produce(settings, after_crash, created[14:])
    replay = new_stage(settings, Clock(T0 + 600_000))
    async with running(replay):
        await wait_until(settled(replay, 15), "the replay folded everything")

    counted = [*honest, *second_batch, *after_crash]
    assert await partial_totals(settings) == recount(settings, counted)


def test_an_event_far_ahead_travels_in_the_checkpoint(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """One event 50 minutes ahead no longer makes every restart re-read the records since it, and its
    duplicate after the restart still counts once."""
    caplog.set_level(logging.INFO, logger="agents.fold_stage")
    registry = CollectorRegistry()
    asyncio.run(_far_ahead(make_settings(partitions=1, block_records=10, grace_s=60.0), registry))
    assert registry.get_sample_value("adpulse_events_total", {"topic": "clicks", "outcome": "duplicate"}) == 1
    assert (
        "fold: clicks/0 resumes at offset 30 (watermark 1700000330000 ms, dedup set rebuilt from offset 18"
        in caplog.text
    )


async def _far_ahead(settings: Settings, registry: CollectorRegistry) -> None:
    ahead = click("ahead", T0 + 50 * 60_000)
    values = [click(f"e{i}", T0 + i * 10_000) for i in range(3)] + [ahead]
    values += [click(f"e{i}", T0 + i * 10_000) for i in range(4, 35)]
    created = [T0 + i * 10_000 for i in range(35)]  # "ahead" was sent at T0 + 30 s: its CreateTime bounds it
    clock = Clock(T0 + 400_000)
    await produce(settings, values, created)
    stage = new_stage(settings, clock)
    async with running(stage):
        await wait_until(settled(stage, 35), "35 records folded")
    restarted = new_stage(settings, clock, registry)
    async with running(restarted):
        await produce(settings, [ahead], [T0 + 350_000])
        await wait_until(settled(restarted, 36), "the restart folded the duplicate")
    assert await partial_totals(settings) == recount(settings, values)


# -- checkpoints: behind the commit, topics recreated ---------------------------------------------


def test_a_checkpoint_behind_the_commit_resumes_from_the_checkpoint(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Redis lost its last writes after the offset commit: resuming at the commit (no dedup set there)
    would count duplicates across it twice."""
    caplog.set_level(logging.INFO, logger="agents.fold_stage")
    registry = CollectorRegistry()
    settings = make_settings(partitions=1, block_records=10, grace_s=60.0)
    asyncio.run(_checkpoint_behind(settings, registry))
    assert registry.get_sample_value("adpulse_events_total", {"topic": "clicks", "outcome": "duplicate"}) == 2
    assert "behind the committed offset" in caplog.text


async def _checkpoint_behind(settings: Settings, registry: CollectorRegistry) -> None:
    values = [click(f"e{i}", T0 + i * 1_000) for i in range(24)]
    clock = Clock(T0 + 100_000)
    redis = aioredis.from_url(settings.redis_url)
    key = Keys(settings.redis_prefix).fold_checkpoints

    await produce(settings, values[:15])
    stage = new_stage(settings, clock)
    async with running(stage):
        await wait_until(settled(stage, 15), "the first 15 records folded")
        older = await redis.hget(key, "clicks/0")
        assert older is not None and orjson.loads(older)["offset"] == 10
        await produce(settings, values[15:])
        await wait_until(settled(stage, 24), "24 records folded")
        tp = TopicPartition(settings.topic("clicks"), 0)
        consumer = stage._consumer  # noqa: SLF001 - what the stage committed
        assert consumer is not None
        await wait_until(lambda: _equals(consumer.committed(tp), 20), "the commit of offset 20")
        crash(stage)
    await redis.hset(key, "clicks/0", older)  # Redis comes back without its last second

    again = [values[5], values[15], click("e24", T0 + 24_000)]  # duplicates of both blocks before the commit
    await produce(settings, again)
    replay = new_stage(settings, clock, registry)
    async with running(replay):
        await wait_until(settled(replay, 27), "the replay folded everything")
    await redis.aclose()
    assert await partial_totals(settings) == recount(settings, [*values, again[2]])


async def _equals(value: Any, expected: object) -> bool:
    return bool(await value == expected)


def test_a_recreated_topic_is_counted_from_its_start_and_said_loudly(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the records of the new topic below the saved position were skipped, uncounted."""
    caplog.set_level(logging.INFO, logger="agents.fold_stage")
    registry = CollectorRegistry()
    asyncio.run(_recreated(make_settings(partitions=1, block_records=10), registry))
    assert (
        registry.get_sample_value("adpulse_source_resets_total", {"topic": "clicks", "reason": "recreated"})
        == 1
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        "clicks partition 0" in e and "saved position 20 is past the end of the log (5)" in e for e in errors
    )


async def _recreated(settings: Settings, registry: CollectorRegistry) -> None:
    old = [click(f"old{i}", T0 + i * 1_000) for i in range(25)]
    clock = Clock(T0 + 100_000)
    await produce(settings, old)
    stage = new_stage(settings, clock)
    async with running(stage):
        await wait_until(settled(stage, 25), "the old topic folded")

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([settings.topic("clicks")])
    finally:
        await admin.close()
    await asyncio.to_thread(ensure_topics, settings)
    new = [click(f"new{i}", T0 + 60_000 + i * 1_000) for i in range(5)]
    await produce(settings, new)

    restarted = new_stage(settings, clock, registry)
    async with running(restarted):
        await wait_until(settled(restarted, 5), "the new topic folded")
    assert await partial_totals(settings) == recount(settings, old + new)


def test_a_checkpoint_in_the_last_record_batch_is_no_recreated_topic(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded broker lists the end of a log as the start of its last record batch plus one: a
    checkpoint inside that batch lies within the log all the same."""
    caplog.set_level(logging.INFO, logger="agents.fold_stage")
    registry = CollectorRegistry()
    asyncio.run(_inside_last_batch(make_settings(partitions=1, block_records=10), registry))
    assert (
        registry.get_sample_value("adpulse_source_resets_total", {"topic": "clicks", "reason": "recreated"})
        is None
    )
    assert "resumes at offset 20" in caplog.text


async def _inside_last_batch(settings: Settings, registry: CollectorRegistry) -> None:
    values = [click(f"e{i}", T0 + i * 1_000) for i in range(25)]
    clock = Clock(T0 + 100_000)
    await produce(settings, values)  # one record batch: offsets 0..24
    stage = new_stage(settings, clock)
    async with running(stage):
        await wait_until(settled(stage, 25), "25 records folded")
    restarted = new_stage(settings, clock, registry)
    async with running(restarted):
        await wait_until(settled(restarted, 25), "the restart resumed")
        await produce(settings, [click("e25", T0 + 25_000)])
        await wait_until(settled(restarted, 26), "one more record folded")
    assert await partial_totals(settings) == recount(settings, [*values, click("e25", T0 + 25_000)])


# -- the broker stalls: a stack of our own, frozen with SIGSTOP -----------------------------------


@pytest.fixture(scope="module", params=BROKERS)
def frozen_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, EmbeddedStack]]:
    """A stack of its own on each broker in turn (the whole Kafka node is what SIGSTOP freezes)."""
    if request.param == KAFKA:
        require_kafka()
    home = tmp_path_factory.mktemp(f"frozen-home-{request.param}")
    with own_stack(home, broker=request.param, partitions=1) as up:
        yield up


class Freezer:
    """Stops the broker process (SIGSTOP) and lets it go on (SIGCONT) after ``seconds``."""

    def __init__(self, stack: EmbeddedStack) -> None:
        pid = stack.status().broker.pid
        assert pid is not None
        self.pid = pid
        self.frozen = 0

    def freeze(self, seconds: float) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen += 1
        asyncio.get_running_loop().call_later(seconds, self.thaw)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def test_a_partial_lost_in_a_broker_outage_is_replayed_before_anything_newer(
    frozen_stack: tuple[Settings, EmbeddedStack], fresh_prefix: str
) -> None:
    """The broker stops while the stage sends the partials of a fetch that closes two blocks; the first
    send expires. Before, the partials of the next block went out after it and the table ignored the
    replay of the lost one (the issue: 80 of 130 counted)."""
    base, stack = frozen_stack
    settings = base.model_copy(
        update={
            "topic_prefix": fresh_prefix,
            "app_id": f"adpulse-{fresh_prefix.rstrip('.')}",
            "block_records": 50,
        }
    )
    ensure_topics(settings)
    freezer = Freezer(stack)
    try:
        asyncio.run(_outage(settings, freezer))
    finally:
        freezer.thaw()


async def _outage(settings: Settings, freezer: Freezer) -> None:
    values = [click(f"e{i}", T0 + i * 100) for i in range(130)]
    await produce(settings, values)

    def freeze_once() -> None:
        # Read by the stage right after a fetch, before it folds the fetch and sends the partials; the
        # first fetch: the stage's producer has not connected to the broker yet, so what it sends during
        # the outage waits unsent and expires.
        if not freezer.frozen:
            freezer.freeze(4.5)

    # Fetches of 100 records: the first closes block 0 (its partials expire three seconds later); the
    # second, buffered already, closes block 1; block 2 goes out at the next flush, up to a second later,
    # and lives through the outage.
    stage = new_stage(
        settings,
        Clock(T0 + 60_000, freeze_once),
        producer_timeout_ms=3_000,
        flush_interval_s=1.0,
        fetch_max_records=100,
    )
    async with running(stage):
        await wait_until(settled(stage, 130), "the stage to recover and fold everything", timeout_s=90)
    assert freezer.frozen == 1
    assert await partial_totals(settings) == recount(settings, values)


def test_the_dedup_rebuild_reads_to_its_end_through_a_stalled_broker(
    frozen_stack: tuple[Settings, EmbeddedStack], fresh_prefix: str
) -> None:
    """Before, the rebuild stopped at the first fetch that came back empty after a second."""
    base, stack = frozen_stack
    settings = base.model_copy(update={"topic_prefix": fresh_prefix})
    ensure_topics(settings)
    freezer = Freezer(stack)
    try:
        asyncio.run(_stalled_rebuild(settings, freezer))
    finally:
        freezer.thaw()


async def _stalled_rebuild(settings: Settings, freezer: Freezer) -> None:
    n = 25_000
    padding = "x" * 150  # about 5 MB: far more than a fetch brings
    values = [
        orjson.dumps(
            {"event_id": f"e{i}", "ts": T0, "channel": "douyin", "type": "click", "click_id": padding}
        )
        for i in range(n)
    ]
    await produce(settings, values)
    got: list[int] = []

    def sink(records: list[Any]) -> None:
        if not got:
            freezer.freeze(2.5)  # longer than the rebuild's 1 s fetches
        got.extend(record.offset for record in records)

    tp = TopicPartition(settings.topic("clicks"), 0)
    read = await read_range(settings.kafka_client_options(), tp, 0, n - 100, sink)
    assert freezer.frozen == 1
    assert read == n - 100 and got == list(range(n - 100))
