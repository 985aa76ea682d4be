"""Poison records on the real broker and Redis: none of them stops the worker, before or after a restart,
each lands in the DLQ with its reason and under the broker's limit, and the good records around them are
counted exactly.

The poison: a channel holding U+001F (before: the bucket agent raised on every tick and again after every
recovery), a record of 800 KB (before: its DLQ copy was over 1 MB and the send stopped the fold stage), a
microsecond ``ts`` with a matching CreateTime (before: the fold's flush raised in the calendar), 3,000
campaigns of one channel in one block (before: a partial over 1 MB, and no campaign cap), and two
partials messages that the fold stage never sends (a channel key holding U+001F, and garbage).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import InvalidTimestampError

from adpulse.metrics_page import metric_sum
from adpulse.settings import Settings
from adpulse.stack import free_port
from streams.events import OVERFLOW_CAMPAIGN
from streams.partitioning import partition_of
from streams.topics import value_limit
from tests.support.dataset import SLOTS, Dataset, build
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

N_GOOD = 20_000
N_WIDE = 3_000
CAP = 2_000
WIDE = "wide"


def _start_ms() -> int:
    """Minutes 10-20 of the hour two hours ago: every window can close at once."""
    hour = int(time.time()) // 3600 * 3600 - 2 * 3600
    return (hour + 600) * 1000


def _wide_campaign(i: int) -> str:
    return f"{i:04d}-" + "长" * 38  # 119 bytes: 2,000 of them make a partial of > 1 MB


def _wide_records(start_ms: int) -> list[bytes]:
    ts = start_ms - 60_000  # the minute before the good records: never makes one of them late
    return [
        orjson.dumps(
            {
                "event_id": f"wide-{i}",
                "ts": ts + i,
                "channel": WIDE,
                "campaign": _wide_campaign(i),
                "type": "click",
            }
        )
        for i in range(N_WIDE)
    ]


HUGE = b'{"event_id": "p-huge", "pad": "' + b"\x01" * (800 * 1024) + b'"}'


async def _send_poison(
    producer: AIOKafkaProducer, settings: Settings, value: bytes, key: bytes, timestamp: int | None
) -> asyncio.Future[Any]:
    """Send one poison record; a record time the broker refuses is sent again with the producer's time.

    Kafka (since 3.6) refuses a CreateTime more than an hour ahead (``log.message.timestamp.after.max.ms``):
    a timestamp in microseconds never reaches a consumer there, the ``ts`` field in microseconds still does.
    Tansu stores any timestamp. The broker refuses a whole record batch, so that one goes alone.
    """
    topic = settings.topic("clicks")
    if timestamp is None:
        delivery: asyncio.Future[Any] = await producer.send(topic, value, key=key)
        return delivery
    await producer.flush()
    delivery = await producer.send(topic, value, key=key, timestamp_ms=timestamp)
    try:
        await delivery
    except InvalidTimestampError:
        delivery = await producer.send(topic, value, key=key)
    return delivery


async def _send_all(settings: Settings, data: Dataset, start_ms: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=10, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        # The wide channel first: its 3,000 records sit in the first block of their partition.
        for value in _wide_records(start_ms):
            await producer.send(settings.topic("clicks"), value, key=WIDE.encode())
        await producer.flush()
        micro_ts = start_ms * 1000
        poison = [
            (
                orjson.dumps({"event_id": "p-sep", "ts": start_ms, "channel": "dou\x1fyin", "type": "click"}),
                b"x",
                None,
            ),
            (HUGE, b"douyin", None),
            (
                orjson.dumps({"event_id": "p-micro", "ts": micro_ts, "channel": "douyin", "type": "click"}),
                b"douyin",
                micro_ts,
            ),
        ]
        futures = []
        third = len(data.records) // 3
        for i, record in enumerate(data.records):
            if i % third == 0 and poison:  # poison among the good records, not only at the edges
                futures.append(await _send_poison(producer, settings, *poison.pop(0)))
            futures.append(await producer.send(settings.topic(record.topic), record.value, key=record.key))
        for value, key, timestamp in poison:
            futures.append(await _send_poison(producer, settings, value, key, timestamp))
        # Partials no fold stage sends: a channel key holding the table's key separator, and garbage.
        fake = {
            "src": "clicks/0",
            "blk": 0,
            "upto": 0,
            "rows": [["1m", start_ms // 1000, "-", 1, 0, 0, 0, 0, 0, 0, 0]],
        }
        evil = "evil\x1fchannel"
        partitions = settings.partitions
        futures.append(
            await producer.send(
                settings.topic("partials"),
                orjson.dumps(fake),
                key=evil.encode(),
                partition=partition_of(evil, partitions),
            )
        )
        futures.append(await producer.send(settings.topic("partials"), b"\x00garbage", key=b"x", partition=0))
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()


async def _read_topic(settings: Settings, short: str) -> list[tuple[bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(
        settings.topic(short),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes]] = []
    try:
        empty = 0
        while empty < 3:
            batch = await consumer.getmany(timeout_ms=1000)
            got = [(r.key, r.value) for rs in batch.values() for r in rs]
            records.extend(got)
            empty = 0 if got else empty + 1
    finally:
        await consumer.stop()
    return records


Truth = dict[tuple[str, str, str, int], list[int]]


def _closed(settings: Settings) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        rows = {}
        for window in ("1m", "1h"):
            for key in client.scan_iter(f"{settings.redis_prefix}:windows:{window}:*"):
                for field, value in client.hgetall(key).items():
                    channel, campaign, start = field.decode().split("|")  # type: ignore[union-attr]
                    rows[(channel, campaign, window, int(start))] = orjson.loads(value)
        return rows
    finally:
        client.close()


def _vector(row: dict[str, Any]) -> list[int]:
    return [round(row[name] * 1_000_000) if name in ("gmv", "spend") else int(row[name]) for name in SLOTS]


def _expected(data: Dataset, start_ms: int) -> Truth:
    """The good records' truth, plus the wide channel: 2,000 campaigns of its own, the rest under (other)."""
    truth = {key: list(counts) for key, counts in data.truth.items()}
    minute = (start_ms - 60_000) // 1000
    hour = minute - minute % 3600
    wide: dict[tuple[str, str, str, int], list[int]] = defaultdict(lambda: [0] * len(SLOTS))
    for i in range(N_WIDE):
        campaign = _wide_campaign(i) if i < CAP else OVERFLOW_CAMPAIGN
        for window, start in (("1m", minute), ("1h", hour)):
            for camp in (campaign, "-"):
                wide[(WIDE, camp, window, start)][SLOTS.index("clicks")] += 1
    truth.update(wide)
    return truth


def _problems(settings: Settings, truth: Truth) -> list[str]:
    got = _closed(settings)
    problems = [
        f"{key}: got {_vector(got[key]) if key in got else None}, expected {expected}"
        for key, expected in truth.items()
        if key not in got or _vector(got[key]) != expected
    ]
    problems += [
        f"unexpected {key}: {_vector(row)}"
        for key, row in got.items()
        if key not in truth and any(_vector(row))
    ]
    return problems


def _wait_exact(settings: Settings, truth: Truth, worker: WorkerProcess) -> None:
    last: list[str] = []

    def exact() -> bool:
        nonlocal last
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        last = _problems(settings, truth)
        return not last

    try:
        wait_for(exact, 180, "every closed 1m and 1h window to equal the truth", interval_s=2.0)
    except AssertionError:
        raise AssertionError(f"{len(last)} windows differ, e.g. {last[:5]}\n{worker.log_tail(40)}") from None


def _ticking(settings: Settings) -> float:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.hget(f"{settings.redis_prefix}:kpis:meta", "updated_at")
        return float(raw) if raw is not None else 0.0
    finally:
        client.close()


def test_poison_records_never_stop_the_worker_and_the_good_ones_count_exactly(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        grace_s=60.0,
        flush_interval_s=0.3,
        tick_s=0.5,
        idle_partition_s=3.0,
        partitions=4,
        max_campaigns_per_channel=CAP,
        web_port=free_port(),
    )
    start_ms = _start_ms()
    data = build(N_GOOD, start_ms, 10 * 60_000)
    truth = _expected(data, start_ms)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        asyncio.run(_send_all(settings, data, start_ms))
        total = N_GOOD + N_WIDE + 3
        wait_for(
            lambda: metric_sum(worker.metrics(), "adpulse_events_total") >= total,
            120,
            f"the worker to account for all {total} records",
        )
        _wait_exact(settings, truth, worker)
        # A worker judging thousands of freshly closed campaign windows may miss a few scrapes.
        text = wait_for(worker.metrics, 120, "the worker's /metrics")
        assert isinstance(text, str)
        assert metric_sum(text, "adpulse_events_total") == total
        assert metric_sum(text, "adpulse_dlq_records_total", reason="bad_name") == 1
        assert metric_sum(text, "adpulse_dlq_records_total", reason="oversized") == 1
        assert metric_sum(text, "adpulse_campaign_overflow_events_total") == N_WIDE - CAP
        assert metric_sum(text, "adpulse_quarantined_total", where="message") == 2
        assert "more than 2000 campaigns" in worker.log_path.read_text()

        # A restart recovers the table from its changelog (where nothing poisonous got in) and ticks on.
        assert worker.stop() is not None
        worker = WorkerProcess(settings, tmp_path / "worker-restarted.log").start()
        worker.wait_ready()
        before = time.time()
        wait_for(lambda: _ticking(settings) > before + 2, 90, "snapshots after the restart")
        _wait_exact(settings, truth, worker)
        assert worker.alive()
    finally:
        worker.stop()

    dlq = asyncio.run(_read_topic(settings, "dlq"))
    limit = settings.max_message_bytes
    assert all(len(value) + len(key or b"") < limit for key, value in dlq)
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _key, value in dlq:
        doc = orjson.loads(value)
        by_reason[doc["reason"]].append(doc)
    (bad_name,) = {d["offset"]: d for d in by_reason["bad_name"]}.values()  # a replay may send a copy again
    assert "U+001F" in bad_name["detail"] and bad_name["detail"].startswith("channel")
    (huge,) = {d["offset"]: d for d in by_reason["oversized"]}.values()
    assert huge["cut"] is True and huge["value_bytes"] == len(HUGE) and len(huge["value_sha256"]) == 64
    micro = [d for d in by_reason["invalid"] if "p-micro" in (d["value"] or "")]
    assert micro and "2100" in micro[0]["detail"]

    # The wide channel's block went out in pieces, each under the broker's limit.
    partials = asyncio.run(_read_topic(settings, "partials"))
    pieces: Counter[tuple[str, int, int]] = Counter()
    for key, value in partials:
        if key == WIDE.encode():
            assert len(value) <= value_limit(limit)
            message = orjson.loads(value)
            pieces[(message["src"], message["blk"], message["upto"])] += 1
    assert max(pieces.values()) > 1, pieces
