"""What the cluster says about a topic, asked with a metadata request of its own."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient

#: How old the metadata of adpulse's group consumers (Faust's and the fold stage's) may get before they ask
#: again; the clients' default is five minutes. The group leader assigns partitions from its metadata, and
#: only a change seen in a later refresh makes the group rebalance again: an assignment made from metadata
#: that lacked a topic (a broker restarting, a topic just created) left that topic's partitions idle until
#: then. A metadata request every 30 s per consumer costs nothing next to the traffic.
GROUP_METADATA_MAX_AGE_MS = 30_000


async def topic_partitions(kafka: dict[str, Any], topic: str) -> list[TopicPartition]:
    """Every partition of ``topic`` as the cluster reports it now (none when the topic does not exist).

    A consumer's ``partitions_for_topic`` knows only the topics it fetched metadata for, and on Kafka that is
    none right after start, ``consumer.topics()`` included (it answers from a metadata copy of its own).
    Tansu answers every metadata request with all topics, which hid this: on Kafka the worker judged no
    budget at all and ``adpulse dlq`` said the DLQ did not exist.
    """
    # A topic's partitions are numbered 0 to its count - 1.
    return [TopicPartition(topic, p) for p in range((await partition_counts(kafka)).get(topic, 0))]


async def partition_counts(kafka: dict[str, Any]) -> dict[str, int]:
    """Topic name → partition count of every topic the cluster reports now, from one metadata request."""
    client = AIOKafkaClient(**kafka)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
    finally:
        await client.close()
    return {topic: len(metadata.partitions_for_topic(topic) or ()) for topic in metadata.topics()}
