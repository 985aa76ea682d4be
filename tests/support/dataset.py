"""A tracker dataset with its exact ground truth, built independently of the pipeline's code.

The oracle mirrors the contract, not the implementation: a record counts once if it is valid, its
``event_id`` was not seen before on its partition, and its 1-minute window had not closed (window end
+ grace ≤ the partition's watermark, the newest event time accepted there) when it arrived.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from aiokafka.partitioner import murmur2

SLOTS = ("impressions", "clicks", "visits", "carts", "orders", "gmv", "spend")


def partition_of(channel: str, partitions: int) -> int:
    """aiokafka's (and Java's) default partitioner for a channel key."""
    hashed: int = murmur2(channel.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def micros(amount: str) -> int:
    return int(Decimal(amount) * 1_000_000)


@dataclass
class Record:
    topic: str  # short name
    key: bytes
    value: bytes


@dataclass
class Dataset:
    records: list[Record] = field(default_factory=list)
    # (channel, campaign, window, start_s) -> counts; campaign "-" is the channel level.
    truth: dict[tuple[str, str, str, int], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0] * 7)
    )
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def count(self, channel: str, campaign: str, ts_ms: int, slot: int, amount: int) -> None:
        minute = ts_ms // 1000 - (ts_ms // 1000) % 60
        hour = ts_ms // 1000 - (ts_ms // 1000) % 3600  # Asia/Shanghai hours align with UTC hours
        for camp in (campaign, "-"):
            self.truth[(channel, camp, "1m", minute)][slot] += amount
            self.truth[(channel, camp, "1h", hour)][slot] += amount


def build(
    n: int,
    start_ms: int,
    span_ms: int,
    *,
    channels: int = 10,
    campaigns: int = 50,
    partitions: int = 4,
    grace_ms: int = 60_000,
    seed: int = 7,
    malformed: float = 0.01,
    duplicates: float = 0.01,
    late_within: float = 0.02,
    late_beyond: float = 0.005,
) -> Dataset:
    """``n`` records over ``[start_ms, start_ms + span_ms)``, given shares of them bad, duplicate, late."""
    rng = random.Random(seed)
    names = [f"ch{c:02d}" for c in range(channels)]
    camps = {ch: [f"{ch}-camp{k}" for k in range(campaigns // channels)] for ch in names}
    data = Dataset()
    # Watermarks are per topic-partition, as the pipeline keeps them.
    watermark: dict[tuple[str, int], int] = defaultdict(int)
    recent: dict[int, list[Record]] = defaultdict(list)
    serial = 0
    for i in range(n):
        channel = rng.choice(names)
        campaign = rng.choice(camps[channel])
        p = partition_of(channel, partitions)
        key = channel.encode()
        roll = rng.random()
        if roll < malformed:
            data.records.append(Record("clicks", key, _malformed(rng, channel)))
            data.kinds["invalid"] += 1
            continue
        roll -= malformed
        if roll < duplicates and recent[p]:
            data.records.append(rng.choice(recent[p][-50:]))
            data.kinds["duplicate"] += 1
            continue
        roll -= duplicates
        topic = rng.choices(("clicks", "orders", "spend"), weights=(85, 7.5, 7.5))[0]
        mark = watermark[(topic, p)]
        ts = start_ms + span_ms * i // n + rng.randint(-2000, 2000)
        if roll < late_within and mark:
            ts = mark - rng.randint(5_000, 30_000)
        elif roll < late_within + late_beyond and mark:
            ts = mark - rng.randint(3 * grace_ms, 10 * grace_ms)
        serial += 1
        record, slots = _event(rng, topic, serial, channel, campaign, ts)
        data.records.append(record)
        minute_end = ts - ts % 60_000 + 60_000
        if minute_end + grace_ms <= mark:
            data.kinds["late"] += 1
            continue
        data.kinds["late_within_grace" if ts < mark else "on_time"] += 1
        watermark[(topic, p)] = max(mark, ts)
        for slot, amount in slots:
            data.count(channel, campaign, ts, slot, amount)
        recent[p].append(record)
    return data


def _event(
    rng: random.Random, topic: str, serial: int, channel: str, campaign: str, ts: int
) -> tuple[Record, list[tuple[int, int]]]:
    base = {"event_id": f"ev-{serial}", "ts": ts, "channel": channel, "campaign": campaign}
    if topic == "clicks":
        kind = rng.choices(["impression", "click", "visit", "cart"], weights=[60, 25, 10, 5])[0]
        count = rng.randint(1, 40) if kind == "impression" else 1
        value = {**base, "type": kind, **({"count": count} if count > 1 or rng.random() < 0.5 else {})}
        return Record("clicks", channel.encode(), orjson.dumps(value)), [(SLOTS.index(kind + "s"), count)]
    if topic == "orders":
        amount = f"{rng.randint(50, 900)}.{rng.randint(0, 99):02d}"
        value = {
            **base,
            "order_id": f"o-{serial}",
            "amount": float(amount),
            "new_customer": rng.random() < 0.3,
        }
        return Record("orders", channel.encode(), orjson.dumps(value)), [(4, 1), (5, micros(amount))]
    cost = f"{rng.randint(0, 60)}.{rng.randint(0, 99):02d}"
    value = {**base, "cost": float(cost), "currency": "CNY"}
    return Record("spend", channel.encode(), orjson.dumps(value)), [(6, micros(cost))]


def _malformed(rng: random.Random, channel: str) -> bytes:
    return rng.choice(
        [
            b"not json at all",
            b'{"event_id": "x", "ts": 1, ',
            orjson.dumps({"ts": 1_790_000_000_000, "channel": channel, "type": "click"}),  # no event_id
            orjson.dumps(
                {"event_id": "bad-type", "ts": 1_790_000_000_000, "channel": channel, "type": "scroll"}
            ),
            orjson.dumps({"event_id": "secs", "ts": 1_790_000_000, "channel": channel, "type": "click"}),
            orjson.dumps([1, 2, 3]),
        ]
    )
