"""Malformed records: a tracker document spoiled in one of the ways CONTRACT.md §1 rejects. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

_REQUIRED_FIELDS = {
    "clicks": ("event_id", "ts", "channel", "type"),
    "orders": ("event_id", "ts", "channel", "order_id", "amount"),
    "spend": ("event_id", "ts", "channel", "cost"),
}
_MISTYPED = {
    "clicks": (("ts", "yesterday"), ("channel", 42), ("event_id", ""), ("count", 0)),
    "orders": (("ts", "yesterday"), ("channel", 42), ("event_id", ""), ("amount", "12.50")),
    "spend": (("ts", "yesterday"), ("channel", 42), ("event_id", ""), ("cost", "3.20")),
}
_ANY_BAD = ("not_json", "missing_field", "mistyped_field", "future_ts", "oversized")
_BAD_KINDS = {
    "clicks": (*_ANY_BAD, "unknown_type"),
    "orders": (*_ANY_BAD, "negative_amount", "wrong_currency"),
    "spend": (*_ANY_BAD, "negative_amount", "wrong_currency"),
}
_MONEY_FIELD = {"orders": "amount", "spend": "cost"}
_FUTURE_MS = 366 * 86_400_000


@dataclass(frozen=True, slots=True)
class Limits:
    """What the pipeline under test accepts: its currency, its largest record, how far ``ts`` may lead."""

    currency: str
    max_record_bytes: int
    max_future_skew_ms: int


def malformed(
    rng: random.Random, topic: str, doc: dict[str, Any], sent_ms: int, limits: Limits
) -> tuple[str, bytes]:
    """Spoil ``doc`` in one way the contract rejects; returns (reason, bytes)."""
    reason = rng.choice(_BAD_KINDS[topic])
    if reason == "not_json":
        data = orjson.dumps(doc)
        return reason, data[: len(data) // 2]  # a truncated object never parses
    if reason == "missing_field":
        del doc[rng.choice(_REQUIRED_FIELDS[topic])]
    elif reason == "mistyped_field":
        name, value = rng.choice(_MISTYPED[topic])
        doc[name] = value
    elif reason == "unknown_type":
        doc["type"] = "hover"
    elif reason == "negative_amount":
        doc[_MONEY_FIELD[topic]] = -abs(doc[_MONEY_FIELD[topic]]) - 0.01
    elif reason == "wrong_currency":
        doc["currency"] = "USD" if limits.currency != "USD" else "EUR"
    elif reason == "future_ts":
        # Far enough ahead to be rejected whether the pipeline compares with the (simulated) send time or
        # its own clock, for backfills up to a year old.
        doc["ts"] = sent_ms + limits.max_future_skew_ms + _FUTURE_MS
    else:
        doc["padding"] = "x" * (limits.max_record_bytes + 1024)
    return reason, orjson.dumps(doc)
