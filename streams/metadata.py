"""What the cluster says about a topic, asked with a metadata request of its own."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient


async def topic_partitions(kafka: dict[str, Any], topic: str) -> list[TopicPartition]:
    """Every partition of ``topic`` as the cluster reports it now (none when the topic does not exist).

    A consumer's ``partitions_for_topic`` knows only the topics it fetched metadata for, and on Kafka that is
    none right after start, ``consumer.topics()`` included (it answers from a metadata copy of its own).
    Tansu answers every metadata request with all topics, which hid this: on Kafka the worker judged no
    budget at all and ``adpulse dlq`` said the DLQ did not exist.
    """
    client = AIOKafkaClient(**kafka)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
    finally:
        await client.close()
    return [TopicPartition(topic, p) for p in sorted(metadata.partitions_for_topic(topic) or ())]
