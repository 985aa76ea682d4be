"""Topic specifications: the public topics of CONTRACT.md §1 and adpulse's internal ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

#: Short names of the topics trackers write to, in the order the fold stage reads them.
SOURCE_TOPICS: tuple[str, ...] = ("clicks", "orders", "spend")
#: What a message adpulse writes leaves under the broker's limit for its key, headers and framing.
HEADROOM_BYTES: Final = 8 * 1024


def value_limit(max_message_bytes: int) -> int:
    """The largest value adpulse writes to a broker that takes messages of up to ``max_message_bytes``."""
    return max_message_bytes - HEADROOM_BYTES


def topic_of(doc: dict[str, Any]) -> str | None:
    """The source topic of an event read outside Kafka (a JSONL line): its ``topic`` field if any (full or
    short name), else its shape: ``type`` means clicks, ``order_id`` or ``amount`` orders, ``cost`` spend."""
    topic = doc.get("topic")
    if isinstance(topic, str):
        short = topic.rsplit(".", 1)[-1]
        return short if short in SOURCE_TOPICS else None
    if "type" in doc:
        return "clicks"
    if "order_id" in doc or "amount" in doc:
        return "orders"
    if "cost" in doc:
        return "spend"
    return None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic adpulse creates: short name, partition count and explicit configs.

    Configs are always set explicitly at creation: the embedded broker reports only those
    (DescribeConfigs), and real Kafka clusters then behave the same way.
    """

    short: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    internal: bool = False


def topic_specs(partitions: int, retention_ms: int = 7 * 86400 * 1000) -> list[TopicSpec]:
    """Every topic adpulse needs, with ``partitions`` for the event and internal topics."""
    retained = {"cleanup.policy": "delete", "retention.ms": str(retention_ms)}
    return [
        *(TopicSpec(name, partitions, dict(retained)) for name in SOURCE_TOPICS),
        TopicSpec("budgets", 1, {"cleanup.policy": "compact"}),
        TopicSpec("dlq", partitions, dict(retained)),
        # Internal: the fold stage's partial aggregates, keyed by channel, consumed by the Faust agents.
        TopicSpec("partials", partitions, dict(retained), internal=True),
    ]
