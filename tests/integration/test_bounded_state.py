"""State stays bounded as event time runs past the retention: a worker on the real broker and Redis counts
five days of traffic whose campaigns change every day, with retentions of minutes to days."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer

from adpulse.metrics_page import metric_sum
from adpulse.settings import Settings
from adpulse.stack import free_port
from streams.keys import Keys
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

DAY_S = 86_400
CHANNELS = ("douyin", "taobao")
DAYS = 5


def records(first_day: int) -> list[tuple[str, int, bytes, bytes]]:
    """Five days, one impression batch and one click per channel, campaign and 10 minutes; each day's
    campaigns are new (``d0-a``, ``d0-b``, then ``d1-a``, ...)."""
    out = []
    for minute in range(0, DAYS * DAY_S, 600):
        ts = first_day + minute
        day = minute // DAY_S
        for i, channel in enumerate(CHANNELS):
            for campaign in (f"d{day}-a", f"d{day}-b"):
                base = {"ts": ts * 1000, "channel": channel, "campaign": campaign}
                for kind, extra in (("imp", {"type": "impression", "count": 40}), ("clk", {"type": "click"})):
                    body = {**base, **extra, "event_id": f"{channel}-{campaign}-{minute}-{kind}"}
                    out.append(("clicks", (minute // 600 + i) % 2, channel.encode(), orjson.dumps(body)))
    return out


async def produce(settings: Settings, batch: list[tuple[str, int, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    await producer.start()
    try:
        sent = [
            await producer.send(settings.topic(topic), value, key=key, partition=partition)
            for topic, partition, key, value in batch
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_buckets_snapshot_rows_and_judged_marks_stay_bounded_past_the_retention(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        partitions=2,
        # Small blocks: the all-time total folds a block into its base (where campaigns retire from) once
        # the next block starts.
        block_records=100,
        # Buckets in shards: a shard whose campaigns went quiet must still fold its pending block, or they
        # never retire from the total (seen with shards before that was done).
        bucket_shards=4,
        retention_1m_s=1800.0,
        retention_1h_s=4 * 3600.0,
        retention_1d_s=2 * DAY_S,
        idle_partition_s=10.0,  # orders and spend carry nothing here: their partitions go idle
        alert_lookback_s=10 * DAY_S,
        web_port=free_port(),
        home=tmp_path / "home",
    )
    # The five days end at the start of this hour. The partitions go idle once they are sent, and event time
    # then runs on to the wall clock: less than an hour past the data, so the last day is always within its
    # retention. (Ending at midnight UTC a day earlier, as before, the last day bucket in Asia/Shanghai was
    # past its two days of retention from 16:00 UTC on, and every row went: the test failed from 16:00 to
    # midnight UTC, every day.)
    first_day = int(datetime.now(UTC).timestamp()) // 3600 * 3600 - DAYS * DAY_S
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.redis_prefix)
    try:
        worker.wait_ready()
        asyncio.run(produce(settings, records(first_day)))
        last_minute = first_day + DAYS * DAY_S - 600

        def caught_up() -> bool:
            assert worker.alive(), worker.log_tail()
            watermark = client.hget(keys.kpis_meta, "watermark_s")
            return watermark is not None and float(watermark) >= last_minute

        wait_for(caught_up, 240, "the worker to count the five days")

        def total_rows() -> dict[str, dict[str, object]]:
            return {
                _text(k): orjson.loads(v)
                for k, v in client.hgetall(keys.kpis).items()
                if _text(k).endswith("|total|total")
            }

        # The campaigns of days 0-1 left every retained day bucket: their all-time rows went, into (other).
        def retired() -> bool:
            rows = total_rows()
            present = all(f"{channel}|-|total|total" in rows for channel in CHANNELS)
            return present and not any(name.split("|")[1].startswith(("d0-", "d1-")) for name in rows)

        wait_for(retired, 60, "the first days' campaigns to retire from the total")
        rows = total_rows()
        for channel in CHANNELS:
            # Channel totals stay exact: 5 days × 144 ten-minute steps × 2 campaigns.
            assert rows[f"{channel}|-|total|total"]["impressions"] == DAYS * 144 * 2 * 40
            assert rows[f"{channel}|-|total|total"]["clicks"] == DAYS * 144 * 2
            assert f"{channel}|(other)|total|total" in rows
            assert f"{channel}|d4-a|total|total" in rows
        # Buckets: per channel at most 30 + 2 minutes, 4 + 2 hours, 2 + 2 days and the total (with a sweep
        # a minute of event time behind).
        metrics = str(wait_for(worker.metrics, 30, "the worker's /metrics"))
        assert 0 < metric_sum(metrics, "adpulse_bucket_keys") <= len(CHANNELS) * (32 + 6 + 4 + 1)
        # Snapshot rows: current and last windows of the live campaigns, not every campaign ever seen.
        assert not [
            name for name in client.hkeys(keys.kpis) if _text(name).split("|")[1].startswith(("d0-", "d1-"))
        ]
        # Judged marks of campaigns whose windows are past the retention are pruned.
        assert not [
            name for name in client.hkeys(keys.judged) if _text(name).split("|")[1].startswith(("d0-", "d1-"))
        ]
        # Closed-window history of minutes past their retention (and a day of TTL) is deleted by event time.
        day0 = datetime.fromtimestamp(first_day, settings.zone).date().isoformat()
        assert not client.exists(keys.closed_windows("1m", day0))
        assert not client.exists(keys.closed_windows("1h", day0))
        assert worker.alive(), worker.log_tail()
        assert metric_sum(metrics, "adpulse_dlq_records_total") == 0
    finally:
        client.close()
        worker.stop()
