"""The DLQ record's attribution fields and `adpulse dlq`'s counting and pointing, without a broker."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from adpulse.dlq_cli import DlqSummary, parse_reject, point_at
from streams.codec import Rejection, decode
from streams.dlq import PRODUCER_HEADER, UNKNOWN_CHANNEL, DlqRecord, dlq_value, record_channel


@dataclass
class Rec:
    topic: str = "adpulse.orders"
    partition: int = 1
    offset: int = 7
    timestamp: int = 1772431530000
    key: bytes | None = b"taobao"
    value: bytes | None = b""
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def rejected(value: bytes, **kw: object) -> tuple[Rec, dict[str, object]]:
    record = Rec(value=value, **kw)  # type: ignore[arg-type]
    rejection = decode("orders", value, "CNY", 65536)
    assert isinstance(rejection, Rejection)
    return record, orjson.loads(dlq_value(record, rejection, 1 << 20))


def test_the_dlq_record_names_field_problem_channel_and_producer() -> None:
    value = b'{"event_id":"o","ts":1772431530000,"channel":"tmall","order_id":"1","amount":-2}'
    _, doc = rejected(value, headers=[(PRODUCER_HEADER, b"order-svc-3"), ("other", b"x")])
    assert (doc["reason"], doc["field"], doc["problem"]) == ("invalid", "amount", "invalid")
    assert doc["channel"] == "tmall" and doc["producer"] == "order-svc-3"
    DlqRecord.model_validate(doc)
    _, missing = rejected(b'{"event_id":"o","ts":1772431530000,"channel":"tmall","order_id":"1"}')
    assert (missing["field"], missing["problem"], missing["producer"]) == ("amount", "missing", None)


def test_a_reject_counts_against_its_channel_field_else_its_key_else_unknown() -> None:
    assert record_channel(b"taobao", b'{"channel":"tmall"}') == "tmall"
    assert record_channel(b"taobao", b'{"channel":42}') == "taobao"
    assert record_channel(b"taobao", b"{not json") == "taobao"
    assert record_channel(None, b'{"channel":""}') == UNKNOWN_CHANNEL
    assert record_channel(b"\xff\xfe", None) == UNKNOWN_CHANNEL
    assert record_channel(b"a\nb", None) == UNKNOWN_CHANNEL


def test_the_offending_field_is_marked_in_the_original() -> None:
    value = '{"event_id":"o","ts":1772431530000,"channel":"tmall","order_id":"1","amount":-2,"x":{"a":[1,2]}}'
    record = DlqRecord(
        reason="invalid",
        detail="",
        topic="t",
        partition=0,
        offset=0,
        timestamp=0,
        value=value,
        field="amount",
    )
    assert '»"amount":-2«,"x"' in point_at(record, 60)
    nested = record.model_copy(update={"field": "x"})
    assert point_at(nested, 60).endswith('»"x":{"a":[1,2]}«}')
    missing = record.model_copy(update={"field": "cost", "problem": "missing"})
    assert point_at(missing, 60).endswith("(no 'cost' field)")
    assert point_at(record.model_copy(update={"value": None}), 60) == "(no value: a tombstone)"


def test_the_summary_counts_a_replayed_reject_once_and_filters() -> None:
    value = b'{"event_id":"o","ts":1772431530000,"channel":"tmall","order_id":"1","amount":-2}'
    _, doc = rejected(value)
    reject = parse_reject(b"taobao", orjson.dumps(doc))
    assert reject is not None and reject.producer == "key taobao"
    summary = DlqSummary()
    assert summary.add(reject) and not summary.add(reject)
    assert (summary.total, summary.copies, dict(summary.by_channel)) == (1, 1, {"tmall": 1})
    assert not DlqSummary(channels=frozenset({"douyin"})).add(reject)
    assert not DlqSummary(reasons=frozenset({"late"})).add(reject)
    assert parse_reject(None, b'{"not": "a dlq record"}') is None
