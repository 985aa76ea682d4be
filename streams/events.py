"""Event models exactly as CONTRACT.md §1: the reference definition of what trackers may send.

The fold stage's hot path (``streams.codec``) accepts only records these models would accept, and asks
these models whenever a record is not in the common shape, so that the reason a record is rejected
always comes from one place and reads the same.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

#: The campaign of an event that names none (and of channel-level aggregates).
NO_CAMPAIGN = "-"
#: Epoch milliseconds before 2000-01-01: almost always a seconds value sent by mistake.
MIN_TS_MS = 946_684_800_000
#: Epoch milliseconds after 2100-01-01: almost always microseconds or nanoseconds sent by mistake.
MAX_TS_MS = 4_102_444_800_000
#: Money is kept in integer micro-units so that sums are exact and order-independent.
MICROS = 1_000_000
#: No single order or cost is larger than this (a trillion currency units): anything above is junk.
MAX_MONEY = 10**12
CLICK_TYPES: tuple[str, ...] = ("impression", "click", "visit", "cart")
#: The campaign under which a channel's campaigns beyond ``ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL`` are counted.
OVERFLOW_CAMPAIGN: Final = "(other)"

NAME_RULE: Final = (
    "A channel is 1-64 and a campaign 1-128 Unicode characters. Names may not contain control characters "
    "(U+0000-U+001F, U+007F-U+009F; U+001F separates the worker's table keys), format characters "
    "(Unicode category Cf: zero-width and bidirectional controls such as U+200B or U+202E), surrogates, "
    "line or paragraph separators (U+2028, U+2029), nor the separators adpulse joins names with: '|' "
    "(Redis fields), '/' (budget keys) and ':' (alert fingerprints). The campaign "
    f"{OVERFLOW_CAMPAIGN!r} is reserved. Names are taken as sent: nothing is trimmed or normalised."
)
"""The rule every channel and campaign name must follow (``name_problem`` applies it), in one place.

Why: names are joined into keys (``channel\\x1fwindow\\x1fstart`` in the worker's table,
``channel|campaign|...`` in Redis, ``channel/campaign`` on the budgets topic, ``kind:metric:channel:campaign``
in alert fingerprints), become Prometheus label values and are shown in chat messages; a name holding a
separator or an invisible character would split wrongly, collide with another name or display as
something else. A record breaking the rule goes to the DLQ as ``bad_name``.
"""

_SEPARATORS: Final = "|/:"
_BAD_CATEGORIES: Final = {
    "Cc": "a control character",
    "Cf": "a format character",
    "Cs": "a surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def name_problem(value: str) -> str | None:
    """Why ``value`` breaks ``NAME_RULE`` (its length aside), or ``None`` if it is a good name."""
    # str.isprintable is False for every category the rule forbids (and for a few it allows, such as
    # U+3000): the common name is settled in C, the rest character by character.
    if value.isprintable() and "|" not in value and "/" not in value and ":" not in value:
        return None
    for char in value:
        if char in _SEPARATORS:
            return f"contains {char!r}, a separator adpulse joins names with"
        kind = _BAD_CATEGORIES.get(unicodedata.category(char))
        if kind is not None:
            return f"contains U+{ord(char):04X} ({kind})"
    return None


def _good_name(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise PydanticCustomError(
            "bad_name", "{problem} (see 'Names' in docs/operations.md)", {"problem": problem}
        )
    return value


def _good_campaign(value: str) -> str:
    if value == OVERFLOW_CAMPAIGN:
        raise PydanticCustomError(
            "bad_name", "{campaign} is reserved for the campaigns beyond the cap", {"campaign": value}
        )
    return _good_name(value)


def _parse_ts(value: object) -> int:
    """Event time as int epoch milliseconds, from int milliseconds or an RFC 3339 string."""
    if isinstance(value, bool):
        raise ValueError("ts must be epoch milliseconds (int) or an RFC 3339 string, not a boolean")
    if isinstance(value, int):
        if value < MIN_TS_MS:
            raise ValueError(
                f"ts {value} is before 2000-01-01 in epoch milliseconds; was it sent in seconds?"
            )
        if value > MAX_TS_MS:
            raise ValueError(
                f"ts {value} is after 2100-01-01 in epoch milliseconds; was it sent in microseconds?"
            )
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"ts {value!r} is not an RFC 3339 timestamp") from exc
        if parsed.tzinfo is None:
            raise ValueError(f"ts {value!r} has no UTC offset; RFC 3339 needs one (e.g. 'Z' or '+08:00')")
        # Integer arithmetic: float seconds * 1000 would cut some milliseconds short.
        return _parse_ts((parsed - _EPOCH) // timedelta(milliseconds=1))
    raise ValueError("ts must be epoch milliseconds (int) or an RFC 3339 string")


def _money(value: object) -> float | int:
    # The number keeps its JSON type: an integer amount converts to micro-units exactly.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    if not math.isfinite(value):
        raise ValueError("must be finite")
    if value < 0:
        raise ValueError("must not be negative")
    if value > MAX_MONEY:
        raise ValueError(f"must be at most {MAX_MONEY:.0e} currency units")
    return value


#: RFC 3339 with a UTC offset, as ``_parse_ts`` reads it (the JSON Schema's ``format: date-time`` is only
#: an annotation in most validators, so the published schema carries the pattern too).
RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"

# The validators below take JSON values pydantic's own schema would describe wrongly (an int or a string;
# an int or a float with bounds), so the published JSON Schema states what they accept.
EpochMs = Annotated[
    int,
    BeforeValidator(_parse_ts),
    WithJsonSchema(
        {
            "description": "event time: int epoch milliseconds (UTC), or an RFC 3339 string with an offset",
            "oneOf": [
                {"type": "integer", "minimum": MIN_TS_MS, "maximum": MAX_TS_MS},
                {"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN},
            ],
        }
    ),
]
Money = Annotated[
    float | int,
    BeforeValidator(_money),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_MONEY}),
]
ChannelName = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_good_name)]
CampaignName = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(_good_campaign)]


class Event(BaseModel):
    """Fields every event carries."""

    # Attribute docstrings are the field descriptions of the published JSON Schema (docs/schemas/).
    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    """Unique per event: a repeated event_id (on the same partition) is counted once."""
    ts: EpochMs
    """When it happened (not when it was sent): int epoch milliseconds UTC, or RFC 3339 with an offset."""
    channel: ChannelName
    """The ad channel, e.g. douyin, taobao, wechat; also the Kafka key."""
    campaign: CampaignName = NO_CAMPAIGN
    """The campaign within the channel; '-' (the default) means none."""
    region: Annotated[StrictStr, Field(max_length=64)] | None = None
    """For drill-down (not aggregated yet)."""


class _Priced(Event):
    currency: Annotated[StrictStr, Field(min_length=3, max_length=3)] | None = None
    """ISO 4217 code; must be the configured currency (ADPULSE_CURRENCY, default CNY) when given."""

    @field_validator("currency")
    @classmethod
    def _configured_currency(cls, value: str | None, info: ValidationInfo) -> str | None:
        expected = (info.context or {}).get("currency")
        if value is not None and expected is not None and value.upper() != expected:
            raise ValueError(f"currency {value!r} is not the configured currency {expected!r}")
        return value


class ClickEvent(Event):
    """adpulse.clicks: one funnel step (impression → click → visit → cart), optionally pre-aggregated."""

    type: Literal["impression", "click", "visit", "cart"]
    """The funnel step: exposure → click → landing-page visit → add-to-cart."""
    count: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)] = 1
    """How many such steps this record stands for (trackers that pre-aggregate impressions)."""
    click_id: StrictStr | None = None
    """Joins a click to the visit, cart and order that follow it."""


class OrderEvent(_Priced):
    """adpulse.orders: an order and its GMV."""

    order_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    """The order system's id."""
    amount: Money
    """GMV of the order in currency units (not cents)."""
    click_id: StrictStr | None = None
    """The click the order came from, if known."""
    new_customer: StrictBool | None = None
    """Whether the buyer ordered for the first time."""


class SpendEvent(_Priced):
    """adpulse.spend: incremental ad cost."""

    cost: Money
    """Ad cost incurred since the previous spend record, in currency units (an increment, not a total)."""


class BudgetSetting(BaseModel):
    """adpulse.budgets: a budget for a channel or a (channel, campaign); ``amount=None`` deletes it."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    channel: ChannelName
    """The channel the budget is for; also the key (channel or channel/campaign)."""
    campaign: CampaignName | None = None
    """A campaign of the channel, or absent for the whole channel."""
    period: Literal["day", "month", "total"]
    """Day and month in ADPULSE_TZ; total has no end."""
    amount: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None
    """The budget in currency units; null deletes the budget."""
    owner: StrictStr | None = None
    """Chat handle of who approves going past 80 %."""
    reserve_pct: Annotated[float, Field(ge=0, le=50)] = 0.0
    """Share of the budget held back: alerts judge spend against amount × (1 − reserve_pct / 100)."""


def validation_problems(
    exc: ValidationError,
    *,
    whole: str = "record",
    most: int | None = None,
    spell: Callable[[tuple[int | str, ...]], str] | None = None,
) -> str:
    """A validation error as one line, ``field.sub: message; ...``, for a DLQ reason, a log or a CLI error.

    ``whole`` names a problem of the whole input (it has no field); ``most`` keeps the first problems only;
    ``spell`` writes a field's location another way (``ADPULSE_REDIS_URL`` for a setting).
    """
    where = spell or (lambda loc: ".".join(map(str, loc)))
    return "; ".join(f"{where(e['loc']) or whole}: {e['msg']}" for e in exc.errors(include_url=False)[:most])


#: The model for each source topic's short name.
MODELS: dict[str, type[Event]] = {"clicks": ClickEvent, "orders": OrderEvent, "spend": SpendEvent}
