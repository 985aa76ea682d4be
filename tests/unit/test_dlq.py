"""streams.dlq: a DLQ record keeps what it can of the original and never outgrows the broker's limit."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import Rejection, decode
from streams.dlq import MAX_KEY_BYTES, dlq_headers, dlq_key, dlq_value
from streams.topics import value_limit

LIMIT = value_limit(1024 * 1024)
OVERSIZED = Rejection("oversized", "record is too large")


@dataclass
class Rec:
    value: bytes | None
    key: bytes | None = b"douyin"
    topic: str = "adpulse.clicks"
    partition: int = 3
    offset: int = 17
    timestamp: int = 1_700_000_000_000


def test_a_small_record_is_kept_whole() -> None:
    value = orjson.dumps({"event_id": "e", "channel": "douyin"})
    doc = orjson.loads(dlq_value(Rec(value), OVERSIZED, LIMIT))
    assert doc == {
        "reason": "oversized",
        "detail": "record is too large",
        "topic": "adpulse.clicks",
        "partition": 3,
        "offset": 17,
        "timestamp": 1_700_000_000_000,
        "channel": "douyin",
        "field": None,
        "problem": None,
        "producer": None,
        "value": value.decode(),
    }
    assert dlq_headers(OVERSIZED) == [("adpulse-reason", b"oversized")]


def test_binary_is_kept_as_base64() -> None:
    doc = orjson.loads(dlq_value(Rec(b"\xff\xfe\x00"), Rejection("not_json", "x"), LIMIT))
    assert doc["value"] is None and base64.b64decode(doc["value_b64"]) == b"\xff\xfe\x00"
    assert orjson.loads(dlq_value(Rec(None), Rejection("invalid", "tombstone"), LIMIT))["value"] is None


def _escape_heavy(size: int) -> bytes:
    """Valid UTF-8 JSON whose every byte JSON-escapes to six (U+0001 → \\u0001)."""
    return b'{"pad": "' + b"\x01" * (size - 11) + b'"}'


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(_escape_heavy(800 * 1024), id="800 KB of control characters (x6 as JSON escapes)"),
        pytest.param(bytes(range(256)) * 3200, id="800 KB of binary (x4/3 as base64)"),
        pytest.param(b'"' * 800 * 1024, id="800 KB of quotes (x2 as JSON escapes)"),
        pytest.param("好".encode() * 348_333, id="1,045,000 bytes of 3-byte characters"),
    ],
)
def test_an_800_kb_record_is_cut_to_fit_with_its_size_and_hash(value: bytes) -> None:
    """A record under Kafka's 1 MB default is rejected as oversized; before, its DLQ copy was over 1 MB
    and the send failed with MessageSizeTooLargeError, stopping the fold stage."""
    assert len(value) < 1024 * 1024
    out = dlq_value(Rec(value), OVERSIZED, LIMIT)
    assert len(out) <= LIMIT
    doc = orjson.loads(out)
    assert doc["cut"] is True
    assert doc["value_bytes"] == len(value)
    assert doc["value_sha256"] == hashlib.sha256(value).hexdigest()
    kept = doc["value"].encode() if doc["value"] is not None else base64.b64decode(doc["value_b64"])
    assert value.startswith(kept)
    assert len(out) > LIMIT - 16  # as much of the original as fits, not a token prefix


def test_a_huge_key_is_cut_and_its_size_and_hash_are_kept() -> None:
    key = b"k" * (MAX_KEY_BYTES * 100)
    record = Rec(b"{}", key=key)
    assert dlq_key(record) == key[:MAX_KEY_BYTES]
    doc = orjson.loads(dlq_value(record, OVERSIZED, LIMIT))
    assert doc["key_cut"] is True
    assert (doc["key_bytes"], doc["key_sha256"]) == (len(key), hashlib.sha256(key).hexdigest())
    assert dlq_key(Rec(b"{}", key=None)) is None


def test_a_long_detail_is_cut() -> None:
    doc = orjson.loads(dlq_value(Rec(b"{}"), Rejection("invalid", "x" * 100_000), LIMIT))
    assert len(doc["detail"]) <= 1000


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=8000) | st.text(max_size=4000).map(str.encode),
    st.integers(min_value=1000, max_value=6000),
)
def test_never_over_the_limit_and_always_a_prefix(value: bytes, limit: int) -> None:
    rejection = decode("clicks", value, "CNY", 10)
    assert isinstance(rejection, Rejection)
    out = dlq_value(Rec(value), rejection, limit)
    assert len(out) <= limit
    doc = orjson.loads(out)
    kept = doc["value"].encode() if doc["value"] is not None else base64.b64decode(doc["value_b64"])
    if doc.get("cut"):
        assert value.startswith(kept) and len(kept) < len(value)
    else:
        assert kept == value
