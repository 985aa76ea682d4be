"""Realistic tracker traffic, generated deterministically and without I/O.

:class:`TrafficGenerator` turns an event-time interval and a target rate into Kafka records for the
``clicks``, ``orders`` and ``spend`` topics exactly as CONTRACT.md §1 describes them, and keeps a
:class:`GroundTruth` of what a correct pipeline must count: KPI totals of the valid, first-seen, on-time
records only, plus how many records of each other kind (invalid, late, duplicate) were sent.

The funnel is simulated per campaign: impressions (Poisson) → clicks (binomial, the CTR) → visits →
carts → orders (the CVR over clicks), with order amounts around the campaign's AOV and spend charged per
click at a CPC chosen so that the channel's ROI lands on its profile. Scenarios (:class:`Scenario`
subclasses) change the traffic over a stretch of the run: a CTR drop, a spend surge, a tracker outage,
malformed, late or duplicate records. Everything random comes from one ``random.Random(seed)``, so a
seed and a start time reproduce a run record for record.
"""

from __future__ import annotations

import itertools
import math
import random
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo

import orjson
from aiokafka.partitioner import murmur2

from alerts.wording import rfc3339_utc_ms

#: Topics the generator writes to (short names; the settings add the prefix).
TOPICS: tuple[str, ...] = ("clicks", "orders", "spend")
DEFAULT_CHANNELS: tuple[str, ...] = ("douyin", "taobao", "wechat", "xiaohongshu", "baidu", "jd")
CAMPAIGN_THEMES: tuple[str, ...] = (
    "spring-sale",
    "brand-awareness",
    "retargeting",
    "new-arrivals",
    "live-stream",
    "member-day",
    "flash-deal",
    "618-preheat",
    "double-11",
    "clearance",
)
REGIONS: tuple[str, ...] = (
    "beijing",
    "shanghai",
    "guangdong",
    "zhejiang",
    "jiangsu",
    "sichuan",
    "hubei",
    "shandong",
)

#: A record ready to produce: (topic short name, key, value, Kafka timestamp ms = send time, partition).
Record = tuple[str, bytes, bytes, int, int]

WINDOW_MS = 60_000
SLICE_MS = 1_000
#: Injected late and duplicate records keep this distance from the lateness boundary, so that a pipeline
#: whose watermark differs slightly from ours (e.g. it also counts rejected records' ts) agrees on them.
LATENESS_MARGIN_MS = 10_000
AMOUNT_SIGMA = 0.6
NEW_CUSTOMER_SHARE = 0.3
#: Funnel counter positions in a ground-truth cell; orders also add their amount at GMV.
IMPRESSIONS, CLICKS, VISITS, CARTS, ORDERS, GMV, SPEND = range(7)
KINDS: tuple[str, ...] = ("valid", "invalid", "late", "duplicate")
_K = TypeVar("_K", bound=Hashable)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the simulator sends ``key`` to: Kafka's default (Java client) murmur2 rule.

    Chosen here rather than left to the client because the ground truth's lateness is per partition.
    (With 4 partitions, CRC32 would leave one of them without any of the six default channels.)
    """
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def window_end_ms(ts_ms: int) -> int:
    """End of the 1-minute event-time window holding ``ts_ms``."""
    return ts_ms - ts_ms % WINDOW_MS + WINDOW_MS


# --------------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True, slots=True)
class ChannelProfile:
    """Base rates of a channel: CTR and CVR as fractions, AOV and the ROI its CPC is tuned to."""

    ctr: float
    cvr: float
    aov: float
    roi: float
    weight: float


#: Tuned so that most channels clear the contract's seed thresholds and a few realistically do not:
#: baidu is the weak one (ROI below 1, low CTR and CVR), douyin sells cheap impulse buys (AOV below 300).
CHANNEL_PROFILES: Mapping[str, ChannelProfile] = {
    "douyin": ChannelProfile(ctr=0.028, cvr=0.052, aov=260.0, roi=1.6, weight=0.28),
    "taobao": ChannelProfile(ctr=0.024, cvr=0.060, aov=330.0, roi=2.4, weight=0.24),
    "wechat": ChannelProfile(ctr=0.021, cvr=0.054, aov=360.0, roi=1.5, weight=0.16),
    "xiaohongshu": ChannelProfile(ctr=0.026, cvr=0.051, aov=380.0, roi=1.3, weight=0.14),
    "baidu": ChannelProfile(ctr=0.016, cvr=0.042, aov=310.0, roi=0.9, weight=0.10),
    "jd": ChannelProfile(ctr=0.020, cvr=0.058, aov=400.0, roi=2.0, weight=0.08),
}


def channel_profile(channel: str) -> ChannelProfile:
    """The profile of a known channel, or a plausible one derived from the name (stable across runs)."""
    known = CHANNEL_PROFILES.get(channel)
    if known is not None:
        return known
    rng = random.Random(zlib.crc32(channel.encode()))
    return ChannelProfile(
        ctr=rng.uniform(0.015, 0.03),
        cvr=rng.uniform(0.04, 0.06),
        aov=rng.uniform(250.0, 400.0),
        roi=rng.uniform(1.1, 2.5),
        weight=rng.uniform(0.05, 0.2),
    )


@dataclass(frozen=True, slots=True)
class CampaignProfile:
    """One campaign's funnel: rates per stage, money per order and per click, and its share of all clicks."""

    channel: str
    campaign: str
    ctr: float
    visit_rate: float
    cart_rate: float
    cvr: float
    aov: float
    cpc: float
    click_share: float

    @property
    def order_rate(self) -> float:
        """Orders per cart, so that orders per click is the CVR."""
        return self.cvr / (self.visit_rate * self.cart_rate)

    def records_per_click(self, impressions_per_record: int) -> float:
        """Expected records of the clicks and orders topics per click (the rate → volume conversion)."""
        funnel = 1 + self.visit_rate + self.visit_rate * self.cart_rate + self.cvr
        return funnel + 1 / (self.ctr * impressions_per_record)


def campaign_profiles(channels: Sequence[str], campaigns_per_channel: int) -> tuple[CampaignProfile, ...]:
    """Campaigns named ``<channel>-<theme>``; names and rates depend on the channel list, not the seed."""
    total_weight = sum(channel_profile(c).weight for c in channels)
    shares = [1.0 / (rank + 2) for rank in range(campaigns_per_channel)]
    profiles = []
    for index, channel in enumerate(channels):
        base = channel_profile(channel)
        for rank in range(campaigns_per_channel):
            name = f"{channel}-{CAMPAIGN_THEMES[(index + rank) % len(CAMPAIGN_THEMES)]}"
            if rank >= len(CAMPAIGN_THEMES):
                name = f"{name}-{rank // len(CAMPAIGN_THEMES) + 1}"
            share = base.weight / total_weight * shares[rank] / sum(shares)
            profiles.append(_campaign(base, channel, name, share))
    return tuple(profiles)


def _campaign(base: ChannelProfile, channel: str, name: str, click_share: float) -> CampaignProfile:
    rng = random.Random(zlib.crc32(name.encode()))
    visit_rate, cart_rate = rng.uniform(0.75, 0.9), rng.uniform(0.18, 0.3)
    cvr = base.cvr * rng.uniform(0.9, 1.1)
    aov = base.aov * rng.uniform(0.92, 1.08)
    return CampaignProfile(
        channel=channel,
        campaign=name,
        ctr=base.ctr * rng.uniform(0.85, 1.15),
        visit_rate=visit_rate,
        cart_rate=cart_rate,
        cvr=cvr,
        aov=aov,
        # ROI = GMV / spend = CVR × AOV / CPC, hence the CPC that yields the channel's ROI.
        cpc=cvr * aov / (base.roi * rng.uniform(0.9, 1.1)),
        click_share=click_share,
    )


# ------------------------------------------------------------------------------------------------ daily curve

_MORNING_PEAK_H, _EVENING_PEAK_H, _PEAK_WIDTH_H = 10.0, 20.5, 2.2


def _raw_curve(hour: float) -> float:
    def bump(centre: float) -> float:
        distance = abs(hour - centre)
        distance = min(distance, 24.0 - distance)  # the evening peak spills past midnight
        return math.exp(-(distance**2) / (2 * _PEAK_WIDTH_H**2))

    return 0.2 + 1.0 * bump(_MORNING_PEAK_H) + 1.3 * bump(_EVENING_PEAK_H)


_CURVE_MEAN = sum(_raw_curve(m / 60) for m in range(1440)) / 1440


def daily_curve(ts_ms: int, zone: ZoneInfo) -> float:
    """Traffic at ``ts_ms`` relative to the day's mean (1.0): quiet at night, peaks ~10:00 and ~20:30."""
    local = datetime.fromtimestamp(ts_ms / 1000, zone)
    return _raw_curve(local.hour + local.minute / 60 + local.second / 3600) / _CURVE_MEAN


# -------------------------------------------------------------------------------------------------- scenarios


@dataclass(slots=True)
class Effects:
    """What the scenarios active during one slice do: factors per channel and fractions of faulty records."""

    ctr: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    volume: dict[str, float] = field(default_factory=dict)
    bad: float = 0.0
    late: float = 0.0
    late_beyond_share: float = 0.5
    duplicate: float = 0.0

    def scale(self, factors: dict[str, float], channel: str, factor: float) -> None:
        """Multiply ``channel``'s factor, so that two scenarios on one channel combine."""
        factors[channel] = factors.get(channel, 1.0) * factor

    @property
    def faulty(self) -> bool:
        """Whether any record of this slice may be made bad, late or duplicate."""
        return self.bad > 0 or self.late > 0 or self.duplicate > 0


@dataclass(frozen=True)
class Scenario:
    """Something that happens in a run, from ``at_s`` (seconds after the run's start) for ``for_s`` seconds.

    ``for_s`` None means until the end of the run. Subclasses override :meth:`apply`.
    """

    name: ClassVar[str] = ""

    at_s: float = 0.0
    for_s: float | None = None

    def active(self, offset_s: float) -> bool:
        """Whether the scenario is in effect ``offset_s`` seconds after the run's start."""
        return offset_s >= self.at_s and (self.for_s is None or offset_s < self.at_s + self.for_s)

    def phase(self, offset_s: float) -> str:
        """A short human description of where the scenario stands, for progress displays."""
        if offset_s < self.at_s:
            return f"{self.describe()}: starts in {self.at_s - offset_s:.0f}s"
        if self.active(offset_s):
            return f"{self.describe()}: ACTIVE"
        return f"{self.describe()}: over"

    def describe(self) -> str:
        """The scenario and its target in a few words."""
        return self.name

    def bind(self, channels: Sequence[str]) -> Scenario:
        """This scenario checked against the run's channels (and given its default channel)."""
        return self

    def apply(self, effects: Effects) -> None:
        """Add this scenario's effect to a slice's effects (called only while active)."""


@dataclass(frozen=True)
class ChannelScenario(Scenario):
    """A scenario that hits one channel."""

    channel: str | None = None
    #: The channel picked when none is named: an index into the run's channels (scenarios spread out).
    default_channel_index: ClassVar[int] = 0

    def describe(self) -> str:
        return f"{self.name} {self.channel}"

    def bind(self, channels: Sequence[str]) -> Scenario:
        if self.channel is None:
            return replace(self, channel=channels[self.default_channel_index % len(channels)])
        if self.channel not in channels:
            simulated = ", ".join(channels)
            raise ValueError(f"{self.name}: channel {self.channel!r} is not simulated (use {simulated})")
        return self

    @property
    def target(self) -> str:
        """The bound channel (``bind`` has filled it in)."""
        assert self.channel is not None, "bind() the scenario to the run's channels first"
        return self.channel


@dataclass(frozen=True)
class CtrDrop(ChannelScenario):
    """A channel's CTR falls to ``factor`` of normal (creative fatigue, a broken landing page link)."""

    name: ClassVar[str] = "ctr-drop"
    at_s: float = 60.0
    factor: float = 0.4

    def apply(self, effects: Effects) -> None:
        effects.scale(effects.ctr, self.target, self.factor)


@dataclass(frozen=True)
class SpendSurge(ChannelScenario):
    """A channel's spend per click multiplies by ``factor`` (a bidding war, a runaway bid)."""

    name: ClassVar[str] = "spend-surge"
    default_channel_index: ClassVar[int] = 1
    at_s: float = 60.0
    factor: float = 3.0

    def apply(self, effects: Effects) -> None:
        effects.scale(effects.cost, self.target, self.factor)


@dataclass(frozen=True)
class TrackerOutage(ChannelScenario):
    """A channel's tracker sends nothing at all (no events, no spend reports)."""

    name: ClassVar[str] = "tracker-outage"
    default_channel_index: ClassVar[int] = 2
    at_s: float = 60.0
    for_s: float | None = 120.0

    def apply(self, effects: Effects) -> None:
        effects.volume[self.target] = 0.0


@dataclass(frozen=True)
class BadRecords(Scenario):
    """A ``fraction`` of records is malformed in one of the ways CONTRACT.md §1 rejects."""

    name: ClassVar[str] = "bad-records"
    fraction: float = 0.01

    def apply(self, effects: Effects) -> None:
        effects.bad = min(1.0, effects.bad + self.fraction)


@dataclass(frozen=True)
class LateEvents(Scenario):
    """A ``fraction`` of records arrives with an old ``ts``, ``beyond_share`` of them past the grace."""

    name: ClassVar[str] = "late-events"
    fraction: float = 0.01
    beyond_share: float = 0.5

    def apply(self, effects: Effects) -> None:
        effects.late = min(1.0, effects.late + self.fraction)
        effects.late_beyond_share = self.beyond_share


@dataclass(frozen=True)
class Duplicates(Scenario):
    """A ``fraction`` of records is sent twice, byte for byte (a tracker retrying after a timeout)."""

    name: ClassVar[str] = "duplicates"
    fraction: float = 0.01

    def apply(self, effects: Effects) -> None:
        effects.duplicate = min(1.0, effects.duplicate + self.fraction)


SCENARIOS: Mapping[str, type[Scenario]] = {
    cls.name: cls for cls in (CtrDrop, SpendSurge, TrackerOutage, BadRecords, LateEvents, Duplicates)
}
#: Short parameter names accepted by :func:`parse_scenario` → dataclass field.
_PARAM_ALIASES = {"at": "at_s", "for": "for_s", "beyond": "beyond_share"}


def parse_duration_s(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``2h`` or ``1d``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale is not None else text
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90, 90s, 5m, 2h)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be finite and ≥ 0, got {text!r}")
    return value


def parse_scenario(text: str) -> Scenario:
    """A scenario from ``name[:key=value,...]``, e.g. ``ctr-drop:channel=wechat,at=2m,for=5m,factor=0.3``.

    Keys: ``channel``, ``at``, ``for`` (durations), ``factor``, ``fraction``, ``beyond`` (share of late
    events past the grace period), as far as the scenario has them.
    """
    name, _, params = text.partition(":")
    cls = SCENARIOS.get(name.strip())
    if cls is None:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, sep, raw = item.partition("=")
        attr = _PARAM_ALIASES.get(key.strip(), key.strip())
        if not sep or attr not in known:
            takes = ", ".join(sorted(_param_names(cls)))
            raise ValueError(f"scenario {name}: bad parameter {item!r}; it takes {takes}")
        values[attr] = _parse_param(attr, raw.strip())
    return cls(**values)


def _param_names(cls: type[Scenario]) -> set[str]:
    reverse = {v: k for k, v in _PARAM_ALIASES.items()}
    return {reverse.get(f.name, f.name) for f in fields(cls)}


def _parse_param(attr: str, raw: str) -> Any:
    if attr == "channel":
        return raw
    if attr in ("at_s", "for_s"):
        return None if attr == "for_s" and raw in ("", "none", "end") else parse_duration_s(raw)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{attr} must be a number, got {raw!r}") from None
    if attr in ("fraction", "beyond_share") and not 0 <= value <= 1:
        raise ValueError(f"{attr} must be between 0 and 1, got {raw}")
    if value < 0:
        raise ValueError(f"{attr} must be ≥ 0, got {raw}")
    return value


# ----------------------------------------------------------------------------------------------- ground truth


@dataclass(slots=True)
class Totals:
    """Funnel counts and money (in cents, so that sums are exact) of valid records."""

    impressions: int = 0
    clicks: int = 0
    visits: int = 0
    carts: int = 0
    orders: int = 0
    gmv_cents: int = 0
    spend_cents: int = 0

    @classmethod
    def from_cell(cls, cell: Sequence[int]) -> Totals:
        """Totals from a ground-truth cell (counters in the order IMPRESSIONS … SPEND)."""
        return cls(*cell)

    def add(self, other: Totals) -> None:
        """Add ``other`` into these totals."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def gmv(self) -> float:
        """GMV in currency units."""
        return self.gmv_cents / 100

    @property
    def spend(self) -> float:
        """Spend in currency units."""
        return self.spend_cents / 100

    def to_dict(self) -> dict[str, int | float]:
        """Counts plus ``gmv`` and ``spend`` in currency units (exact to the cent)."""
        return {
            "impressions": self.impressions,
            "clicks": self.clicks,
            "visits": self.visits,
            "carts": self.carts,
            "orders": self.orders,
            "gmv": self.gmv,
            "spend": self.spend,
        }


class GroundTruth:
    """What the generator sent, by kind, and the KPI totals a correct pipeline must arrive at."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self.meta = dict(meta)
        self.start_ms: int | None = None
        self.end_ms: int | None = None
        #: (channel, campaign, window start ms of the 1-minute window) → counters IMPRESSIONS … SPEND.
        self.cells: dict[tuple[str, str, int], list[int]] = {}
        self.kinds: dict[str, dict[str, int]] = {topic: dict.fromkeys(KINDS, 0) for topic in TOPICS}
        #: Records accepted although their ts was behind the partition's newest (within the grace period).
        self.late_within_grace: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self.invalid_reasons: dict[str, int] = {}
        #: Records sent per (topic, partition), every kind included.
        self.partition_records: dict[tuple[str, int], int] = {}

    def count_valid(self, channel: str, campaign: str, ts_ms: int, index: int, value: int) -> None:
        """Fold one valid record: ``value`` at counter ``index`` (an order adds 1 order and ``value`` GMV)."""
        key = (channel, campaign, ts_ms - ts_ms % WINDOW_MS)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0] * 7
        if index == ORDERS:
            cell[ORDERS] += 1
            cell[GMV] += value
        else:
            cell[index] += value

    @property
    def sent(self) -> int:
        """Every record sent, of every kind."""
        return sum(sum(kinds.values()) for kinds in self.kinds.values())

    def totals(self) -> dict[tuple[str, str], Totals]:
        """KPI totals per (channel, campaign)."""
        return self._roll_up(lambda channel, campaign, _: (channel, campaign))

    def channel_totals(self) -> dict[str, Totals]:
        """KPI totals per channel."""
        return self._roll_up(lambda channel, _campaign, _window: channel)

    def minute_totals(self) -> dict[tuple[str, str, int], Totals]:
        """KPI totals per (channel, campaign, 1-minute window start in epoch ms)."""
        return {key: Totals.from_cell(cell) for key, cell in self.cells.items()}

    def _roll_up(self, group: Callable[[str, str, int], _K]) -> dict[_K, Totals]:
        out: dict[_K, Totals] = {}
        for key, cell in self.cells.items():
            out.setdefault(group(*key), Totals()).add(Totals.from_cell(cell))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ground truth as plain JSON-able data: run metadata, record counts by kind, KPI totals."""
        return {
            "version": 1,
            **self.meta,
            "start": rfc3339_utc_ms(self.start_ms) if self.start_ms is not None else None,
            "end": rfc3339_utc_ms(self.end_ms) if self.end_ms is not None else None,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "sent": self.sent,
            "records": {
                topic: {**kinds, "late_within_grace": self.late_within_grace[topic]}
                for topic, kinds in self.kinds.items()
            },
            "invalid_reasons": dict(sorted(self.invalid_reasons.items())),
            "partitions": {
                topic: {str(p): n for (t, p), n in sorted(self.partition_records.items()) if t == topic}
                for topic in TOPICS
            },
            "totals": [
                {"channel": ch, "campaign": cp, **t.to_dict()}
                for (ch, cp), t in sorted(self.totals().items())
            ],
            "channel_totals": [
                {"channel": ch, **t.to_dict()} for ch, t in sorted(self.channel_totals().items())
            ],
            "minutes": [
                {
                    "channel": ch,
                    "campaign": cp,
                    "window_start": rfc3339_utc_ms(w),
                    "window_start_ms": w,
                    **t.to_dict(),
                }
                for (ch, cp, w), t in sorted(self.minute_totals().items())
            ],
        }

    def to_json(self) -> bytes:
        """:meth:`to_dict` as indented JSON bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2)


# ------------------------------------------------------------------------------------------ random helpers


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean < 30:
        # Knuth's product of uniforms: exact, and cheap for the small means of one campaign's second.
        limit, k, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return k
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - _binomial(rng, n, 1 - p)
    if n < 40:
        rand = rng.random
        return sum(1 for _ in range(n) if rand() < p)
    mean = n * p
    if mean * (1 - p) >= 9:
        return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))
    return min(n, _poisson(rng, mean))


# ---------------------------------------------------------------------------------------------- malformed


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
class _Limits:
    currency: str
    max_record_bytes: int
    max_future_skew_ms: int


def _malformed(
    rng: random.Random, topic: str, doc: dict[str, Any], sent_ms: int, limits: _Limits
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


# ---------------------------------------------------------------------------------------------- generator

#: A generated event before delivery: (ts ms, topic, profile, document, truth counter, truth value).
_Event = tuple[int, str, CampaignProfile, dict[str, Any], int, int]


@dataclass(slots=True)
class _Pending:
    """What a campaign's tracker has counted but not reported yet (impressions and cost go in bulk)."""

    impressions: int = 0
    cost_cents: float = 0.0
    next_flush_ms: int = 0


class TrafficGenerator:
    """Deterministic tracker traffic with its ground truth; see the module docstring.

    Call :meth:`records` with consecutive event-time intervals; the generator keeps its state (per-partition
    newest ``ts``, pending impression counts and spend, the ground truth) between calls.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        campaigns_per_channel: int = 3,
        zone: ZoneInfo | None = None,
        scenarios: Iterable[Scenario] = (),
        partitions: int | Mapping[str, int] = 4,
        grace_s: float = 60.0,
        currency: str = "CNY",
        max_record_bytes: int = 64 * 1024,
        max_future_skew_s: float = 3600.0,
        impressions_per_record: int = 50,
        daily_curve: bool = True,
        origin_ms: int | None = None,
    ) -> None:
        if not channels or len(set(channels)) != len(channels):
            raise ValueError("channels must be a non-empty list of distinct names")
        if not all(1 <= len(c) <= 64 for c in channels):
            raise ValueError("channel names must be 1–64 characters (CONTRACT.md §1)")
        if campaigns_per_channel < 1:
            raise ValueError("campaigns_per_channel must be ≥ 1")
        self.seed = seed
        self.channels = tuple(channels)
        self.campaigns = campaign_profiles(self.channels, campaigns_per_channel)
        self.zone = zone or ZoneInfo("Asia/Shanghai")
        self.scenarios = tuple(s.bind(self.channels) for s in scenarios)
        self.partitions = {t: partitions if isinstance(partitions, int) else partitions[t] for t in TOPICS}
        self.grace_ms = round(grace_s * 1000)
        self.impressions_per_record = impressions_per_record
        self.use_daily_curve = daily_curve
        self.origin_ms = origin_ms
        self.truth = GroundTruth(
            {
                "seed": seed,
                "grace_s": grace_s,
                "currency": currency,
                "channels": list(self.channels),
                "partition_counts": dict(self.partitions),
                "scenarios": [{"name": s.name, **_scenario_params(s)} for s in self.scenarios],
            }
        )
        self._limits = _Limits(currency, max_record_bytes, round(max_future_skew_s * 1000))
        self._rng = random.Random(seed)
        self._keys = {c: c.encode() for c in self.channels}
        self._partition = {
            (t, c): partition_for(self._keys[c], self.partitions[t]) for t in TOPICS for c in self.channels
        }
        self._newest_ms: dict[tuple[str, int], int] = {}
        self._pending = [_Pending() for _ in self.campaigns]  # parallel to self.campaigns
        self._id_prefix = ""
        self._ids = itertools.count(1)
        self._cursor_ms: int | None = None

    # -- public ---------------------------------------------------------------------------------------------

    def records(self, start_ms: int, end_ms: int, rate: float) -> Iterator[Record]:
        """Records for event time ``[start_ms, end_ms)`` at ``rate`` records per event-time second.

        ``rate`` is the day's mean; with the daily curve on, the actual rate follows the time of day.
        Intervals must follow one another (each starting where the previous one ended, or later).
        """
        if rate <= 0:
            raise ValueError("rate must be > 0 records per second")
        if self._cursor_ms is not None and start_ms < self._cursor_ms:
            raise ValueError("intervals must not go back in event time")
        self._begin(start_ms)
        flush_ms = self._flush_interval_ms(rate)
        clicks_per_ms = self._clicks_per_ms(rate, flush_ms)
        for lo in range(start_ms, end_ms, SLICE_MS):
            hi = min(lo + SLICE_MS, end_ms)
            effects = self.effects_at(lo)
            events = self._slice(lo, hi, clicks_per_ms, flush_ms, effects)
            if effects.faulty:
                yield from self._deliver_with_faults(events, effects)
            else:
                yield from self._deliver(events)
            self.truth.end_ms = self._cursor_ms = hi

    def effects_at(self, ts_ms: int) -> Effects:
        """The combined effect of the scenarios active at event time ``ts_ms``."""
        effects = Effects()
        offset_s = self.offset_s(ts_ms)
        for scenario in self.scenarios:
            if scenario.active(offset_s):
                scenario.apply(effects)
        return effects

    def offset_s(self, ts_ms: int) -> float:
        """Seconds of event time since the run's start (the scenarios' clock)."""
        return (ts_ms - (self.origin_ms if self.origin_ms is not None else ts_ms)) / 1000

    def phases(self, ts_ms: int) -> list[str]:
        """Where each scenario stands at event time ``ts_ms``, in words."""
        return [s.phase(self.offset_s(ts_ms)) for s in self.scenarios]

    # -- rates ----------------------------------------------------------------------------------------------

    def _begin(self, start_ms: int) -> None:
        if self.origin_ms is None:
            self.origin_ms = start_ms
        if self.truth.start_ms is None:
            self.truth.start_ms = start_ms
            # Seed and start make ids unique across runs, yet reproducible.
            self._id_prefix = f"{self.seed}-{start_ms:x}-"
            for index, pending in enumerate(self._pending):  # staggered, as independent trackers would be
                pending.next_flush_ms = start_ms + index * SLICE_MS // len(self._pending)

    def _flush_interval_ms(self, rate: float) -> int:
        # Trackers report impressions and spend per campaign about once a second; at low rates less often,
        # so that those reports stay a small share (~15 %) of the records.
        return int(min(60.0, max(1.0, len(self.campaigns) * 10 / rate)) * 1000)

    def _clicks_per_ms(self, rate: float, flush_ms: int) -> float:
        batch = self.impressions_per_record
        per_click = sum(p.click_share * p.records_per_click(batch) for p in self.campaigns)
        # Each flush sends one spend record and on average half an impression record more than per_click says.
        flush_records_per_s = len(self.campaigns) * 1.5 / (flush_ms / 1000)
        return max(rate - flush_records_per_s, rate * 0.1) / per_click / 1000

    # -- generation -----------------------------------------------------------------------------------------

    def _slice(self, lo: int, hi: int, clicks_per_ms: float, flush_ms: int, effects: Effects) -> list[_Event]:
        level = clicks_per_ms * (hi - lo) * (daily_curve(lo, self.zone) if self.use_daily_curve else 1.0)
        events: list[_Event] = []
        for profile, pending in zip(self.campaigns, self._pending, strict=True):
            volume = effects.volume.get(profile.channel, 1.0)
            if volume == 0:
                continue
            expected_clicks = level * profile.click_share * volume
            impressions = _poisson(self._rng, expected_clicks / profile.ctr)
            clicks = _binomial(self._rng, impressions, profile.ctr * effects.ctr.get(profile.channel, 1.0))
            pending.impressions += impressions
            pending.cost_cents += clicks * profile.cpc * 100 * effects.cost.get(profile.channel, 1.0)
            self._funnel(events, profile, clicks, lo, hi)
            if lo >= pending.next_flush_ms:
                self._flush(events, profile, pending, lo, hi)
                pending.next_flush_ms += flush_ms
                if pending.next_flush_ms <= lo:  # after an outage: report again one interval from now
                    pending.next_flush_ms = lo + flush_ms
        events.sort(key=_event_ts)
        return events

    def _funnel(self, events: list[_Event], profile: CampaignProfile, clicks: int, lo: int, hi: int) -> None:
        """Each click, and the visit, cart and order that may follow it, all within ``[lo, hi)``."""
        rand = self._rng.random
        stages = (("visit", VISITS, profile.visit_rate), ("cart", CARTS, profile.cart_rate))
        for _ in range(clicks):
            ts = lo + int(rand() * (hi - lo))
            click_id = self._new_id()
            shared = {
                "channel": profile.channel,
                "campaign": profile.campaign,
                "region": REGIONS[int(rand() * len(REGIONS))],
                "click_id": click_id,
            }
            click = {"event_id": click_id, "ts": ts, "type": "click", **shared}
            events.append((ts, "clicks", profile, click, CLICKS, 1))
            for name, index, stage_rate in stages:
                if rand() >= stage_rate:
                    break
                # A stage follows the previous one, within the same slice (so slices stay in ts order).
                ts += int(rand() * (hi - ts))
                doc = {"event_id": self._new_id(), "ts": ts, "type": name, **shared}
                events.append((ts, "clicks", profile, doc, index, 1))
            else:  # reached the cart
                if rand() < profile.order_rate:
                    events.append(self._order(profile, shared, ts + int(rand() * (hi - ts))))

    def _order(self, profile: CampaignProfile, shared: dict[str, str], ts: int) -> _Event:
        rng = self._rng
        cents = max(100, round(profile.aov * rng.lognormvariate(-(AMOUNT_SIGMA**2) / 2, AMOUNT_SIGMA) * 100))
        event_id = self._new_id()
        order = {
            "event_id": event_id,
            "ts": ts,
            **shared,
            "order_id": "o" + event_id,
            "amount": cents / 100,
            "currency": self._limits.currency,
            "new_customer": rng.random() < NEW_CUSTOMER_SHARE,
        }
        return (ts, "orders", profile, order, ORDERS, cents)

    def _flush(
        self, events: list[_Event], profile: CampaignProfile, pending: _Pending, lo: int, hi: int
    ) -> None:
        """A tracker's periodic report: the impressions counted since the last one, and the spend."""
        rand = self._rng.random
        base = {"channel": profile.channel, "campaign": profile.campaign}
        if pending.impressions:
            records = -(-pending.impressions // self.impressions_per_record)
            each, extra = divmod(pending.impressions, records)
            for n in range(records):
                ts = lo + int(rand() * (hi - lo))
                count = each + (n < extra)
                doc = {"event_id": self._new_id(), "ts": ts, **base, "type": "impression", "count": count}
                events.append((ts, "clicks", profile, doc, IMPRESSIONS, count))
            pending.impressions = 0
        cents = round(pending.cost_cents * self._rng.uniform(0.9, 1.1))
        if cents > 0:
            ts = lo + int(rand() * (hi - lo))
            doc = {"event_id": self._new_id(), "ts": ts, **base, "cost": cents / 100}
            doc["currency"] = self._limits.currency
            events.append((ts, "spend", profile, doc, SPEND, cents))
            pending.cost_cents = 0.0

    def _new_id(self) -> str:
        return self._id_prefix + str(next(self._ids))

    # -- delivery -------------------------------------------------------------------------------------------

    def _deliver(self, events: list[_Event]) -> Iterator[Record]:
        """Fast path: every record valid and in ts order per partition (locals: this loop is the hot one)."""
        dumps, count_valid, keys = orjson.dumps, self.truth.count_valid, self._keys
        newest, partition_of = self._newest_ms, self._partition
        sent: dict[tuple[str, int], int] = {}
        for ts, topic, profile, doc, index, value in events:
            channel = profile.channel
            partition = partition_of[topic, channel]
            newest[topic, partition] = ts  # events are sorted, so this is the partition's maximum
            count_valid(channel, profile.campaign, ts, index, value)
            sent[topic, partition] = sent.get((topic, partition), 0) + 1
            yield topic, keys[channel], dumps(doc), ts, partition
        for (topic, partition), n in sent.items():
            self._tally(topic, partition, "valid", n)

    def _deliver_with_faults(self, events: list[_Event], effects: Effects) -> Iterator[Record]:
        rand = self._rng.random
        resends: list[Record] = []
        for event in events:
            ts, topic, profile, doc, index, value = event
            key = self._keys[profile.channel]
            partition = self._partition[topic, profile.channel]
            draw = rand()
            if draw < effects.bad:
                reason, data = _malformed(self._rng, topic, doc, ts, self._limits)
                self.truth.invalid_reasons[reason] = self.truth.invalid_reasons.get(reason, 0) + 1
                self._tally(topic, partition, "invalid")
                yield topic, key, data, ts, partition
                continue
            if draw < effects.bad + effects.late and self._make_late(topic, partition, doc, effects):
                yield self._deliver_late(topic, key, partition, event)
                continue
            newest_ms = self._newest_ms.get((topic, partition), ts)
            self._newest_ms[topic, partition] = max(newest_ms, ts)
            self.truth.count_valid(profile.channel, profile.campaign, ts, index, value)
            self._tally(topic, partition, "valid")
            record = (topic, key, orjson.dumps(doc), ts, partition)
            if rand() < effects.duplicate:
                resends.append(record)
            yield record
        yield from self._resend(resends)

    def _make_late(self, topic: str, partition: int, doc: dict[str, Any], effects: Effects) -> bool:
        """Backdate ``doc``'s ts, clearly inside or clearly beyond the grace period; False if neither fits."""
        newest = self._newest_ms.get((topic, partition))
        if newest is None:
            return False
        sent_ms = doc["ts"]
        if self._rng.random() < effects.late_beyond_share:
            old = sent_ms - self.grace_ms - int(self._rng.uniform(90_000, 600_000))
            fits = newest - (window_end_ms(old) + self.grace_ms) >= LATENESS_MARGIN_MS
        else:
            # At most half the grace late, so a pipeline reading its topics unevenly still accepts it.
            longest = max(1_000, self.grace_ms // 2 - LATENESS_MARGIN_MS)
            old = sent_ms - int(self._rng.uniform(1_000, longest))
            fits = old < newest and (window_end_ms(old) + self.grace_ms) - newest >= LATENESS_MARGIN_MS
        if fits:
            doc["ts"] = old
        return fits

    def _deliver_late(self, topic: str, key: bytes, partition: int, event: _Event) -> Record:
        sent_ms, _, profile, doc, index, value = event
        ts = doc["ts"]
        if window_end_ms(ts) + self.grace_ms <= self._newest_ms[topic, partition]:
            self._tally(topic, partition, "late")
        else:
            self.truth.count_valid(profile.channel, profile.campaign, ts, index, value)
            self.truth.late_within_grace[topic] += 1
            self._tally(topic, partition, "valid")
        return topic, key, orjson.dumps(doc), sent_ms, partition

    def _resend(self, records: list[Record]) -> Iterator[Record]:
        """Duplicates, sent after their slice; only those far enough from the grace boundary to be clear."""
        for topic, key, data, ts, partition in records:
            # Only on-time records are re-sent, so the Kafka timestamp is also the event's ts.
            if window_end_ms(ts) + self.grace_ms - self._newest_ms[topic, partition] >= LATENESS_MARGIN_MS:
                self._tally(topic, partition, "duplicate")
                yield topic, key, data, ts, partition

    def _tally(self, topic: str, partition: int, kind: str, n: int = 1) -> None:
        self.truth.kinds[topic][kind] += n
        counts = self.truth.partition_records
        counts[topic, partition] = counts.get((topic, partition), 0) + n


def _event_ts(event: _Event) -> int:
    return event[0]


def _scenario_params(scenario: Scenario) -> dict[str, Any]:
    return {f.name: getattr(scenario, f.name) for f in fields(scenario)}
