"""Hostile tracker records (hypothesis strategies) and the ground truth the contract gives them.

Every record carries the verdicts the contract allows for it (``allowed``): ``"ok"`` (counted, unless it is a
duplicate or late on its partition) and/or the DLQ reasons it may be rejected with. Where the contract leaves
the choice to the name rules (a campaign called ``促销 | 双11``: accepted, or refused as invalid), both are
allowed and the pipeline's own verdict is held to consistency: rejected means in the DLQ with an allowed
reason, accepted means counted exactly. Duplicates and lateness are then simulated per source partition from
the contract alone (``judge``), never with the pipeline's code.

Every case the issue "Hostile input and faults" names is in ``CASES``; the tests assert each one was drawn.
"""

from __future__ import annotations

import random
import string
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from hypothesis import strategies as st

#: Counter slots of a window bucket, in the order the table stores them.
SLOTS = ("impressions", "clicks", "visits", "carts", "orders", "gmv", "spend", "new_customers")
_SLOT = {name: i for i, name in enumerate(SLOTS)}
CHANNEL_POOL = ("douyin", "taobao", "wechat", "xiaohongshu", "baidu", "jd", "kuaishou", "pinduoduo")
_CLEAN = string.ascii_lowercase + string.digits + "_-"
_CONTROL = [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
#: 2100-01-01T00:00:00Z in epoch milliseconds.
YEAR_2100_MS = 4_102_444_800_000
#: 2000-01-01T00:00:00Z: the earliest event time the contract accepts.
YEAR_2000_MS = 946_684_800_000
OK = frozenset({"ok"})
#: A name the rules refuse: as ``bad_name`` (the character rule) or ``invalid`` (its length, its type).
NAME_REFUSED = frozenset({"bad_name", "invalid"})
SHANGHAI = timezone(timedelta(hours=8))

Draw = Callable[[st.SearchStrategy[Any]], Any]
T = TypeVar("T")
Cell = tuple[str, str, str, int]  # channel, campaign, window, start (epoch s)
Pos = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True, slots=True)
class Counted:
    """What a record adds to the counters when it is counted."""

    event_id: str
    ts_ms: int
    channel: str
    campaign: str
    amounts: tuple[tuple[str, int], ...]  # (slot name, amount)


@dataclass(frozen=True, slots=True)
class Hostile:
    """One record as a tracker sends it, with the verdicts the contract allows."""

    case: str
    topic: str  # short name: clicks | orders | spend
    key: bytes | None
    value: bytes | None
    create_ms: int  # the producer's CreateTime
    allowed: frozenset[str]
    event: Counted | None = None

    def describe(self) -> str:
        """A short, printable account of the record for failure messages."""
        shown = repr(self.value[:160]) if self.value is not None else "None"
        size = len(self.value) if self.value is not None else 0
        return f"[{self.case}] {self.topic} CreateTime={self.create_ms} ({size} B) {shown}"


def partition_for(key: bytes | None, partitions: int) -> int:
    """Where the test producer puts a record: by a CRC of the key (a C function; keys here reach 400 KB)."""
    return zlib.crc32(key or b"") % partitions


# -- fields -------------------------------------------------------------------------------------------------


class Source:
    """Where a builder's choices come from: hypothesis for the values worth its edge cases (odd text, bytes,
    numbers at their limits), and a random stream hypothesis seeds for the plain structural choices, which
    keeps a record to a few hypothesis draws (over 100,000 records fit in a test)."""

    def __init__(self, draw: Draw, rng: random.Random) -> None:
        self.draw = draw
        self.rng = rng

    def int(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def pick(self, choices: Sequence[T]) -> T:
        return self.rng.choice(choices)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


def _clean(src: Source, max_size: int) -> str:
    return "".join(src.rng.choices(_CLEAN, k=src.int(1, max_size)))


def _channel(src: Source) -> str:
    return str(src.pick(CHANNEL_POOL)) if src.int(0, 9) < 8 else _clean(src, 20)


def _campaign(src: Source, channel: str) -> str | None:
    pick = src.int(0, 9)
    if pick == 0:
        return None  # no campaign: counted under "-"
    return f"{channel[:8]}-c{pick}" if pick < 8 else _clean(src, 40)


def _money(src: Source) -> tuple[float | int, int]:
    """A valid amount and its exact value in micro-units, worked out without the codec."""
    kind = src.int(0, 9)
    if kind < 6:
        # Decimals with up to six places and up to 15 significant digits: exact in a double's shortest repr.
        micros = int(src.draw(st.integers(0, 999_999_999_999_999)))
        amount = float(Decimal(micros) / 1_000_000)
        return amount, int(Decimal(repr(amount)) * 1_000_000)
    if kind < 8:
        units = int(src.draw(st.integers(0, 10**12)))
        return units, units * 1_000_000
    return src.pick([(0, 0), (-0.0, 0), (0.000001, 1), (10**12, 10**18), (1e12, 10**18)])


def _event(
    src: Source, event_id: str, ts: int, channel: str | None = None
) -> tuple[str, dict[str, Any], Counted]:
    """A valid event of a random topic: (topic, document, what it counts)."""
    channel = channel or _channel(src)
    campaign = _campaign(src, channel)
    doc: dict[str, Any] = {"event_id": event_id, "ts": ts, "channel": channel}
    if campaign is not None:
        doc["campaign"] = campaign
    topic = src.pick(("clicks",) * 7 + ("orders",) * 2 + ("spend",))
    amounts: tuple[tuple[str, int], ...]
    if topic == "clicks":
        kind = src.pick(("impression", "impression", "click", "visit", "cart"))
        pick = src.int(0, 19)
        count = 1 if pick < 16 else (10**9 if pick == 19 else src.int(2, 1000))
        doc["type"] = kind
        if count > 1 or src.chance(0.5):
            doc["count"] = count
        amounts = ((kind + "s", count),)
    elif topic == "orders":
        amount, micros = _money(src)
        doc.update(order_id=f"o-{event_id}"[:128], amount=amount)
        new_customer = src.pick((None, False, True))
        if new_customer is not None:
            doc["new_customer"] = new_customer
        if src.int(0, 4) == 0:
            doc["currency"] = src.pick(("CNY", "cny"))
        amounts = (("orders", 1), ("gmv", micros)) + ((("new_customers", 1),) if new_customer else ())
    else:
        cost, micros = _money(src)
        doc["cost"] = cost
        amounts = (("spend", micros),)
    if src.int(0, 9) == 0:
        doc["extra"] = {"ignored": [1, "two", None], "region_code": "CN-31"}
    counted = Counted(event_id, _ts_ms(ts), channel, campaign or "-", amounts)
    return topic, doc, counted


def _ts_ms(ts: int | str) -> int:
    if isinstance(ts, int):
        return ts
    parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _rfc3339(ts_ms: int, src: Source) -> str:
    zone = src.pick((UTC, SHANGHAI))
    text = datetime.fromtimestamp(ts_ms / 1000, zone).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if zone is UTC and src.chance(0.5) else text


def _honest_create(src: Source, ts_ms: int) -> int:
    """CreateTime of a tracker with a correct clock: the moment it sent the record, a little after ``ts``."""
    return ts_ms + src.int(0, 5_000)


def _dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


# -- the cases ----------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    """What one record's builder knows: its id, the honest clock, and the records before it."""

    event_id: str
    now_ms: int
    earlier: list[Hostile]


def _good(src: Source, ctx: _Ctx) -> Hostile:
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    return Hostile(
        "good", topic, counted.channel.encode(), _dumps(doc), _honest_create(src, ctx.now_ms), OK, counted
    )


def _good_rfc3339(src: Source, ctx: _Ctx) -> Hostile:
    text = _rfc3339(ctx.now_ms, src)
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    doc["ts"] = text
    return Hostile(
        "ts-rfc3339",
        topic,
        counted.channel.encode(),
        _dumps(doc),
        _honest_create(src, ctx.now_ms),
        OK,
        counted,
    )


def _names_at_limit(src: Source, ctx: _Ctx) -> Hostile:
    channel = ("c" + _clean(src, 63)).ljust(64, "x")
    # "~" ends the id proper: "x-12" and "x-120" padded alike would be one id.
    topic, doc, counted = _event(src, f"{ctx.event_id}~".ljust(128, "0"), ctx.now_ms, channel)
    doc["campaign"] = ("p" + _clean(src, 127)).ljust(128, "y")
    counted = Counted(counted.event_id, counted.ts_ms, channel, doc["campaign"], counted.amounts)
    return Hostile(
        "name-at-limit", topic, channel.encode(), _dumps(doc), _honest_create(src, ctx.now_ms), OK, counted
    )


def _with_name(src: Source, ctx: _Ctx, case: str, name: str, allowed: frozenset[str]) -> Hostile:
    """A valid event whose channel, campaign or event id is ``name``."""
    which = src.pick(("channel", "campaign", "event_id"))
    channel = name if which == "channel" else None
    # An odd event id keeps the record's own id in front, so two records never share one by chance (a
    # reused id with another time is a different case: deduplication holds it only within the horizon).
    event_id = f"{ctx.event_id}~{name}" if which == "event_id" else ctx.event_id
    topic, doc, counted = _event(src, event_id, ctx.now_ms, channel)
    if which == "campaign":
        doc["campaign"] = name
        counted = Counted(counted.event_id, counted.ts_ms, counted.channel, name, counted.amounts)
    value = _dumps(doc)
    if len(value) > 64 * 1024:
        allowed = allowed | {"oversized"}
    if which == "event_id" and len(event_id) <= 128:
        # An event id is never a key or a label: the contract leaves its characters free.
        allowed = allowed | {"ok"}
    return Hostile(
        case, topic, counted.channel.encode(), value, _honest_create(src, ctx.now_ms), allowed, counted
    )


def _name_control(src: Source, ctx: _Ctx) -> Hostile:
    """A name with a control character: U+001F (the table key's separator), NUL, newline, DEL, C1."""
    base = _clean(src, 20)
    at = src.int(0, len(base))
    char = src.pick(["\x1f", "\x1f", "\x00", "\n", "\r", "\t", "\x1b"] + _CONTROL)
    return _with_name(src, ctx, "name-control", base[:at] + char + base[at:], NAME_REFUSED)


def _name_separator(src: Source, ctx: _Ctx) -> Hostile:
    """Separators other parts of adpulse use in keys and fields: | : / and spaces."""
    base = _clean(src, 20)
    sep = src.pick(["|", ":", "/", " ", "||", "|-|", "*", "\\", '"', "'"])
    at = src.int(0, len(base))
    return _with_name(src, ctx, "name-separator", base[:at] + sep + base[at:], NAME_REFUSED | OK)


def _name_unicode(src: Source, ctx: _Ctx) -> Hostile:
    """CJK, emoji, right-to-left, combining and zero-width characters, line separators."""
    alphabet = st.characters(exclude_categories=("Cc", "Cs"))
    pool = [
        "抖音",
        "淘宝 双11",
        "🔥sale",
        "\u202eevil",
        "a\u0301",
        "zero\u200bwidth",
        "line\u2028sep",
        "\ufeffbom",
    ]
    name = (
        src.pick(pool)
        if src.chance(0.3)
        else str(src.draw(st.text(alphabet=alphabet, min_size=1, max_size=24)))
    )
    return _with_name(src, ctx, "name-unicode", name, NAME_REFUSED | OK)


def _name_too_long(src: Source, ctx: _Ctx) -> Hostile:
    size = src.pick((129, 130, 500, 5_000, 70_000, 300_000))
    return _with_name(src, ctx, "name-too-long", "n" * size, NAME_REFUSED)


def _name_reserved(src: Source, ctx: _Ctx) -> Hostile:
    """The campaign "(other)", which names the campaigns beyond the cap: no tracker may claim it."""
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    doc["campaign"] = "(other)"
    create = _honest_create(src, ctx.now_ms)
    return Hostile("name-reserved", topic, counted.channel.encode(), _dumps(doc), create, NAME_REFUSED)


def _name_empty(src: Source, ctx: _Ctx) -> Hostile:
    which = src.pick(("channel", "campaign", "event_id"))
    topic, doc, _ = _event(src, ctx.event_id, ctx.now_ms)
    doc[which] = ""
    return Hostile("name-empty", topic, b"", _dumps(doc), _honest_create(src, ctx.now_ms), NAME_REFUSED)


_BAD_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "clicks": [
        ("type", "Click"),
        ("type", "scroll"),
        ("type", None),
        ("type", 1),
        ("count", 0),
        ("count", -1),
        ("count", 1.5),
        ("count", "3"),
        ("count", True),
        ("count", 10**9 + 1),
        ("click_id", 5),
    ],
    "orders": [
        ("amount", "12.5"),
        ("amount", True),
        ("amount", None),
        ("amount", [1]),
        ("amount", -0.01),
        ("amount", -(10**12)),
        ("amount", 10**12 + 1),
        ("amount", 1.5e12),
        ("amount", 2**64 - 1),
        ("order_id", 5),
        ("order_id", ""),
        ("new_customer", 1),
        ("new_customer", "yes"),
        ("currency", "USD"),
        ("currency", "CNY "),
        ("currency", 156),
    ],
    "spend": [("cost", "3.20"), ("cost", -1), ("cost", 10**13), ("cost", {"v": 1}), ("currency", "usd")],
    "any": [
        ("ts", 1.79e12),
        ("ts", True),
        ("ts", "yesterday"),
        ("ts", "2026-12-01T00:00:00"),
        ("ts", "2026-12-01T25:61:00Z"),
        ("ts", [1]),
        ("ts", None),
        ("channel", 5),
        ("channel", None),
        ("channel", ["douyin"]),
        ("campaign", 7),
        ("campaign", None),
        ("event_id", None),
        ("event_id", 5),
        ("event_id", "e" * 129),
        ("region", 5),
        ("region", "r" * 65),
    ],
}
_REQUIRED = {
    "clicks": ("type",),
    "orders": ("amount", "order_id"),
    "spend": ("cost",),
    "any": ("event_id", "ts", "channel"),
}


def _bad_type(src: Source, ctx: _Ctx) -> Hostile:
    """A missing or mistyped field, or a value out of range: NaN-free, JSON-valid, invalid by the contract."""
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    scope = src.pick((topic, "any"))
    if src.int(0, 4) == 0:
        doc.pop(src.pick(_REQUIRED[scope]), None)
    else:
        name, value = src.pick(_BAD_FIELDS[scope])
        doc[name] = value
    return Hostile(
        "bad-type",
        topic,
        counted.channel.encode(),
        _dumps(doc),
        _honest_create(src, ctx.now_ms),
        frozenset({"invalid"}),
    )


def _money_literal(src: Source, ctx: _Ctx) -> Hostile:
    """NaN, Infinity and overflowing numbers: not JSON (orjson refuses them), so never money."""
    topic = src.pick(("orders", "spend"))
    name = "amount" if topic == "orders" else "cost"
    literal = src.pick((b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"))
    doc = {"event_id": ctx.event_id, "ts": ctx.now_ms, "channel": "taobao", "order_id": "o", name: "__X__"}
    value = _dumps(doc).replace(b'"__X__"', literal)
    return Hostile(
        "money-nan-inf", topic, b"taobao", value, _honest_create(src, ctx.now_ms), frozenset({"not_json"})
    )


def _money_edge(src: Source, ctx: _Ctx) -> Hostile:
    """Valid money at the edges: 0, -0.0, one micro-unit, 10^12, decimals up to six places."""
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    while topic == "clicks":
        topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms, counted.channel)
    return Hostile(
        "money-edge",
        topic,
        counted.channel.encode(),
        _dumps(doc),
        _honest_create(src, ctx.now_ms),
        OK,
        counted,
    )


def _ts_micros(src: Source, ctx: _Ctx) -> Hostile:
    """Event time in microseconds; CreateTime matching it (a tracker clock in microseconds too), or not."""
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    doc["ts"] = ctx.now_ms * 1000
    create = src.pick((doc["ts"], _honest_create(src, ctx.now_ms), 0))
    return Hostile(
        "ts-microseconds",
        topic,
        counted.channel.encode(),
        _dumps(doc),
        create,
        frozenset({"future", "invalid"}),
    )


def _ts_2100(src: Source, ctx: _Ctx) -> Hostile:
    """Event time in 2100 or later, with a CreateTime to match, of 0, of -1, or an honest one."""
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    ts = YEAR_2100_MS + int(src.draw(st.integers(0, 10**11)))
    pick = src.int(0, 9)
    if pick == 0:
        doc["ts"] = src.pick(("2100-01-01T00:00:00Z", "9999-12-31T23:59:59.999+08:00"))
        ts = _ts_ms(doc["ts"])
    elif pick == 1:
        ts = int(src.draw(st.integers(2**63, 2**64 - 1)))  # a uint64: JSON-valid, far beyond any calendar
        doc["ts"] = ts
    else:
        doc["ts"] = ts
    create = src.pick((min(ts, 2**63 - 1), 0, -1, _honest_create(src, ctx.now_ms)))
    return Hostile(
        "ts-2100", topic, counted.channel.encode(), _dumps(doc), create, frozenset({"future", "invalid"})
    )


def _ts_impossible(src: Source, ctx: _Ctx) -> Hostile:
    """Negative, zero, seconds instead of milliseconds, before 2000, year 1."""
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    doc["ts"] = src.draw(
        st.one_of(
            st.integers(-(2**63), -1),
            st.just(0),
            st.integers(1_000_000_000, 2_000_000_000),  # seconds
            st.integers(1, YEAR_2000_MS - 1),
            st.sampled_from(("0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "1999-12-31T23:59:59.999Z")),
        )
    )
    return Hostile(
        "ts-negative-or-seconds",
        topic,
        counted.channel.encode(),
        _dumps(doc),
        _honest_create(src, ctx.now_ms),
        frozenset({"invalid"}),
    )


def _ts_far_past(src: Source, ctx: _Ctx) -> Hostile:
    """Valid but long ago (2000–2005), sent now: late on any partition that has seen recent events."""
    ts = YEAR_2000_MS + src.int(0, 5 * 365 * 86_400_000)
    topic, doc, counted = _event(src, ctx.event_id, ts)
    return Hostile(
        "ts-far-past",
        topic,
        counted.channel.encode(),
        _dumps(doc),
        _honest_create(src, ctx.now_ms),
        OK,
        counted,
    )


def _ts_late(src: Source, ctx: _Ctx) -> Hostile:
    """An honest tracker's event that arrives minutes late: within the grace period or beyond it."""
    ts = ctx.now_ms - src.int(5_000, 40 * 60_000)
    topic, doc, counted = _event(src, ctx.event_id, ts)
    return Hostile(
        "ts-late", topic, counted.channel.encode(), _dumps(doc), _honest_create(src, ctx.now_ms), OK, counted
    )


def _create_time_odd(src: Source, ctx: _Ctx) -> Hostile:
    """An honest event time with CreateTime ≤ 0 (a client that sends none) or in 2100 (a broken clock)."""
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    create = src.pick((0, -1, -(2**40), YEAR_2100_MS))
    case = "createtime-2100" if create > 0 else "createtime-not-positive"
    return Hostile(case, topic, counted.channel.encode(), _dumps(doc), create, OK, counted)


def _not_json(src: Source, ctx: _Ctx) -> Hostile:
    """Bytes that are no JSON object: garbage, cut short, a BOM, UTF-16, nesting past 1,024 levels, a
    lone surrogate, JSON that is not an object, a tombstone."""
    _, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    good = _dumps(doc)
    kind = src.int(0, 8)
    allowed = frozenset({"not_json"})
    value: bytes | None
    if kind == 0:
        value, allowed = src.draw(st.binary(max_size=300)), frozenset({"not_json", "invalid"})
    elif kind == 1:
        value = good[: src.int(0, len(good) - 1)]
    elif kind == 2:
        value = b"\xef\xbb\xbf" + good
    elif kind == 3:
        value = good.decode().encode("utf-16")
    elif kind == 4:
        value = good[:-1] + b',"deep":' + b"[" * 1100 + b"]" * 1100 + b"}"
    elif kind == 5:
        value = good[:-1] + b',"bad":"\\ud800"}'
    elif kind == 6:
        value, allowed = (
            src.pick((b"[1,2,3]", b'"douyin"', b"42", b"null", b"true", b"{}")),
            frozenset({"invalid"}),
        )
    elif kind == 7:
        value, allowed = None, frozenset({"invalid"})
    else:
        value = good + b"trailing"
    return Hostile(
        "not-json", "clicks", counted.channel.encode(), value, _honest_create(src, ctx.now_ms), allowed
    )


def _huge_record(src: Source, ctx: _Ctx) -> Hostile:
    """800 KB to 1 MB: JSON with a long field, raw control bytes (6 bytes each once JSON-escaped), invalid
    UTF-8 (4/3 as base64), quotes (escaped to two bytes). Its DLQ copy must still fit the broker's limit."""
    size = src.int(800_000, 1_000_000)
    kind = src.int(0, 3)
    if kind == 0:
        head = _dumps({"event_id": ctx.event_id, "ts": ctx.now_ms, "channel": "douyin", "type": "click"})[:-1]
        value = head + b',"pad":"' + b"a" * (size - len(head) - 10) + b'"}'
    else:
        value = (b"\x01", b"\xff", b'"')[kind - 1] * size
    return Hostile(
        "huge-record", "clicks", b"douyin", value, _honest_create(src, ctx.now_ms), frozenset({"oversized"})
    )


def _odd_key(src: Source, ctx: _Ctx) -> Hostile:
    """A valid event under a missing, empty, binary, foreign or 400 KB key: still counted exactly once."""
    topic, doc, counted = _event(src, ctx.event_id, ctx.now_ms)
    key = src.pick((None, b"", b"\x00\xff\x1f", b"taobao", b"k" * 400_000))
    return Hostile("odd-key", topic, key, _dumps(doc), _honest_create(src, ctx.now_ms), OK, counted)


def _huge_key_rejected(src: Source, ctx: _Ctx) -> Hostile:
    """A 400 KB key on an oversized value of control bytes: key plus DLQ copy would pass 1 MB uncut."""
    key = b"k" * src.int(300_000, 400_000)
    value = b"\x01" * src.int(70_000, 500_000)
    return Hostile(
        "huge-key-rejected", "clicks", key, value, _honest_create(src, ctx.now_ms), frozenset({"oversized"})
    )


def _duplicate(src: Source, ctx: _Ctx) -> Hostile:
    """An earlier record again: byte for byte (a producer retry), or the same event id and time with other
    content (a tracker bug): counted once, first come first served. Or an id reused on another topic:
    deduplication is per partition, so that one counts."""
    if not ctx.earlier:
        return _good(src, ctx)
    original = src.pick(ctx.earlier[-50:])
    kind = src.int(0, 2)
    if kind == 0 or original.event is None or "ok" not in original.allowed:
        return Hostile(
            "duplicate",
            original.topic,
            original.key,
            original.value,
            original.create_ms,
            original.allowed,
            original.event,
        )
    first = original.event
    topic, doc, counted = _event(src, first.event_id, first.ts_ms, first.channel)
    if kind == 1:
        while topic != original.topic:
            topic, doc, counted = _event(src, first.event_id, first.ts_ms, first.channel)
        case, key = "duplicate", original.key
    else:
        while topic == original.topic:
            topic, doc, counted = _event(src, first.event_id, first.ts_ms, first.channel)
        case, key = "id-reused-on-another-topic", counted.channel.encode()
    return Hostile(case, topic, key, _dumps(doc), original.create_ms, original.allowed, counted)


_BUILDERS: dict[str, Callable[[Source, _Ctx], Hostile]] = {
    "good": _good,
    "ts-rfc3339": _good_rfc3339,
    "name-at-limit": _names_at_limit,
    "name-control": _name_control,
    "name-separator": _name_separator,
    "name-unicode": _name_unicode,
    "name-too-long": _name_too_long,
    "name-empty": _name_empty,
    "name-reserved": _name_reserved,
    "bad-type": _bad_type,
    "money-nan-inf": _money_literal,
    "money-edge": _money_edge,
    "ts-microseconds": _ts_micros,
    "ts-2100": _ts_2100,
    "ts-negative-or-seconds": _ts_impossible,
    "ts-far-past": _ts_far_past,
    "ts-late": _ts_late,
    "createtime-odd": _create_time_odd,
    "not-json": _not_json,
    "huge-record": _huge_record,
    "odd-key": _odd_key,
    "huge-key-rejected": _huge_key_rejected,
    "duplicate": _duplicate,
}
# Draw weights: good traffic around every kind of bad record, the costly ones (1 MB) rarely.
_WEIGHTS = {
    "good": 100,
    "duplicate": 30,
    "ts-late": 25,
    "bad-type": 25,
    "not-json": 15,
    "huge-record": 1,
    "huge-key-rejected": 1,
}
_WEIGHTED = [name for name in _BUILDERS for _ in range(_WEIGHTS.get(name, 10))]
#: The cases that make records of hundreds of kilobytes (costly to build and to cut for the DLQ).
_HUGE = frozenset({"huge-record", "huge-key-rejected"})

#: Every case a test must have drawn (``createtime-odd`` as its two variants), and the campaign flood.
CASES: tuple[str, ...] = tuple(
    sorted(
        ({*_BUILDERS} - {"createtime-odd"})
        | {"createtime-2100", "createtime-not-positive", "id-reused-on-another-topic", "campaign-flood"}
    )
)


@st.composite
def traffic(
    draw: Draw,
    prefix: str,
    start_ms: int,
    min_records: int = 40,
    max_records: int = 160,
    step_ms: int = 20_000,
    max_huge: int = 2,
) -> list[Hostile]:
    """Records of hostile trackers from ``start_ms`` on: honest traffic with every kind of bad record in it;
    the honest clock moves up to ``step_ms`` per record; at most ``max_huge`` records of 300 KB and more."""
    src = Source(draw, random.Random(draw(st.integers(0, 2**64 - 1))))
    n = src.int(min_records, max_records)
    records: list[Hostile] = []
    clock = start_ms
    huge = 0
    for i in range(n):
        clock += src.int(0, step_ms)
        case = src.pick(_WEIGHTED)
        if case in _HUGE:
            huge += 1
            case = case if huge <= max_huge else "good"
        records.append(_BUILDERS[case](src, _Ctx(f"{prefix}-{i}", clock, records)))
    return records


def campaign_flood(
    prefix: str, channel: str, ts_ms: int, campaigns: int, name_length: int = 120
) -> list[Hostile]:
    """One channel with ``campaigns`` distinct long campaign names in one minute: a block partial far past
    1 MB unless campaigns are capped (the overflow counted under one row) or partials split."""
    records = []
    for i in range(campaigns):
        campaign = f"{i:05d}-".ljust(name_length, "f")
        event = Counted(f"{prefix}-{i}", ts_ms, channel, campaign, (("impressions", 1),))
        doc = {
            "event_id": event.event_id,
            "ts": ts_ms,
            "channel": channel,
            "campaign": campaign,
            "type": "impression",
        }
        records.append(
            Hostile("campaign-flood", "clicks", channel.encode(), _dumps(doc), ts_ms + 1, OK, event)
        )
    return records


# -- the ground truth ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    """A record where it landed: full topic name, partition and offset, and when it was sent by a clock the
    tracker does not control (0: unknown, the judge's own clock stands in)."""

    record: Hostile
    topic: str
    partition: int
    offset: int
    sent_ms: int = 0

    @property
    def pos(self) -> Pos:
        return (self.topic, self.partition, self.offset)


@dataclass
class Judgement:
    """What the contract says the pipeline must have done with a stream of records."""

    truth: dict[Cell, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * len(SLOTS)))
    #: Records counted per (channel, campaign) minute and all-time total: for the fault table.
    records_in: Counter[Cell] = field(default_factory=Counter)
    counted: int = 0
    problems: list[str] = field(default_factory=list)
    cases: Counter[str] = field(default_factory=Counter)


def windows_of(ts_ms: int) -> list[tuple[str, int]]:
    """The buckets an event time falls in, by the contract: 1m, 1h and 1d (Asia/Shanghai days), total."""
    ts_s = ts_ms // 1000
    local_day = (ts_s + 8 * 3600) // 86400 * 86400 - 8 * 3600  # Asia/Shanghai: UTC+8, no DST
    return [("1m", ts_s - ts_s % 60), ("1h", ts_s - ts_s % 3600), ("1d", local_day), ("total", 0)]


def judge(
    placed: Iterable[Placed], rejected: Mapping[Pos, str], grace_ms: int, trusted_now_ms: int
) -> Judgement:
    """Replay the contract over ``placed`` records, using the pipeline's verdicts only where the contract
    allows a choice; ``rejected`` maps a record's position to the DLQ reason it got.

    Per source partition: a record counts once if its base verdict is "ok", its ``event_id`` was not taken
    on the partition before (by any valid, non-future record; else it is a ``duplicate``), and its 1-minute
    window had not closed (window end + grace ≤ the partition's watermark; else it is ``late``). The
    watermark is the newest event time counted there, never ahead of the trusted clock (when the record was
    sent, else ``trusted_now_ms``): a tracker's clock cannot move it into the future.
    """
    out = Judgement()
    by_partition: dict[tuple[str, int], list[Placed]] = defaultdict(list)
    for item in placed:
        by_partition[(item.topic, item.partition)].append(item)
    for items in by_partition.values():
        watermark = 0
        seen: set[str] = set()
        for item in sorted(items, key=lambda p: p.offset):
            record, reason = item.record, rejected.get(item.pos)
            out.cases[record.case] += 1
            where = f"{item.topic}/{item.partition}@{item.offset} {record.describe()}"
            judged = reason in ("late", "duplicate")  # the partition's state decides these, not the record
            if reason is not None and not judged:
                if reason in record.allowed:
                    continue
                out.problems.append(
                    f"rejected as {reason!r}, allowed {sorted(record.allowed)} [{record.case}]: {where}"
                )
                if "ok" not in record.allowed:
                    continue
                # The contract counts it: it goes on as if it had not been rejected, so it shows as lost.
                reason = None
            elif "ok" not in record.allowed or record.event is None:
                verdict = f"rejected as {reason!r}" if reason else "not rejected"
                out.problems.append(
                    f"{verdict}, allowed only {sorted(record.allowed)} [{record.case}]: {where}"
                )
                continue
            event = record.event
            assert event is not None
            minute_end = event.ts_ms - event.ts_ms % 60_000 + 60_000
            closed = minute_end + grace_ms <= watermark
            if event.event_id in seen:
                # A copy of an id whose window closed may be judged late instead (its id forgotten with it).
                if reason != "duplicate" and not (reason == "late" and closed):
                    verdict = f"rejected as {reason!r}, its window open" if reason else "not rejected"
                    out.problems.append(f"duplicate {verdict} [{record.case}]: {where}")
                continue
            seen.add(event.event_id)
            if reason == "duplicate":
                out.problems.append(f"rejected as 'duplicate', its id new [{record.case}]: {where}")
            elif closed and reason is None:
                out.problems.append(f"not rejected as 'late' [{record.case}]: watermark {watermark}, {where}")
            elif reason == "late" and not closed:
                out.problems.append(
                    f"rejected as 'late', its window open [{record.case}]: watermark {watermark}, {where}"
                )
            if closed:
                continue
            out.counted += 1
            watermark = max(watermark, min(event.ts_ms, item.sent_ms or trusted_now_ms))
            for window, start in windows_of(event.ts_ms):
                vector = out.truth[(event.channel, event.campaign, window, start)]
                for slot, amount in event.amounts:
                    vector[_SLOT[slot]] += amount
            out.records_in[(event.channel, event.campaign, "1m", windows_of(event.ts_ms)[0][1])] += 1
            out.records_in[(event.channel, event.campaign, "total", 0)] += 1
    return out


#: The campaign the campaigns beyond the cap are counted under.
OVERFLOW = "(other)"


def compare(
    truth: Mapping[Cell, list[int]], got: Mapping[Cell, list[int]], windows: Iterable[str]
) -> list[str]:
    """Differences between the expected and the counted cells of ``windows``.

    A channel with more campaigns than the cap counts the overflow under the campaign ``(other)``: then
    each campaign may have part or all of its counts there (the cap applies per block, first come first
    kept), never more than it was sent, and ``(other)`` holds exactly what the campaigns lack.
    """
    wanted = set(windows)
    problems: list[str] = []
    zero = [0] * len(SLOTS)
    groups: dict[tuple[str, str, int], dict[str, tuple[list[int] | None, list[int] | None]]] = defaultdict(
        dict
    )
    for (channel, campaign, window, start), vector in truth.items():
        if window in wanted:
            groups[(channel, window, start)][campaign] = (vector, None)
    for (channel, campaign, window, start), vector in got.items():
        if window in wanted:
            expected = groups[(channel, window, start)].get(campaign, (None, None))[0]
            groups[(channel, window, start)][campaign] = (expected, vector)
    for (channel, window, start), campaigns in groups.items():
        expected_other, overflow = campaigns.get(OVERFLOW, (None, None))
        if expected_other is not None:  # a tracker's own "(other)": the name rules refuse it
            problems.append(f"counts under the reserved campaign: {(channel, OVERFLOW, window, start)}")
        lacking = zero
        for campaign, (expected, counted) in campaigns.items():
            cell = (channel, campaign, window, start)
            if campaign == OVERFLOW:
                continue
            if expected is None:
                if counted is not None and any(counted):
                    problems.append(f"counts nobody sent: {_named(counted)} in {cell}")
                continue
            counted = counted or zero
            if overflow is None and counted != expected:
                problems.append(
                    f"window counts differ: {cell} got {_named(counted)}, expected {_named(expected)}"
                )
            elif overflow is not None:
                if any(c > e for c, e in zip(counted, expected, strict=True)):
                    problems.append(
                        f"window counts over: {cell} got {_named(counted)}, expected {_named(expected)}"
                    )
                lacking = [a + e - c for a, e, c in zip(lacking, expected, counted, strict=True)]
        if overflow is not None and not all(_same_sum(o, a) for o, a in zip(overflow, lacking, strict=True)):
            problems.append(
                f"overflow row differs: {(channel, window, start)} campaigns lack {_named(lacking)}, "
                f"{OVERFLOW} holds {_named(overflow)}"
            )
    return problems


def _same_sum(shown: int, summed: int) -> bool:
    """Equal, or as near as a double can tell: Redis shows money as currency units in a double, exact up to
    2**53 micro-units; beyond, a sum of shown values may differ from the shown sum in its last bits."""
    largest = max(abs(shown), abs(summed))
    return shown == summed or (largest > 2**53 and abs(shown - summed) <= largest * 2**-50)


def _named(vector: list[int] | None) -> str:
    if vector is None:
        return "nothing"
    return (
        "{" + ", ".join(f"{name}={value}" for name, value in zip(SLOTS, vector, strict=True) if value) + "}"
    )


def tally(
    judgement: Judgement,
    got: Mapping[Cell, list[int]],
    *,
    truth: Mapping[Cell, list[int]] | None = None,
    window: str = "1m",
    named_only: bool = False,
) -> tuple[int, int]:
    """Records lost and double-counted, by campaign cell of ``window`` (1m or total): every record of a cell
    that came out short counts as lost, of one that came out over as double-counted; a cell nobody sent to
    counts once. ``truth``: the expected cells as ``got`` shows them (default: the judgement's own);
    ``named_only`` leaves out the cells of events without a campaign (where Redis shows the channel's sum).
    """
    expected_cells = judgement.truth if truth is None else truth
    lost = doubled = 0
    for cell, records in judgement.records_in.items():
        if cell[2] != window or (named_only and cell[1] == "-"):
            continue
        expected = expected_cells.get(cell, [0] * len(SLOTS))
        counted = got.get(cell, [0] * len(SLOTS))
        if counted != expected:
            if any(c < e for c, e in zip(counted, expected, strict=True)):
                lost += records
            else:
                doubled += records
    doubled += sum(
        1
        for cell, counted in got.items()
        if cell[2] == window
        and cell not in expected_cells
        and any(counted)
        and not (named_only and cell[1] == "-")
    )
    return lost, doubled


def summarize(problems: Iterable[str], examples: int = 2) -> str:
    """Problems grouped by kind (the text before the first ": "), most frequent first, with examples."""
    groups: defaultdict[str, list[str]] = defaultdict(list)
    for problem in problems:
        kind, _, detail = problem.partition(": ")
        groups[kind].append(detail)
    lines = []
    for kind, details in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- {kind}: {len(details)}")
        lines += [f"    e.g. {detail[:500]}" for detail in details[:examples]]
    return "\n".join(lines)
