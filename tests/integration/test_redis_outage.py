"""The fold stage rides out Redis outages, on the real broker and Redis (behind a gate that plays the outage):
it neither crashes nor folds from a guessed position, and every count is exact once Redis is back.

Before, a checkpoint that could not be read at assignment left the partition unfolded until the next
rebalance, and a checkpoint or clock step that could not be written ended the fold stage (and the worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from adpulse.settings import Settings
from streams.keys import Keys
from tests.faults.gate import Gate, gated_redis
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


def test_the_fold_stage_waits_for_redis_and_counts_exactly(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Two outages: one from before the partition is assigned (its checkpoint cannot be read), one in the
    middle of a fetch with a record ahead of the clock (its clock step cannot be saved) and of block
    boundaries (their checkpoints cannot be written). Each is logged once and counted."""
    caplog.set_level(logging.INFO, logger="agents")
    registry = CollectorRegistry()
    with gated_redis(make_settings(partitions=1, block_records=10, grace_s=60.0)) as (settings, gate):
        asyncio.run(_two_outages(settings, gate, registry))
    outages = [r for r in caplog.records if r.name == "agents.redis_retry" and r.levelno == logging.WARNING]
    backs = [
        r.getMessage() for r in caplog.records if r.name == "agents.redis_retry" and r.levelno == logging.INFO
    ]
    assert len(outages) == 2, [r.getMessage() for r in outages]
    assert len(backs) == 2 and all("Redis is back after" in m for m in backs), backs
    assert registry.get_sample_value("adpulse_redis_outages_total") == 2
    assert registry.get_sample_value("adpulse_redis_unavailable") == 0
    for operation in ("reading fold checkpoints", "saving fold clock steps"):
        assert (registry.get_sample_value("adpulse_redis_retries_total", {"operation": operation}) or 0) >= 1


async def _two_outages(settings: Settings, gate: Gate, registry: CollectorRegistry) -> None:
    clock = Clock(T0 + 100_000)
    tp = TopicPartition(settings.topic("clicks"), 0)
    first = [click(f"e{i}", T0 + i * 1_000) for i in range(25)]
    await produce(settings, first)
    gate.shut()
    stage = new_stage(settings, clock, registry)
    async with running(stage):
        await wait_until(lambda: tp in stage.unstarted, "the partition waiting for its checkpoint")
        await asyncio.sleep(3.0)  # Redis stays away: nothing may be folded from a guessed position
        assert tp in stage.unstarted and not stage.parts
        assert await partial_totals(settings) == {}
        gate.open()
        await wait_until(settled(stage, 25), "the records folded once Redis answered", timeout_s=90)

        gate.shut()
        # 50 s ahead of the worker's clock: its clock step must be saved before anything it decided goes out.
        ahead = click("ahead", T0 + 150_000)
        second = [click(f"e{i}", T0 + i * 1_000) for i in range(25, 54)]
        created = [T0 + 150_000] + [T0 + i * 1_000 for i in range(25, 54)]
        await produce(settings, [ahead, *second], created)
        await wait_until(lambda: tp in stage.unstarted, "the partition waiting for Redis again")
        await asyncio.sleep(3.0)
        assert tp in stage.unstarted
        gate.open()
        await wait_until(settled(stage, 55), "everything folded once Redis answered again", timeout_s=90)
    assert await partial_totals(settings) == recount(settings, [*first, ahead, *second])
    redis = aioredis.from_url(settings.redis_url)
    try:
        saved = await redis.hget(Keys(settings.redis_prefix).fold_checkpoints, "clicks/0")
    finally:
        await redis.aclose()
    assert saved is not None and orjson.loads(saved)["offset"] == 50
    # Its marks name every source partition, its own or not (a worker taking over after a crash must know
    # which sources it has no mark of yet).
    assert await last_mark_sources(settings) == ["clicks/0", "orders/0", "spend/0"]


async def last_mark_sources(settings: Settings) -> object:
    """The ``sources`` of the last mark on partials partition 0."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    tp = TopicPartition(settings.topic("partials"), 0)
    sources: object = None
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, ()):
                message = orjson.loads(record.value)
                if "marks" in message:
                    sources = message.get("sources")
    finally:
        await consumer.stop()
    return sources
