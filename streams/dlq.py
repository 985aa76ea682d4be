"""The dead-letter queue: every rejected record, with the reason, the original bytes and where it came from.

A DLQ record never exceeds the broker's message limit, whatever was rejected: a copy of a record just
under the limit grows past it (base64, JSON escapes), and a send that fails stops the fold stage. So
an original that does not fit is cut: the record keeps a prefix, says ``"cut": true`` and carries the
original's size and SHA-256, so the whole can still be found and checked in the source topic.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final, Protocol

import orjson

from streams.codec import Rejection

#: The longest key a DLQ record carries; a longer one is cut to this (its size and hash go in the value).
MAX_KEY_BYTES: Final = 1024
#: The longest ``detail`` kept (it may quote the record).
MAX_DETAIL_CHARS: Final = 1000


class RejectedRecord(Protocol):
    """What the DLQ keeps of a source record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def dlq_key(record: RejectedRecord) -> bytes | None:
    """The DLQ record's key: the original one, cut to ``MAX_KEY_BYTES``."""
    key = record.key
    return key if key is None or len(key) <= MAX_KEY_BYTES else key[:MAX_KEY_BYTES]


def dlq_value(record: RejectedRecord, rejection: Rejection, max_bytes: int) -> bytes:
    """The DLQ record's value: JSON with the reason, the source position and the original bytes.

    ``topic/partition/offset`` identifies the source record, so a consumer of the DLQ can drop the
    copies a replay after a crash sends again. The result is at most ``max_bytes`` long (see the module).
    """
    envelope: dict[str, object] = {
        "reason": rejection.reason,
        "detail": rejection.detail[:MAX_DETAIL_CHARS],
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }
    key = record.key
    if key is not None and len(key) > MAX_KEY_BYTES:
        envelope.update(key_cut=True, key_bytes=len(key), key_sha256=hashlib.sha256(key).hexdigest())
    value = record.value
    text: str | None = None
    if value is not None:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if value is None or text is not None:
        whole = orjson.dumps({**envelope, "value": text})
    else:
        whole = orjson.dumps({**envelope, "value": None, "value_b64": base64.b64encode(value).decode()})
    if len(whole) <= max_bytes or value is None:
        return whole
    envelope.update(cut=True, value_bytes=len(value), value_sha256=hashlib.sha256(value).hexdigest())
    if text is not None:
        room = max_bytes - len(orjson.dumps({**envelope, "value": ""}))
        return orjson.dumps({**envelope, "value": _text_prefix(value, room)})
    room = max_bytes - len(orjson.dumps({**envelope, "value": None, "value_b64": ""}))
    prefix = value[: max(room, 0) // 4 * 3]
    return orjson.dumps({**envelope, "value": None, "value_b64": base64.b64encode(prefix).decode()})


def _text_prefix(value: bytes, room: int) -> str:
    """The longest prefix of UTF-8 ``value`` whose JSON string body fits in ``room`` bytes."""

    def text(n: int) -> str:
        # A cut inside a multi-byte character drops that character's first bytes.
        return value[:n].decode("utf-8", "ignore")

    low, high = 0, len(value)
    while low < high:
        mid = (low + high + 1) // 2
        if len(orjson.dumps(text(mid))) - 2 <= room:
            low = mid
        else:
            high = mid - 1
    return text(low)


def dlq_headers(rejection: Rejection) -> list[tuple[str, bytes]]:
    """Headers that let a DLQ consumer filter by reason without parsing the value."""
    return [("adpulse-reason", rejection.reason.encode())]
