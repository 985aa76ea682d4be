"""What only a real Kafka cluster shows: three brokers on loopback (replication 3, ``min.insync.replicas=2``).

- the topics are created as docs/operations.md recommends, also the worker's own changelog;
- the leader of a source partition is killed (``kill -9``) in the middle of the traffic and brought back,
  and every window is still exact: acks=all sends (trackers', the fold stage's partials, Faust's changelog)
  survive the loss of a broker, and nothing is counted twice;
- a second worker joins and the first leaves (a real consumer-group rebalance, twice): exact totals;
- the budgets topic really is compacted, and every budget (several periods per channel) survives it.

Heavy (a JVM per broker beside two workers; some 3.5 minutes on 2 busy cores): marked ``cluster``, so that a
slow machine can deselect them (``-m "not cluster"``); ``make test`` and ``make kafka`` run them. One cluster
for the module; each test has its own topics, consumer groups and Redis database.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from adpulse.budget_cli import produce_setting, read_budgets
from adpulse.settings import Settings
from adpulse.stack import KAFKA, EmbeddedStack, ensure_topics, free_port
from agents.budget_feed import BudgetFeed
from alerts.budgets import Budget, BudgetBook, Period
from streams.events import BudgetSetting
from streams.metadata import topic_partitions
from streams.topics import topic_specs
from tests.conftest import own_stack, require_kafka
from tests.integration.test_pipeline_exact import N_EVENTS, _mismatches, _wait_exact, _window_start_ms
from tests.support.dataset import Dataset, Record, build
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.timeout(900)]

_REDIS_DBS = itertools.cycle(range(1, 16))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, EmbeddedStack]]:
    """A 3-node Kafka (and Valkey) for the module; the settings name all three brokers."""
    require_kafka()
    with own_stack(tmp_path_factory.mktemp("cluster"), broker=KAFKA, nodes=3) as (settings, stack):
        assert stack.kafka is not None and len(stack.kafka.running()) == 3
        yield settings.model_copy(update={"kafka_bootstrap": stack.kafka.bootstrap}), stack


def _isolated(cluster: tuple[Settings, EmbeddedStack], **overrides: object) -> Settings:
    """Settings of one test: its own topics (replicated on all three brokers), group and Redis db."""
    base, _stack = cluster
    prefix = f"c{uuid4().hex[:8]}."
    db = next(_REDIS_DBS)
    settings = base.model_copy(
        update={
            "topic_prefix": prefix,
            "app_id": f"adpulse-{prefix.rstrip('.')}",
            "redis_url": base.redis_url.rsplit("/", 1)[0] + f"/{db}",
            "topic_replication_factor": 3,
            **overrides,
        }
    )
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    ensure_topics(settings)
    return settings


def _exact_settings(cluster: tuple[Settings, EmbeddedStack]) -> Settings:
    """The exactness test's settings (tests/integration/test_pipeline_exact.py), on the cluster."""
    return _isolated(
        cluster,
        grace_s=60.0,
        block_records=2000,
        flush_interval_s=0.3,
        tick_s=0.5,
        idle_partition_s=3.0,
        partitions=4,
        web_port=free_port(),
    )


async def _produce(
    settings: Settings, records: list[Record], every: int, on_pause: Callable[[int], None]
) -> None:
    """Send like a careful tracker (acks=all, idempotent), calling ``on_pause`` after every ``every``."""
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(),
        acks="all",
        enable_idempotence=True,
        linger_ms=10,
        request_timeout_ms=60_000,
    )
    await producer.start()
    try:
        futures = []
        for i, record in enumerate(records, 1):
            futures.append(await producer.send(settings.topic(record.topic), record.value, key=record.key))
            if i % every == 0:
                await producer.flush()
                on_pause(i)
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return build(N_EVENTS, _window_start_ms(), 30 * 60_000)


# --------------------------------------------------------------------------------------------------- topics


async def _describe(
    settings: Settings, topics: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics(topics)}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
        )
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            configs[resource[3]] = {entry[0]: entry[1] for entry in resource[4]}
    return described, configs


def test_topics_are_created_as_operations_md_recommends(
    cluster: tuple[Settings, EmbeddedStack], tmp_path: Path
) -> None:
    settings = _isolated(cluster, web_port=free_port())
    changelog = f"{settings.app_id}-buckets-changelog"
    # The worker's Faust app creates its changelog itself, with ADPULSE_TOPIC_REPLICATION_FACTOR.
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(timeout_s=120)
        wait_for(
            lambda: asyncio.run(_describe(settings, [changelog]))[0][changelog]["error_code"] == 0,
            60,
            "the worker to create its changelog topic",
        )
    finally:
        worker.stop()
    specs = {settings.topic(spec.short): spec for spec in topic_specs(settings.partitions)}
    described, configs = asyncio.run(_describe(settings, [*specs, changelog]))

    for topic in [*specs, changelog]:
        partitions = described[topic]["partitions"]
        assert described[topic]["error_code"] == 0, topic
        want = specs[topic].partitions if topic in specs else settings.partitions
        assert len(partitions) == want, topic
        for partition in partitions:
            # Three copies, all in sync; a write is acknowledged once two of them have it.
            assert len(partition["replicas"]) == 3 and len(partition["isr"]) == 3, (topic, partition)
        assert configs[topic]["min.insync.replicas"] == "2", topic
    for topic, spec in specs.items():
        for key, value in spec.configs.items():
            assert configs[topic][key] == value, (topic, key)
    assert configs[settings.topic("budgets")]["cleanup.policy"] == "compact"
    assert configs[settings.topic("clicks")]["cleanup.policy"] == "delete"
    assert configs[changelog]["cleanup.policy"] == "compact"


# ------------------------------------------------------------------------------------------------ failover


def test_killing_the_leader_during_traffic_loses_nothing_and_counts_nothing_twice(
    cluster: tuple[Settings, EmbeddedStack], dataset: Dataset, tmp_path: Path
) -> None:
    _base, stack = cluster
    assert stack.kafka is not None
    kafka = stack.kafka
    settings = _exact_settings(cluster)
    workers = [
        WorkerProcess(settings.model_copy(update={"web_port": free_port()}), tmp_path / "w1.log").start(),
        WorkerProcess(settings, tmp_path / "w2.log").start(),
    ]
    events: dict[str, int] = {}

    def fault(sent: int) -> None:
        # A third of the way in: kill the broker leading clicks partition 0, without warning.
        if "killed" not in events and sent >= len(dataset.records) // 3:
            events["killed"] = kafka.leader(settings.topic("clicks"), 0)
            kafka.kill9(events["killed"])
        # Two thirds in: bring it back; it rejoins and catches up as a follower.
        elif "killed" in events and "back" not in events and sent >= 2 * len(dataset.records) // 3:
            kafka.start_node(events["killed"], timeout_s=180)
            events["back"] = events["killed"]

    try:
        for worker in workers:
            worker.wait_ready(timeout_s=120)
        asyncio.run(_produce(settings, dataset.records, every=5_000, on_pause=fault))
        assert events.get("back") is not None, events
        _wait_exact(settings, dataset, workers, timeout_s=300)
        # Someone else leads clicks partition 0 now, or the restarted broker took it back: either way it
        # moved, and all three brokers are in the cluster again.
        assert sorted(kafka.running()) == [1, 2, 3]
        for worker in workers:
            assert worker.alive(), worker.log_tail()
    finally:
        for worker in workers:
            worker.stop()


# ----------------------------------------------------------------------------------------------- rebalance


def test_a_worker_joining_and_one_leaving_rebalances_exactly(
    cluster: tuple[Settings, EmbeddedStack], dataset: Dataset, tmp_path: Path
) -> None:
    settings = _exact_settings(cluster)
    first = WorkerProcess(settings.model_copy(update={"web_port": free_port()}), tmp_path / "w1.log").start()
    second = WorkerProcess(settings, tmp_path / "w2.log")
    steps: list[str] = []

    def rebalance(sent: int) -> None:
        third = len(dataset.records) // 3
        if not steps and sent >= third:
            second.start()  # joins: the group rebalances, partitions move to it mid-stream
            second.wait_ready(timeout_s=120)
            steps.append("joined")
        elif steps == ["joined"] and sent >= 2 * third:
            assert first.stop() == 0, first.log_tail()  # leaves cleanly: everything moves to the second
            steps.append("left")

    try:
        first.wait_ready(timeout_s=120)
        asyncio.run(_produce(settings, dataset.records, every=5_000, on_pause=rebalance))
        assert steps == ["joined", "left"]
        _wait_exact(settings, dataset, [second], timeout_s=300)
        resumed = re.findall(r"resumes at offset (\d+)", (tmp_path / "w2.log").read_text())
        assert any(int(offset) > 0 for offset in resumed), resumed
        assert not _mismatches(settings, dataset)
    finally:
        first.stop()
        second.stop()


# ------------------------------------------------------------------------------------------------ budgets


async def _raw_budgets(settings: Settings) -> list[tuple[int, bytes | None]]:
    """(offset, key) of every record the budgets topic still holds."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        (tp,) = await topic_partitions(settings.kafka_client_options(), settings.topic("budgets"))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        seen: list[tuple[int, bytes | None]] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                seen.extend((r.offset, r.key) for r in records)
        return seen
    finally:
        await consumer.stop()


async def _compact_soon(settings: Settings) -> None:
    """Make the budgets topic compact within seconds: small segments, any dirty share worth cleaning."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    settings.topic("budgets"),
                    configs={
                        "cleanup.policy": "compact",
                        "segment.ms": "200",
                        "min.cleanable.dirty.ratio": "0.001",
                        "min.compaction.lag.ms": "0",
                        "delete.retention.ms": "60000",
                    },
                )
            ]
        )
    finally:
        await admin.close()


async def _feed_book(settings: Settings, budgets: int) -> BudgetBook:
    """What a worker's budget feed reads from the topic (once it has ``budgets`` of them)."""
    book = BudgetBook()
    feed = BudgetFeed(settings.kafka_client_options(), settings.topic("budgets"), book)
    task = asyncio.create_task(feed.run())
    try:
        deadline = time.monotonic() + 30
        while len(book) < budgets and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # and nothing more arrives
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return book


def test_the_budgets_topic_is_compacted_and_every_period_survives(
    cluster: tuple[Settings, EmbeddedStack],
) -> None:
    settings = _isolated(cluster)
    asyncio.run(_compact_soon(settings))

    def put(channel: str, period: Period, amount: float | None, campaign: str | None = None) -> None:
        setting = BudgetSetting(channel=channel, campaign=campaign, period=period, amount=amount)
        asyncio.run(produce_setting(settings, setting))

    # Many updates per budget, three periods for douyin, a deletion; the last value of each must survive.
    for round_ in range(1, 6):
        put("douyin", "day", 1000.0 * round_)
        put("douyin", "month", 30_000.0 * round_)
        put("douyin", "total", 900_000.0 * round_)
        put("taobao", "month", 50_000.0 * round_, campaign="double-11")
        put("jd", "day", 700.0 * round_)
    put("jd", "month", 9_000.0)
    put("jd", "month", None)
    written = len(asyncio.run(_raw_budgets(settings)))
    time.sleep(0.5)
    put("pdd", "day", 100.0)  # rolls the segment: only closed segments are compacted
    assert written == 27

    expected = [
        Budget("douyin", None, "day", 5000.0),
        Budget("douyin", None, "month", 150_000.0),
        Budget("douyin", None, "total", 4_500_000.0),
        Budget("jd", None, "day", 3500.0),
        Budget("pdd", None, "day", 100.0),
        Budget("taobao", "double-11", "month", 250_000.0),
    ]

    def compacted() -> list[bytes | None] | None:
        keys = [key for _, key in asyncio.run(_raw_budgets(settings))]
        return keys if len(keys) == len(set(keys)) else None

    # The broker's log cleaner keeps one record per key: the last (jd#month's is its deletion).
    keys = wait_for(compacted, 120, "the log cleaner to compact the budgets topic", interval_s=2.0)
    assert isinstance(keys, list)
    assert sorted(k.decode() for k in keys if k) == sorted(
        [
            "douyin#day",
            "douyin#month",
            "douyin#total",
            "jd#day",
            "jd#month",
            "pdd#day",
            "taobao/double-11#month",
        ]
    )
    book, skipped = asyncio.run(read_budgets(settings))
    assert skipped == [] and list(book) == expected
    assert list(asyncio.run(_feed_book(settings, len(expected)))) == expected
