"""Emitting to adpulse on the embedded broker: the Python helper, and a plain Kafka client in Go."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from adpulse.emit import Emitter, InvalidEventError
from adpulse.settings import Settings
from streams.codec import Accepted, decode
from streams.dlq import PRODUCER_HEADER
from streams.metadata import topic_partitions
from streams.partitioning import partition_of

pytestmark = [pytest.mark.integration, pytest.mark.kafka]
ROOT = Path(__file__).resolve().parents[2]
GO_EXAMPLE = ROOT / "examples" / "go-producer"


async def read_all(settings: Settings, topic: str, expected: int) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = await topic_partitions(settings.kafka_client_options(), settings.topic(topic))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        for _ in range(40):
            batch = await consumer.getmany(timeout_ms=250)
            records.extend(r for rs in batch.values() for r in rs)
            if len(records) >= expected and not batch:
                break
        return records
    finally:
        await consumer.stop()


def check(settings: Settings, record: ConsumerRecord[bytes, bytes], topic: str) -> Accepted:
    decoded = decode(topic, record.value, settings.currency, settings.max_record_bytes)
    assert isinstance(decoded, Accepted), decoded
    assert record.key == decoded.channel.encode()
    assert record.partition == partition_of(decoded.channel, settings.partitions), (
        "Kafka's default partitioner"
    )
    return decoded


def test_the_python_emitter_fills_in_keys_by_channel_and_refuses_what_the_worker_rejects(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()

    async def emit() -> None:
        async with Emitter(settings, producer="shop-web/1.0") as emitter:
            for i in range(30):
                channel = ("douyin", "taobao", "jd")[i % 3]
                await emitter.send("clicks", {"channel": channel, "type": "click", "campaign": f"c{i % 2}"})
            await emitter.send(
                "orders",
                {"event_id": "o-1", "ts": 1772431530000, "channel": "jd", "order_id": "1", "amount": 9.9},
            )
            with pytest.raises(InvalidEventError) as refused:
                await emitter.send("orders", {"channel": "jd", "order_id": "2", "amount": -1})
            assert refused.value.rejection.field == "amount" and "must not be negative" in str(refused.value)
            with pytest.raises(InvalidEventError, match="type"):
                await emitter.send("clicks", {"channel": "jd", "type": "hover"})
            assert emitter.sent == 31

    asyncio.run(emit())
    clicks = asyncio.run(read_all(settings, "clicks", 30))
    assert len(clicks) == 30
    decoded = [check(settings, r, "clicks") for r in clicks]
    assert len({d.event_id for d in decoded}) == 30 and all(d.ts_ms > 1_700_000_000_000 for d in decoded)
    assert all(dict(r.headers)[PRODUCER_HEADER] == b"shop-web/1.0" for r in clicks)
    orders = asyncio.run(read_all(settings, "orders", 1))
    assert [orjson.loads(r.value)["event_id"] for r in orders] == ["o-1"]


def test_the_go_example_produces_records_the_worker_accepts(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs on machines with Go (/usr/local/go/bin/go): the Go example must be tested")
        pytest.skip("no Go toolchain on this machine (go not on PATH)")
    settings = make_settings()
    binary = tmp_path / "goproducer"
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    for channel in ("wechat", "baidu"):
        ran = subprocess.run(
            [
                str(binary),
                "-brokers",
                settings.kafka_bootstrap,
                "-topic",
                settings.topic("clicks"),
                "-channel",
                channel,
                "-n",
                "20",
                "-run",
                f"go-{channel}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        assert f"sent 20 clicks for {channel}" in ran.stdout
    records = asyncio.run(read_all(settings, "clicks", 40))
    assert len(records) == 40
    decoded = [check(settings, r, "clicks") for r in records]
    assert {d.channel for d in decoded} == {"wechat", "baidu"} and len({d.event_id for d in decoded}) == 40
    assert all(dict(r.headers)[PRODUCER_HEADER] == b"go-example" for r in records)
