"""A changelog written before buckets had shards: a worker recovers the whole buckets it holds, reads them,
and cuts them into shards on their next write, with every count kept (real broker and Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from adpulse.settings import Settings
from adpulse.stack import free_port
from agents.buckets import SEP
from streams.codec import N_SLOTS
from streams.keys import Keys
from streams.partitioning import partition_of
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

CHANNEL = "wechat"


def vec(impressions: int, clicks: int = 0) -> list[int]:
    return [impressions, clicks, *[0] * (N_SLOTS - 2)]


#: The all-time total as a version before shards wrote it: one key, rows as JSON lists; a folded base and a
#: pending block of a source partition that sends nothing more here (its counts must stay in).
WHOLE_TOTAL = {
    "b": {"-": vec(7), "old-a": vec(100, 5), "old-c": vec(30, 1)},
    "p": {"clicks/9": [3, 310, {"old-b": vec(40, 2), "old-a": vec(1)}]},
    "f": {"clicks/9": 2},
}


async def write_whole_total(settings: Settings) -> str:
    """The changelog topic (as Faust creates it) holding one record: the whole total of ``CHANNEL``."""
    topic = f"{settings.app_id}-buckets-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, settings.partitions, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        key = f"{CHANNEL}{SEP}total{SEP}0"
        await producer.send_and_wait(
            topic,
            orjson.dumps(WHOLE_TOTAL),
            key=orjson.dumps(key),  # Faust's JSON for a str key
            partition=partition_of(CHANNEL, settings.partitions),
        )
    finally:
        await producer.stop()
    return topic


async def changelog_keys(settings: Settings, topic: str) -> list[tuple[str, bool]]:
    """(key, deleted) of every record of the changelog, in order."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found: list[tuple[str, bool]] = []
    try:
        while batch := await consumer.getmany(timeout_ms=3000):
            for records in batch.values():
                found += [(orjson.loads(r.key), r.value is None) for r in records if r.key is not None]
    finally:
        await consumer.stop()
    return found


async def produce(settings: Settings, ts_s: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for i, campaign in enumerate(("old-a", "new-x", "new-y", "new-z")):
            body = {
                "ts": (ts_s + i) * 1000,
                "channel": CHANNEL,
                "campaign": campaign,
                "type": "impression",
                "count": 10,
                "event_id": f"e-{campaign}",
            }
            await producer.send_and_wait(settings.topic("clicks"), orjson.dumps(body), key=CHANNEL.encode())
    finally:
        await producer.stop()


def test_a_whole_bucket_from_before_shards_is_read_and_cut_into_shards_with_every_count_kept(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        partitions=2, bucket_shards=4, idle_partition_s=2.0, web_port=free_port(), home=tmp_path / "home"
    )
    topic = asyncio.run(write_whole_total(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    client = redis.Redis.from_url(settings.redis_url)
    kpis = Keys(settings.redis_prefix).kpis
    try:
        worker.wait_ready()
        asyncio.run(produce(settings, int(datetime.now(UTC).timestamp()) - 300))

        # The channel row sums every campaign's; the whole bucket's base and pending rows are all there.
        expected = {
            "-": 7 + 100 + 30 + 40 + 1 + 4 * 10,
            "old-a": 100 + 1 + 10,
            "old-b": 40,
            "old-c": 30,
            "new-x": 10,
            "new-y": 10,
            "new-z": 10,
        }
        seen: list[dict[str, float | None]] = []

        def totals() -> bool:
            assert worker.alive(), worker.log_tail()
            rows: dict[str, float | None] = {}
            for campaign in expected:
                raw = client.hget(kpis, f"{CHANNEL}|{campaign}|total|total")
                rows[campaign] = None if raw is None else orjson.loads(raw)["impressions"]
            seen.append(rows)
            return rows == expected

        try:
            wait_for(totals, 90, "the all-time rows to hold the whole bucket's counts and the new events")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {seen[-1] if seen else None}") from exc
        records = asyncio.run(changelog_keys(settings, topic))
        whole = f"{CHANNEL}{SEP}total{SEP}0"
        assert records[0] == (whole, False)
        assert (whole, True) in records  # cut into shards: the whole key deleted
        shards = {key for key, deleted in records if key.startswith(whole + SEP) and not deleted}
        assert shards == {f"{whole}{SEP}{shard}" for shard in range(4)}
        deleted_at = records.index((whole, True))
        assert all(key.startswith(whole + SEP) for key, _ in records[1:deleted_at] if key.startswith(whole))
    finally:
        worker.stop()
