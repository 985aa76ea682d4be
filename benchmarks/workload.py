"""The benchmark's input: a deterministic mix of tracker records and the totals a correct worker must report.

Pure (no I/O). Event times are spread over the ``span_s`` before ``now_ms`` in send order with a little
jitter, so a correct pipeline classifies nothing as late; duplicates re-send a recent valid record of the
same topic and key (same partition, well inside the dedup horizon); malformed records cover the DLQ reasons
that reach both the hand-written check and the pydantic referee.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import orjson

CHANNELS: tuple[str, ...] = (
    "douyin",
    "taobao",
    "wechat",
    "xiaohongshu",
    "baidu",
    "jd",
    "kuaishou",
    "weibo",
    "bilibili",
    "pinduoduo",
)
CAMPAIGNS_PER_CHANNEL = 5
#: Channel weights: a few big channels and a long tail, as real traffic.
CHANNEL_WEIGHTS: tuple[float, ...] = (20, 18, 14, 12, 9, 8, 7, 5, 4, 3)
REGIONS: tuple[str, ...] = ("beijing", "shanghai", "guangdong", "zhejiang", "jiangsu", "sichuan")
CLICK_TYPES: tuple[tuple[str, float], ...] = (
    ("impression", 0.80),
    ("click", 0.14),
    ("visit", 0.04),
    ("cart", 0.02),
)
MICROS = 1_000_000
#: Counter names compared against the worker's Redis rows (money in micro-units, exact).
CHECKED: tuple[str, ...] = ("impressions", "clicks", "visits", "carts", "orders", "gmv", "spend")
_CLICK_FIELD = {"impression": "impressions", "click": "clicks", "visit": "visits", "cart": "carts"}

#: One record to produce: (topic short name, key, value).
Record = tuple[str, bytes, bytes]


@dataclass(frozen=True, slots=True)
class Mix:
    """Shares of the record kinds; the rest of the records are valid ``clicks``."""

    orders: float = 0.02
    spend: float = 0.02
    malformed: float = 0.01
    duplicate: float = 0.01
    span_s: float = 1800.0
    jitter_ms: int = 1000


@dataclass(slots=True)
class Expected:
    """What a correct worker reports for the preloaded records."""

    outcomes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("accepted", "invalid", "late", "duplicate"), 0)
    )
    by_topic: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("clicks", "orders", "spend"), 0))
    #: channel -> counter name -> total (gmv and spend in integer micro-units).
    totals: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, channel: str, name: str, amount: int) -> None:
        row = self.totals.setdefault(channel, dict.fromkeys(CHECKED, 0))
        row[name] += amount


def numbered_channels(n: int) -> tuple[str, ...]:
    """``n`` channel names ``ch0000``… (for workloads wider than the ten named channels)."""
    return tuple(f"ch{i:04d}" for i in range(n))


def generate(
    n: int,
    now_ms: int,
    seed: int = 7,
    mix: Mix = Mix(),
    channels: Sequence[str] = CHANNELS,
    weights: Sequence[float] = CHANNEL_WEIGHTS,
) -> tuple[list[Record], Expected]:
    """``n`` records in send order and the totals they must produce, over ``channels`` drawn with
    ``weights``."""
    if len(channels) != len(weights):
        raise ValueError(f"{len(channels)} channels but {len(weights)} weights")
    rng = random.Random(seed)
    expected = Expected()
    campaigns = {ch: [f"{ch}-c{i}" for i in range(CAMPAIGNS_PER_CHANNEL)] for ch in channels}
    type_names = [name for name, _ in CLICK_TYPES]
    type_weights = [weight for _, weight in CLICK_TYPES]
    start_ms = now_ms - int(mix.span_s * 1000)
    step_ms = mix.span_s * 1000 / max(n, 1)
    recent: deque[Record] = deque(maxlen=64)
    records: list[Record] = []
    # orjson's bytes keep a ~4 KiB allocation each; a right-sized copy keeps 500k records at ~100 MB, not
    # 2 GB.
    dumps = _compact_dumps
    channel_cum = list(accumulate(weights))
    type_cum = list(accumulate(type_weights))
    for i in range(n):
        channel = rng.choices(channels, cum_weights=channel_cum)[0]
        key = channel.encode()
        roll = rng.random()
        if roll < mix.duplicate and recent:
            record = recent[rng.randrange(len(recent))]
            records.append(record)
            expected.outcomes["duplicate"] += 1
            expected.by_topic[record[0]] += 1
            continue
        ts = min(now_ms - 1, int(start_ms + i * step_ms) + rng.randint(-mix.jitter_ms, mix.jitter_ms))
        topic_roll = rng.random()
        topic = (
            "orders"
            if topic_roll < mix.orders
            else "spend"
            if topic_roll < mix.orders + mix.spend
            else "clicks"
        )
        doc: dict[str, object] = {
            "event_id": f"e{seed}-{i:08x}",
            "ts": ts,
            "channel": channel,
            "campaign": rng.choice(campaigns[channel]),
            "region": rng.choice(REGIONS),
        }
        expected.by_topic[topic] += 1
        if roll < mix.duplicate + mix.malformed:
            records.append((topic, key, _malformed(rng, topic, doc)))
            expected.outcomes["invalid"] += 1
            continue
        if topic == "clicks":
            kind = rng.choices(type_names, cum_weights=type_cum)[0]
            doc["type"] = kind
            count = 1 if rng.random() < 0.97 else rng.randint(2, 20)
            if count > 1:
                doc["count"] = count
            if kind != "impression":
                doc["click_id"] = f"k{i:08x}"
            expected.add(channel, _CLICK_FIELD[kind], count)
        elif topic == "orders":
            amount_cents = rng.randint(990, 99_900)
            doc.update(
                order_id=f"o{i:08x}",
                amount=amount_cents / 100,
                currency="CNY",
                new_customer=rng.random() < 0.3,
            )
            expected.add(channel, "orders", 1)
            expected.add(channel, "gmv", round(amount_cents / 100 * MICROS))
        else:
            cost_cents = rng.randint(1, 5_000)
            doc.update(cost=cost_cents / 100, currency="CNY")
            expected.add(channel, "spend", round(cost_cents / 100 * MICROS))
        record = (topic, key, dumps(doc))
        records.append(record)
        recent.append(record)
        expected.outcomes["accepted"] += 1
    return records, expected


def _compact_dumps(doc: object) -> bytes:
    return orjson.dumps(doc).decode().encode()


def _malformed(rng: random.Random, topic: str, doc: dict[str, object]) -> bytes:
    """A record the worker must send to the DLQ (the kinds trackers really get wrong)."""
    kind = rng.randrange(5)
    if kind == 0:
        return b'{"event_id": "broken", "ts": 17'  # truncated: not JSON
    if kind == 1:
        return _compact_dumps({**doc, "ts": "yesterday"})  # unparseable time
    if kind == 2:
        return _compact_dumps({k: v for k, v in doc.items() if k != "channel"})  # missing field
    if kind == 3:
        return _compact_dumps({**doc, "ts": int(doc["ts"]) // 1000})  # seconds instead of milliseconds
    if topic == "clicks":
        return _compact_dumps({**doc, "type": "hover"})  # unknown funnel step
    if topic == "orders":
        return _compact_dumps({**doc, "order_id": "o-bad", "amount": -5})  # negative money
    return _compact_dumps({**doc, "cost": 3.0, "currency": "USD"})  # not the configured currency
