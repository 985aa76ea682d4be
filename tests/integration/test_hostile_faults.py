"""A hostile tracker against the fold stage, on the real broker and Redis: huge sums, a recreated topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from adpulse.settings import Settings
from adpulse.stack import ensure_topics
from agents.fold_stage import FoldStage
from streams.codec import GMV
from streams.events import MAX_MONEY, MICROS
from streams.windows import TOTAL
from tests.integration.test_fold_faults import (
    T0,
    Clock,
    click,
    new_stage,
    partial_totals,
    produce,
    recount,
    running,
    settled,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def order(event_id: str, amount: float, channel: str = "douyin") -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "ts": T0, "channel": channel, "order_id": event_id, "amount": amount}
    )


async def produce_orders(settings: Settings, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for value in values:
            await producer.send(settings.topic("orders"), value, key=b"douyin", partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def folded(stage: FoldStage, position: int) -> Callable[[], bool]:
    def check() -> bool:
        part = stage.parts.get(TopicPartition(stage.config.topic("orders"), 0))
        return part is not None and part.ready and part.lane.idle and part.lane.delivered_mark[1] >= position

    return check


def test_orders_of_the_largest_valid_amount_do_not_crash_the_fold_stage(
    make_settings: Callable[..., Settings],
) -> None:
    """Twenty orders of the largest amount the contract accepts sum past 2**64 micro-units in one bucket:
    publishing that partial (orjson) raised and killed the stage, again at every restart."""
    asyncio.run(_largest_orders(make_settings(partitions=1, block_records=100)))


async def _largest_orders(settings: Settings) -> None:
    huge = [order(f"big{i}", MAX_MONEY) for i in range(20)]
    await produce_orders(settings, [*huge, order("small", 12.5, channel="taobao")])
    stage = new_stage(settings, Clock(T0 + 5_000))
    async with running(stage) as task:
        await wait_until(lambda: task.done() or folded(stage, 21)(), "the orders folded")
        assert not task.done(), f"the fold stage died: {task.exception()!r}"
    got = await partial_totals(settings)
    assert got[("taobao", TOTAL, 0)]["-"][GMV] == 12_500_000
    # The hostile channel's sum is capped, not wrapped or dropped: still huge and within int64.
    assert MAX_MONEY * MICROS < got[("douyin", TOTAL, 0)]["-"][GMV] < 2**63


def test_a_recreated_topic_refilled_past_the_saved_position_is_counted_from_its_start(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Offsets alone could not tell this new log from the old one: its first 20 records were skipped and
    its block 2 overwrote the old block 2. The record the checkpoint was taken at tells them apart."""
    caplog.set_level(logging.INFO, logger="agents.fold_stage")
    registry = CollectorRegistry()
    asyncio.run(_recreated_and_refilled(make_settings(partitions=1, block_records=10), registry))
    assert (
        registry.get_sample_value("adpulse_source_resets_total", {"topic": "clicks", "reason": "recreated"})
        == 1
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        "clicks partition 0" in e and "does not hold the record at offset 20" in e and "position 20" in e
        for e in errors
    ), errors


async def _recreated_and_refilled(settings: Settings, registry: CollectorRegistry) -> None:
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
    new = [click(f"new{i}", T0 + 60_000 + i * 1_000) for i in range(30)]
    await produce(settings, new)

    restarted = new_stage(settings, clock, registry)
    async with running(restarted):
        await wait_until(settled(restarted, 30), "the new topic folded")
    assert await partial_totals(settings) == recount(settings, old + new)
