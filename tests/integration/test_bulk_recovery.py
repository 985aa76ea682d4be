"""The tables' store reads a changelog back in bulk as Faust would: the last value of a key wins, a tombstone
deletes it, every partition is read to its end (``streams.store``). On the real broker; the worker's restart
through it is covered by the ``kill -9`` exactness test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from adpulse.settings import Settings
from streams.app import make_app
from streams.store import BulkRecoveryStore

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


async def _write(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> list[int]:
    """Write ``(partition, key, value)`` one record per batch, as the worker's changelog producer does (the
    embedded broker's end offset is the last batch's start + 1); returns each record's offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        offsets = []
        for partition, key, value in records:
            sent = await producer.send_and_wait(topic, value, key=key, partition=partition)
            offsets.append(sent.offset)
        return offsets
    finally:
        await producer.stop()


def test_a_changelog_read_back_in_bulk_keeps_the_last_value_of_each_key(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    app = make_app(
        settings.app_id,
        settings.kafka_bootstrap,
        partitions=2,
        web_host="127.0.0.1",
        web_port=6066,  # not served: the app is not started
        datadir=str(tmp_path),
    )
    table = app.Table("t", default=None, partitions=2, key_type=str)
    topic: Any = table.changelog_topic  # Faust's types leave out its codecs
    store = table.data
    assert isinstance(store, BulkRecoveryStore)

    def key(k: str) -> bytes:
        raw: bytes | None = app.serializers.dumps_key(topic.key_type, k, serializer=topic.key_serializer)
        assert raw is not None
        return raw

    def value(v: Any) -> bytes:
        raw: bytes | None = app.serializers.dumps_value(
            topic.value_type, v, serializer=topic.value_serializer
        )
        assert raw is not None
        return raw

    writes: list[tuple[int, bytes, bytes | None]] = [
        (0, key("a"), value({"n": 1})),
        (0, key("b"), value({"n": 2})),
        (0, key("a"), value({"n": 3, "c": {"x": [1, 2]}})),
        (1, key("c"), value({"n": 4})),
        (0, key("b"), None),
        (1, key("d"), value({"n": 5})),
        (1, key("c"), value({"n": 6})),
        (0, key("e"), value({"n": 7})),
        (0, key("e"), None),
        (0, key("e"), value({"n": 8})),
    ]
    name = topic.get_topic_name()
    offsets = asyncio.run(_write(settings.kafka_bootstrap, name, writes))

    read = asyncio.run(store.read_back([TP(name, 0), TP(name, 1)]))

    assert dict(store.data) == {
        "a": {"n": 3, "c": {"x": [1, 2]}},
        "c": {"n": 6},
        "d": {"n": 5},
        "e": {"n": 8},
    }
    # Faust drops the keys of partitions revoked from the worker by this map.
    assert store._key_partition == {"a": 0, "c": 1, "d": 1, "e": 0}  # noqa: SLF001
    assert read == {TP(name, 0): offsets[-1], TP(name, 1): offsets[6]}
