"""The dead-letter queue: every rejected record, with the reason, the original bytes and where it came from.

A DLQ record never exceeds the broker's message limit, whatever was rejected: a copy of a record just
under the limit grows past it (base64, JSON escapes), and a send that fails stops the fold stage. So
an original that does not fit is cut: the record keeps a prefix, says ``"cut": true`` and carries the
original's size and SHA-256, so the whole can still be found and checked in the source topic.

docs/events.md ("The DLQ record") documents the record; ``DlqRecord`` is the same in code, and the JSON
Schema in docs/schemas/dlq.schema.json is generated from it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Final, Protocol

import orjson
from pydantic import BaseModel, ConfigDict

from streams.codec import Rejection

#: The longest key a DLQ record carries; a longer one is cut to this (its size and hash go in the value).
MAX_KEY_BYTES: Final = 1024
#: The longest ``detail`` kept (it may quote the record).
MAX_DETAIL_CHARS: Final = 1000
#: The Kafka header a producer may set to name itself (a client id, a host, an SDK version); the DLQ
#: keeps it so that ``adpulse dlq`` can count rejects per producer. Without it the key stands in.
PRODUCER_HEADER: Final = "adpulse-producer"
#: A reject whose channel is neither in a usable ``channel`` field nor in the key.
UNKNOWN_CHANNEL: Final = "(unknown)"
_MAX_CHANNEL: Final = 64
_MAX_PRODUCER: Final = 128


class RejectedRecord(Protocol):
    """What the DLQ keeps of a source record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class DlqRecord(BaseModel):
    """The value of a record on the DLQ topic (JSON; the key is the original record's key)."""

    model_config = ConfigDict(extra="allow", frozen=True, use_attribute_docstrings=True)

    reason: str
    """Why the record was not counted: a stable code (docs/events.md, "Rejects")."""
    detail: str
    """What exactly was wrong, for people (at most 1,000 characters)."""
    topic: str
    """The source topic (full name)."""
    partition: int
    """The source partition."""
    offset: int
    """The source offset: topic, partition and offset identify the record (a replay may send it again)."""
    timestamp: int
    """The source record's Kafka timestamp (epoch ms; the producer's CreateTime on most topics)."""
    value: str | None
    """The original value as text, or null when it was no UTF-8 (then see value_b64) or a tombstone."""
    value_b64: str | None = None
    """The original bytes, base64, when they were not UTF-8."""
    cut: bool = False
    """The original did not fit the broker's limit: value (or value_b64) holds only its beginning."""
    value_bytes: int | None = None
    """The original value's size in bytes, when it was cut."""
    value_sha256: str | None = None
    """The original value's SHA-256 (hex), when it was cut."""
    key_cut: bool = False
    """The original key was longer than 1 KiB: the DLQ record's key holds its first KiB."""
    key_bytes: int | None = None
    """The original key's size in bytes, when it was cut."""
    key_sha256: str | None = None
    """The original key's SHA-256 (hex), when it was cut."""
    channel: str | None = None
    """The channel the record was counted against: its channel field if usable, else its key."""
    field: str | None = None
    """The first offending field, where one field is to blame."""
    problem: str | None = None
    """How that field is wrong: missing or invalid."""
    producer: str | None = None
    """The producer, from the record's adpulse-producer header, if it had one."""


def _text(raw: object, longest: int) -> str | None:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return raw if isinstance(raw, str) and 0 < len(raw) <= longest and raw.isprintable() else None


def record_channel(key: bytes | None, value: bytes | None) -> str:
    """The channel a record counts against: a usable ``channel`` field, else the key, else
    ``UNKNOWN_CHANNEL``. For an accepted record this is always its ``channel`` field."""
    if value is not None:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            channel = _text(doc.get("channel"), _MAX_CHANNEL)
            if channel is not None:
                return channel
    return _text(key, _MAX_CHANNEL) or UNKNOWN_CHANNEL


def record_producer(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The producer a record names in its ``adpulse-producer`` header, if any."""
    for name, raw in headers:
        if name == PRODUCER_HEADER:
            return _text(raw, _MAX_PRODUCER)
    return None


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
        "channel": record_channel(record.key, record.value),
        "field": rejection.field,
        "problem": rejection.problem,
        # Headers are optional on the protocol: aiokafka's records have them, the fold's tests' do not.
        "producer": record_producer(getattr(record, "headers", None) or ()),
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
