"""The dead-letter queue: every rejected record with its reason, its original bytes and where it came from."""

from __future__ import annotations

import base64
from typing import Protocol

import orjson

from streams.codec import Rejection


class RejectedRecord(Protocol):
    """What the DLQ keeps of a source record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def dlq_value(record: RejectedRecord, rejection: Rejection) -> bytes:
    """The DLQ record's value: JSON with the reason, the source position and the original bytes.

    ``topic/partition/offset`` identifies the source record, so a consumer of the DLQ can drop the
    copies a replay after a crash sends again.
    """
    value = record.value
    try:
        original: dict[str, str | None] = {"value": value.decode("utf-8") if value is not None else None}
    except UnicodeDecodeError:
        original = {"value": None, "value_b64": base64.b64encode(value or b"").decode("ascii")}
    return orjson.dumps(
        {
            "reason": rejection.reason,
            "detail": rejection.detail,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            **original,
        }
    )


def dlq_headers(rejection: Rejection) -> list[tuple[str, bytes]]:
    """Headers that let a DLQ consumer filter by reason without parsing the value."""
    return [("adpulse-reason", rejection.reason.encode())]
