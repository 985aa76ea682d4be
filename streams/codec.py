"""Decoding tracker records on the hot path: orjson, a shape check, and the pydantic models as referee.

``decode`` turns one record value into the contribution it makes to the counters, or a ``Rejection``
that says why not. Records in the common shape (exact types, int ``ts``) are checked by hand, which
costs about a microsecond; anything else (RFC 3339 ``ts``, a missing field, a wrong type) goes to the
pydantic model in ``streams.events``, which either accepts it (normalised) or explains the error.
A property test holds the two paths to the same verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

import orjson
from pydantic import ValidationError

from streams.events import (
    CLICK_TYPES,
    MAX_MONEY,
    MAX_TS_MS,
    MICROS,
    MIN_TS_MS,
    MODELS,
    NO_CAMPAIGN,
    OVERFLOW_CAMPAIGN,
    ClickEvent,
    OrderEvent,
    SpendEvent,
    validation_problems,
)

# Slots of the counter vector every window bucket holds.
IMPRESSIONS, CLICKS, VISITS, CARTS, ORDERS, GMV, SPEND, NEW_CUSTOMERS = range(8)
N_SLOTS: Final = 8
SLOT_NAMES: Final = ("impressions", "clicks", "visits", "carts", "orders", "gmv", "spend", "new_customers")
#: Slots holding money in integer micro-units.
MONEY_SLOTS: Final = frozenset({GMV, SPEND})

_CLICK_SLOT: Final = {name: slot for slot, name in enumerate(CLICK_TYPES)}
_MAX_COUNT: Final = 1_000_000_000

#: A contribution: ((slot, amount), ...) added to one bucket.
Contribution = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was not counted. ``reason`` is a stable code; ``detail`` is for humans.

    Codes: ``not_json``, ``invalid`` (a field's type or value, ``ts`` outside 2000-2100 included),
    ``bad_name`` (a channel or campaign breaking ``streams.events.NAME_RULE``), ``oversized``; the fold
    adds ``future``, ``late`` and ``error`` (handling the record raised; the detail names the exception).

    ``field`` names the first offending field where one is to blame, and ``problem`` says how: ``missing``
    or ``invalid`` (present, but of the wrong type or value). Every reason is documented in docs/events.md
    ("Rejects"); a test holds the code and that list together.
    """

    reason: str
    detail: str
    field: str | None = None
    problem: str | None = None


class Accepted(NamedTuple):
    """A valid event, reduced to what the fold needs (a tuple: built at C speed on the hot path)."""

    event_id: str
    ts_ms: int
    channel: str
    campaign: str
    contribution: Contribution


_accepted = tuple.__new__  # Accepted without a Python-level __new__ call, for the hot path


def to_micros(amount: float | int) -> int:
    """Money in integer micro-units: exact for integers, and for decimals with up to six places."""
    return amount * MICROS if type(amount) is int else round(amount * MICROS)


def _ok_str(value: object, longest: int) -> bool:
    return type(value) is str and 0 < len(value) <= longest


def _fast_money(value: object) -> int | None:
    kind = type(value)
    if (kind is float and math.isfinite(value) or kind is int) and 0 <= value <= MAX_MONEY:  # type: ignore[arg-type, operator]
        return to_micros(value)  # type: ignore[arg-type]
    return None


#: Names the hand check passed, so that a name seen before costs one set lookup instead of a scan of its
#: characters (a few dozen channels and some thousands of campaigns recur in every record). Bounded: a
#: stream of ever new names empties them now and then, which only costs the scans again.
_KNOWN_NAMES_MAX: Final = 65_536
_good_channels: set[str] = set()
_good_campaigns: set[str] = set()


def _good_name(value: str, longest: int, known: set[str]) -> bool:
    """Whether ``value`` (a str) is a name of the common kind; remembered in ``known`` if so.

    The common good name only: ``streams.events.name_problem`` decides the rest, on the model's path.
    """
    if not (
        0 < len(value) <= longest
        and value.isprintable()
        and "|" not in value
        and "/" not in value
        and ":" not in value
    ):
        return False
    if len(known) >= _KNOWN_NAMES_MAX:
        known.clear()
    known.add(value)
    return True


#: The contribution of a single click of each type (the common count), built once.
_ONE_CLICK: Final = {name: ((slot, 1),) for name, slot in _CLICK_SLOT.items()}


def _fast_click(doc: dict[str, object]) -> Accepted | None:
    """``_fast`` of a ``clicks`` record: the checks of ``_common`` and the click's own, in one frame (the
    fold's hot path calls it for every click)."""
    try:  # a subscript is faster than get; a required field missing is the model's to explain
        event_id = doc["event_id"]
        ts = doc["ts"]
        channel = doc["channel"]
        kind = doc["type"]
    except KeyError:
        return None
    campaign = doc.get("campaign", NO_CAMPAIGN)
    region = doc.get("region")
    count = doc.get("count", 1)
    click_id = doc.get("click_id")
    if not (
        type(event_id) is str
        and 0 < len(event_id) <= 128
        and type(ts) is int
        and MIN_TS_MS <= ts <= MAX_TS_MS
        and type(channel) is str
        and (channel in _good_channels or _good_name(channel, 64, _good_channels))
        and type(campaign) is str
        and (
            campaign in _good_campaigns
            or (campaign != OVERFLOW_CAMPAIGN and _good_name(campaign, 128, _good_campaigns))
        )
        and (region is None or (type(region) is str and len(region) <= 64))
        and type(kind) is str
        and (click_id is None or type(click_id) is str)
    ):
        return None
    if count == 1 and type(count) is int:
        contribution = _ONE_CLICK.get(kind)
        if contribution is None:
            return None
    else:
        slot = _CLICK_SLOT.get(kind)
        if slot is None or type(count) is not int or not 1 <= count <= _MAX_COUNT:
            return None
        contribution = ((slot, count),)
    return _accepted(Accepted, (event_id, ts, channel, campaign, contribution))


def _common(doc: dict[str, object]) -> tuple[str, int, str, str] | None:
    """The fields every topic shares, checked by hand: ``(event_id, ts, channel, campaign)`` or ``None``."""
    event_id = doc.get("event_id")
    ts = doc.get("ts")
    channel = doc.get("channel")
    campaign = doc.get("campaign", NO_CAMPAIGN)
    region = doc.get("region")
    if not (
        type(event_id) is str
        and 0 < len(event_id) <= 128
        and type(ts) is int
        and MIN_TS_MS <= ts <= MAX_TS_MS
        and type(channel) is str
        and (channel in _good_channels or _good_name(channel, 64, _good_channels))
        and type(campaign) is str
        and (
            campaign in _good_campaigns
            or (campaign != OVERFLOW_CAMPAIGN and _good_name(campaign, 128, _good_campaigns))
        )
        and (region is None or (type(region) is str and len(region) <= 64))
    ):
        return None
    return event_id, ts, channel, campaign


def _fast(topic: str, doc: dict[str, object], currency: str) -> Accepted | None:
    """The common shape, checked by hand; ``None`` means "ask the model"."""
    if topic == "clicks":
        return _fast_click(doc)
    common = _common(doc)
    if common is None:
        return None
    cur = doc.get("currency")
    if cur is not None and (type(cur) is not str or len(cur) != 3 or cur.upper() != currency):
        return None
    if topic == "orders":
        amount = _fast_money(doc.get("amount"))
        new_customer = doc.get("new_customer")
        click_id = doc.get("click_id")
        if (
            amount is None
            or not _ok_str(doc.get("order_id"), 128)
            or (new_customer is not None and type(new_customer) is not bool)
            or (click_id is not None and type(click_id) is not str)
        ):
            return None
        contribution: Contribution = (
            ((ORDERS, 1), (GMV, amount), (NEW_CUSTOMERS, 1)) if new_customer else ((ORDERS, 1), (GMV, amount))
        )
    elif topic == "spend":
        cost = _fast_money(doc.get("cost"))
        if cost is None:
            return None
        contribution = ((SPEND, cost),)
    else:
        return None
    return _accepted(Accepted, (*common, contribution))


def fast_check(topic: str, currency: str) -> Callable[[dict[str, object]], Accepted | None]:
    """The hand check of ``topic``'s common shape for a loop over one topic's records, as ``_fast``: an
    ``Accepted``, or ``None`` for "ask ``decode``" (which gives the model's verdict)."""
    if topic == "clicks":
        return _fast_click
    return lambda doc: _fast(topic, doc, currency)


def _from_model(topic: str, doc: dict[str, object], currency: str) -> Accepted | Rejection:
    try:
        event = MODELS[topic].model_validate(doc, context={"currency": currency})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        bad_name = next((error for error in errors if error["type"] == "bad_name"), None)
        first = bad_name or errors[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        return Rejection(
            "bad_name" if bad_name else "invalid",
            validation_problems(exc, most=3),
            where,
            "missing" if first["type"] == "missing" else "invalid",
        )
    if isinstance(event, ClickEvent):
        contribution: Contribution = ((_CLICK_SLOT[event.type], event.count),)
    elif isinstance(event, OrderEvent):
        contribution = ((ORDERS, 1), (GMV, to_micros(event.amount)))
        if event.new_customer:
            contribution += ((NEW_CUSTOMERS, 1),)
    elif isinstance(event, SpendEvent):
        contribution = ((SPEND, to_micros(event.cost)),)
    else:  # pragma: no cover - MODELS only holds the three
        raise TypeError(type(event))
    return Accepted(event.event_id, event.ts, event.channel, event.campaign, contribution)


def decode(topic: str, value: bytes | None, currency: str, max_bytes: int) -> Accepted | Rejection:
    """Decode one record value of a source topic (``clicks``, ``orders``, ``spend``)."""
    if value is None:
        return Rejection("invalid", "record has no value (tombstone)")
    if len(value) > max_bytes:
        return Rejection("oversized", f"record is {len(value)} bytes, more than the limit of {max_bytes}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection("not_json", f"value is not valid UTF-8 JSON: {exc}")
    if type(doc) is not dict:
        return Rejection("invalid", f"value must be a JSON object, got {type(doc).__name__}")
    fast = _fast(topic, doc, currency)
    return fast if fast is not None else _from_model(topic, doc, currency)
