"""streams.codec + streams.events: every accept and reject case of CONTRACT.md §1, and the two paths agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streams.codec import (
    _KNOWN_NAMES_MAX,
    CARTS,
    CLICKS,
    GMV,
    IMPRESSIONS,
    NEW_CUSTOMERS,
    ORDERS,
    SPEND,
    VISITS,
    Accepted,
    Contribution,
    Rejection,
    _fast,
    _from_model,
    _good_campaigns,
    _good_channels,
    decode,
    to_micros,
)
from streams.events import (
    MAX_TS_MS,
    MIN_TS_MS,
    MODELS,
    NAME_RULE,
    NO_CAMPAIGN,
    OVERFLOW_CAMPAIGN,
    BudgetSetting,
    name_problem,
)

CUR = "CNY"
MAX = 64 * 1024
T = 1_700_000_000_000  # 2023-11-14T22:13:20Z
T_RFC = "2023-11-14T22:13:20Z"


def click(**over: object) -> dict[str, object]:
    return _with({"event_id": "e-1", "ts": T, "channel": "douyin", "type": "click"}, over)


def order(**over: object) -> dict[str, object]:
    return _with({"event_id": "o-1", "ts": T, "channel": "taobao", "order_id": "A1", "amount": 299.5}, over)


def spend(**over: object) -> dict[str, object]:
    return _with({"event_id": "s-1", "ts": T, "channel": "wechat", "cost": 12.25}, over)


_MISSING = object()


def _with(doc: dict[str, object], over: dict[str, object]) -> dict[str, object]:
    doc = dict(doc)
    for key, value in over.items():
        if value is _MISSING:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


BUILDERS = {"clicks": click, "orders": order, "spend": spend}


def dec(topic: str, doc: object, currency: str = CUR) -> Accepted | Rejection:
    return decode(topic, orjson.dumps(doc), currency, MAX)


# -- accepted ------------------------------------------------------------------------------------

ACCEPT = [
    # (id, topic, doc, expected ts_ms, campaign, contribution)
    ("impression", "clicks", click(type="impression"), T, "-", ((IMPRESSIONS, 1),)),
    ("click", "clicks", click(), T, "-", ((CLICKS, 1),)),
    ("visit", "clicks", click(type="visit"), T, "-", ((VISITS, 1),)),
    ("cart", "clicks", click(type="cart"), T, "-", ((CARTS, 1),)),
    ("pre-aggregated count", "clicks", click(type="impression", count=250), T, "-", ((IMPRESSIONS, 250),)),
    ("largest count", "clicks", click(count=1_000_000_000), T, "-", ((CLICKS, 1_000_000_000),)),
    ("campaign", "clicks", click(campaign="618-sale"), T, "618-sale", ((CLICKS, 1),)),
    ("region and click_id", "clicks", click(region="cn-east", click_id="ck-9"), T, "-", ((CLICKS, 1),)),
    ("null optionals", "clicks", click(region=None, click_id=None), T, "-", ((CLICKS, 1),)),
    (
        "extra fields ignored",
        "clicks",
        click(user={"id": 7}, tags=[1, 2], score=1.5, flag=None),
        T,
        "-",
        ((CLICKS, 1),),
    ),
    ("ts at 2000-01-01", "clicks", click(ts=MIN_TS_MS), MIN_TS_MS, "-", ((CLICKS, 1),)),
    ("rfc3339 Z", "clicks", click(ts=T_RFC), T, "-", ((CLICKS, 1),)),
    ("rfc3339 lower z", "clicks", click(ts="2023-11-14t22:13:20z"), T, "-", ((CLICKS, 1),)),
    ("rfc3339 +08:00", "clicks", click(ts="2023-11-15T06:13:20+08:00"), T, "-", ((CLICKS, 1),)),
    ("rfc3339 +05:30", "clicks", click(ts="2023-11-15T03:43:20+05:30"), T, "-", ((CLICKS, 1),)),
    ("rfc3339 -05:00", "clicks", click(ts="2023-11-14T17:13:20-05:00"), T, "-", ((CLICKS, 1),)),
    ("rfc3339 millis", "clicks", click(ts="2023-11-14T22:13:20.250Z"), T + 250, "-", ((CLICKS, 1),)),
    (
        "longest strings",
        "clicks",
        click(event_id="e" * 128, channel="c" * 64, campaign="k" * 128, region="r" * 64),
        T,
        "k" * 128,
        ((CLICKS, 1),),
    ),
    ("order float", "orders", order(), T, "-", ((ORDERS, 1), (GMV, 299_500_000))),
    ("order int", "orders", order(amount=300), T, "-", ((ORDERS, 1), (GMV, 300_000_000))),
    ("order zero", "orders", order(amount=0), T, "-", ((ORDERS, 1), (GMV, 0))),
    ("order cents exact", "orders", order(amount=0.1), T, "-", ((ORDERS, 1), (GMV, 100_000))),
    ("order cents rounded", "orders", order(amount=2.01), T, "-", ((ORDERS, 1), (GMV, 2_010_000))),
    ("spend cents rounded", "spend", spend(cost=4.1), T, "-", ((SPEND, 4_100_000),)),
    (
        "order new customer",
        "orders",
        order(new_customer=True),
        T,
        "-",
        ((ORDERS, 1), (GMV, 299_500_000), (NEW_CUSTOMERS, 1)),
    ),
    (
        "order returning customer",
        "orders",
        order(new_customer=False),
        T,
        "-",
        ((ORDERS, 1), (GMV, 299_500_000)),
    ),
    ("order currency CNY", "orders", order(currency="CNY"), T, "-", ((ORDERS, 1), (GMV, 299_500_000))),
    ("order currency lower case", "orders", order(currency="cny"), T, "-", ((ORDERS, 1), (GMV, 299_500_000))),
    ("order currency null", "orders", order(currency=None), T, "-", ((ORDERS, 1), (GMV, 299_500_000))),
    (
        "order click_id + campaign",
        "orders",
        order(click_id="ck", campaign="c1"),
        T,
        "c1",
        ((ORDERS, 1), (GMV, 299_500_000)),
    ),
    (
        "order rfc3339",
        "orders",
        order(ts=T_RFC, new_customer=True),
        T,
        "-",
        ((ORDERS, 1), (GMV, 299_500_000), (NEW_CUSTOMERS, 1)),
    ),
    ("spend", "spend", spend(), T, "-", ((SPEND, 12_250_000),)),
    ("spend zero", "spend", spend(cost=0), T, "-", ((SPEND, 0),)),
    ("spend negative zero", "spend", spend(cost=-0.0), T, "-", ((SPEND, 0),)),
    ("spend currency", "spend", spend(currency="CNY"), T, "-", ((SPEND, 12_250_000),)),
    ("spend rfc3339", "spend", spend(ts=T_RFC), T, "-", ((SPEND, 12_250_000),)),
]


@pytest.mark.parametrize(
    ("topic", "doc", "ts_ms", "campaign", "contribution"),
    [case[1:] for case in ACCEPT],
    ids=[case[0] for case in ACCEPT],
)
def test_accepts(
    topic: str, doc: dict[str, object], ts_ms: int, campaign: str, contribution: Contribution
) -> None:
    result = dec(topic, doc)
    assert result == Accepted(str(doc["event_id"]), ts_ms, str(doc["channel"]), campaign, contribution)


def test_campaign_defaults_to_dash() -> None:
    result = dec("clicks", click())
    assert isinstance(result, Accepted)
    assert result.campaign == NO_CAMPAIGN == "-"


def test_exactly_max_bytes_is_accepted() -> None:
    doc = click()
    raw = orjson.dumps(doc)
    doc["pad"] = "x" * (MAX - len(raw) - len(b',"pad":""'))
    raw = orjson.dumps(doc)
    assert len(raw) == MAX
    assert isinstance(decode("clicks", raw, CUR, MAX), Accepted)


def test_whitespace_and_key_order_do_not_matter() -> None:
    raw = b'  {"type" : "cart" ,\n "channel":"douyin", "ts": 1700000000000, "event_id":"e-1"}  '
    assert decode("clicks", raw, CUR, MAX) == Accepted("e-1", T, "douyin", "-", ((CARTS, 1),))


# -- rejected ------------------------------------------------------------------------------------

REJECT_RAW = [
    # (id, topic, raw bytes or None, reason)
    ("tombstone", "clicks", None, "invalid"),
    ("empty", "clicks", b"", "not_json"),
    ("truncated", "clicks", b'{"event_id": "e-1"', "not_json"),
    ("single quotes", "clicks", b"{'event_id': 'e'}", "not_json"),
    ("not utf-8", "clicks", b'{"event_id": "\xff\xfe"}', "not_json"),
    (
        "NaN literal",
        "orders",
        b'{"event_id":"o","ts":1700000000000,"channel":"c","order_id":"A","amount":NaN}',
        "not_json",
    ),
    (
        "Infinity literal",
        "spend",
        b'{"event_id":"s","ts":1700000000000,"channel":"c","cost":Infinity}',
        "not_json",
    ),
    (
        "-Infinity literal",
        "spend",
        b'{"event_id":"s","ts":1700000000000,"channel":"c","cost":-Infinity}',
        "not_json",
    ),
    (
        "overflowing number",
        "spend",
        b'{"event_id":"s","ts":1700000000000,"channel":"c","cost":1e400}',
        "not_json",
    ),
    ("array", "clicks", b"[]", "invalid"),
    ("array of an event", "clicks", orjson.dumps([click()]), "invalid"),
    ("string", "clicks", b'"click"', "invalid"),
    ("number", "clicks", b"1700000000000", "invalid"),
    ("null", "clicks", b"null", "invalid"),
    ("true", "clicks", b"true", "invalid"),
    ("oversized", "clicks", orjson.dumps(click(pad="x" * MAX)), "oversized"),
    ("oversized non-json", "clicks", b"x" * (MAX + 1), "oversized"),
]


@pytest.mark.parametrize(
    ("topic", "raw", "reason"), [c[1:] for c in REJECT_RAW], ids=[c[0] for c in REJECT_RAW]
)
def test_rejects_raw(topic: str, raw: bytes | None, reason: str) -> None:
    result = decode(topic, raw, CUR, MAX)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail


REJECT_DOC = [
    # (id, topic, doc, field the detail must name)
    ("missing event_id", "clicks", click(event_id=_MISSING), "event_id"),
    ("missing ts", "clicks", click(ts=_MISSING), "ts"),
    ("missing channel", "clicks", click(channel=_MISSING), "channel"),
    ("missing type", "clicks", click(type=_MISSING), "type"),
    ("missing order_id", "orders", order(order_id=_MISSING), "order_id"),
    ("missing amount", "orders", order(amount=_MISSING), "amount"),
    ("missing cost", "spend", spend(cost=_MISSING), "cost"),
    ("event_id int", "clicks", click(event_id=17), "event_id"),
    ("event_id empty", "clicks", click(event_id=""), "event_id"),
    ("event_id too long", "clicks", click(event_id="e" * 129), "event_id"),
    ("event_id null", "clicks", click(event_id=None), "event_id"),
    ("channel empty", "clicks", click(channel=""), "channel"),
    ("channel too long", "clicks", click(channel="c" * 65), "channel"),
    ("channel list", "clicks", click(channel=["douyin"]), "channel"),
    ("campaign empty", "clicks", click(campaign=""), "campaign"),
    ("campaign too long", "clicks", click(campaign="k" * 129), "campaign"),
    ("campaign int", "clicks", click(campaign=618), "campaign"),
    ("region too long", "clicks", click(region="r" * 65), "region"),
    ("region int", "clicks", click(region=1), "region"),
    ("ts in seconds", "clicks", click(ts=T // 1000), "ts"),
    ("ts before 2000", "clicks", click(ts=MIN_TS_MS - 1), "ts"),
    ("ts negative", "clicks", click(ts=-1), "ts"),
    ("ts float", "clicks", click(ts=float(T)), "ts"),
    ("ts bool", "clicks", click(ts=True), "ts"),
    ("ts null", "clicks", click(ts=None), "ts"),
    ("ts digits string", "clicks", click(ts=str(T)), "ts"),
    ("ts garbage string", "clicks", click(ts="yesterday"), "ts"),
    ("ts rfc3339 without offset", "clicks", click(ts="2023-11-14T22:13:20"), "ts"),
    ("ts date only", "clicks", click(ts="2023-11-14"), "ts"),
    ("ts rfc3339 before 2000", "clicks", click(ts="1999-12-31T23:59:59Z"), "ts"),
    ("type unknown", "clicks", click(type="purchase"), "type"),
    ("type wrong case", "clicks", click(type="Click"), "type"),
    ("type null", "clicks", click(type=None), "type"),
    ("type int", "clicks", click(type=1), "type"),
    ("type list", "clicks", click(type=["click"]), "type"),
    ("type object", "clicks", click(type={"name": "click"}), "type"),
    ("count 0", "clicks", click(count=0), "count"),
    ("count negative", "clicks", click(count=-3), "count"),
    ("count too large", "clicks", click(count=1_000_000_001), "count"),
    ("count bool", "clicks", click(count=True), "count"),
    ("count float", "clicks", click(count=2.0), "count"),
    ("count string", "clicks", click(count="2"), "count"),
    ("click_id int", "clicks", click(click_id=5), "click_id"),
    ("order_id int", "orders", order(order_id=1), "order_id"),
    ("order_id empty", "orders", order(order_id=""), "order_id"),
    ("amount negative", "orders", order(amount=-0.01), "amount"),
    ("amount negative int", "orders", order(amount=-1), "amount"),
    ("amount string", "orders", order(amount="299.5"), "amount"),
    ("amount bool", "orders", order(amount=True), "amount"),
    ("amount null", "orders", order(amount=None), "amount"),
    ("new_customer int", "orders", order(new_customer=1), "new_customer"),
    ("new_customer string", "orders", order(new_customer="yes"), "new_customer"),
    ("order currency USD", "orders", order(currency="USD"), "currency"),
    ("order currency usd", "orders", order(currency="usd"), "currency"),
    ("order currency short", "orders", order(currency="CN"), "currency"),
    ("order currency long", "orders", order(currency="CNYY"), "currency"),
    ("order currency int", "orders", order(currency=156), "currency"),
    ("cost negative", "spend", spend(cost=-5), "cost"),
    ("cost string", "spend", spend(cost="5"), "cost"),
    ("cost bool", "spend", spend(cost=False), "cost"),
    ("spend currency EUR", "spend", spend(currency="EUR"), "currency"),
]


@pytest.mark.parametrize(
    ("topic", "doc", "field"), [c[1:] for c in REJECT_DOC], ids=[c[0] for c in REJECT_DOC]
)
def test_rejects_invalid_field(topic: str, doc: dict[str, object], field: str) -> None:
    result = dec(topic, doc)
    assert isinstance(result, Rejection), result
    assert result.reason == "invalid"
    assert field in result.detail


# -- names and times every later use can take ---------------------------------------------------

BAD_NAMES = [
    ("U+001F, the table key separator", "dou\x1fyin"),
    ("NUL", "dou\x00yin"),
    ("newline", "dou\nyin"),
    ("tab", "dou\tyin"),
    ("DEL", "dou\x7fyin"),
    ("C1 control", "dou\x85yin"),
    ("pipe, the Redis field separator", "dou|yin"),
    ("slash, the budget key separator", "dou/yin"),
    ("colon, the alert fingerprint separator", "dou:yin"),
    ("zero-width space", "dou\u200byin"),
    ("right-to-left override", "\u202enihuoy"),
    ("byte order mark", "\ufeffdouyin"),
    ("line separator", "dou\u2028yin"),
    ("paragraph separator", "dou\u2029yin"),
]


@pytest.mark.parametrize("field", ["channel", "campaign"])
@pytest.mark.parametrize("name", [n for _, n in BAD_NAMES], ids=[i for i, _ in BAD_NAMES])
def test_a_name_breaking_the_rule_is_rejected_as_bad_name(field: str, name: str) -> None:
    """Before, a channel with U+001F passed and crashed the bucket agent on every tick and restart."""
    for topic, build in BUILDERS.items():
        result = dec(topic, build(**{field: name}))
        assert isinstance(result, Rejection), result
        assert result.reason == "bad_name"
        assert result.detail.startswith(f"{field}: contains U+") or f"{field}: contains '" in result.detail
        assert "docs/operations.md" in result.detail
    assert name_problem(name) is not None


GOOD_NAMES = ["douyin", "双十一 大促", "618-sale (A)", "a\u3000b", "café", "🎉 launch", "x" * 64, "\ue000"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_names_in_any_script_with_spaces_and_punctuation_are_fine(name: str) -> None:
    for field in ("channel", "campaign"):
        result = dec("clicks", click(**{field: name}))
        assert isinstance(result, Accepted), result
        assert getattr(result, field) == name  # taken as sent: nothing trimmed or normalised
    assert name_problem(name) is None


def test_the_name_rule_is_documented_word_for_word() -> None:
    """docs/operations.md quotes NAME_RULE: the rule has one home in code, and the docs follow it."""
    docs = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    quoted = " ".join(line[2:] for line in docs.splitlines() if line.startswith("> "))
    assert " ".join(NAME_RULE.split()) in " ".join(quoted.split())


def test_the_overflow_campaign_is_reserved() -> None:
    result = dec("clicks", click(campaign=OVERFLOW_CAMPAIGN))
    assert isinstance(result, Rejection) and result.reason == "bad_name"
    assert isinstance(dec("clicks", click(channel=OVERFLOW_CAMPAIGN)), Accepted)
    assert repr(OVERFLOW_CAMPAIGN) in NAME_RULE


def test_budget_settings_follow_the_name_rule() -> None:
    with pytest.raises(ValidationError, match="bad_name|separator"):
        BudgetSetting.model_validate({"channel": "a/b", "period": "day", "amount": 1})
    with pytest.raises(ValidationError):
        BudgetSetting.model_validate({"channel": "a", "campaign": "x\x1fy", "period": "day", "amount": 1})
    assert (
        BudgetSetting.model_validate(
            {"channel": "a", "campaign": "双十一", "period": "day", "amount": 1}
        ).campaign
        == "双十一"
    )


@pytest.mark.parametrize(
    "ts",
    [
        pytest.param(T * 1000, id="microseconds"),
        pytest.param(T * 1_000_000, id="nanoseconds"),
        pytest.param(MAX_TS_MS + 1, id="just after 2100"),
        pytest.param(2**63, id="beyond 64 bits"),
        pytest.param("9999-12-31T23:59:59Z", id="rfc3339 year 9999"),
        pytest.param("2100-01-01T00:00:00.001Z", id="rfc3339 just after 2100"),
    ],
)
def test_a_ts_after_2100_is_rejected(ts: object) -> None:
    """Before, a microsecond ts (with a matching CreateTime) was accepted and crashed the fold's flush."""
    result = dec("clicks", click(ts=ts))
    assert isinstance(result, Rejection), result
    assert result.reason == "invalid"
    assert "ts" in result.detail and "2100" in result.detail


def test_the_ts_range_ends_at_2100_inclusive() -> None:
    assert isinstance(dec("clicks", click(ts=MAX_TS_MS)), Accepted)
    assert isinstance(dec("clicks", click(ts="2099-12-31T23:59:59.999Z")), Accepted)


@pytest.mark.parametrize("amount", [1e303, 1.7976931348623157e308])
def test_huge_finite_money_never_raises(amount: float) -> None:
    """Finite but absurd money is a record-level problem, not a crash of the fold stage."""
    for topic, doc in (("orders", order(amount=amount)), ("spend", spend(cost=amount))):
        result = dec(topic, doc)
        assert isinstance(result, (Accepted, Rejection))


def test_configured_currency_is_compared_per_configuration() -> None:
    assert isinstance(dec("orders", order(currency="USD"), currency="USD"), Accepted)
    assert isinstance(dec("orders", order(currency="CNY"), currency="USD"), Rejection)
    assert isinstance(dec("orders", order(), currency="USD"), Accepted)  # no currency: the configured one


@pytest.mark.parametrize(("configured", "sent"), [("SSP", "ßP"), ("STN", "ﬆN")])
def test_currency_that_only_uppercases_to_the_configured_code_is_rejected(configured: str, sent: str) -> None:
    """A 2-character string whose upper case is the 3-letter code is not that code (the model says so)."""
    doc = order(currency=sent)
    assert isinstance(_from_model("orders", doc, configured), Rejection)
    assert isinstance(dec("orders", doc, currency=configured), Rejection)


def test_same_order_same_gmv_whatever_the_ts_format() -> None:
    """An int-ts record (fast path) and the same record with an RFC 3339 ts (model path) count one GMV."""
    amount = 10**11 + 1  # beyond float precision in micro-units, within MAX_MONEY
    fast = dec("orders", order(amount=amount))
    model = dec("orders", order(amount=amount, ts=T_RFC))
    assert isinstance(fast, Accepted) and isinstance(model, Accepted)
    assert fast.contribution == ((ORDERS, 1), (GMV, amount * 1_000_000))
    assert model.contribution == fast.contribution


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=MIN_TS_MS, max_value=4_102_444_800_000), st.sampled_from([0, 330, 480, -300, -570])
)
def test_rfc3339_millisecond_ts_round_trips(ts_ms: int, offset_min: int) -> None:
    zone = timezone(timedelta(minutes=offset_min))
    text = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)).astimezone(zone)
    result = dec("clicks", click(ts=text.isoformat(timespec="milliseconds")))
    assert isinstance(result, Accepted)
    assert result.ts_ms == ts_ms


def test_to_micros() -> None:
    assert to_micros(0.1) == 100_000
    assert to_micros(19.99) == 19_990_000
    assert to_micros(0.0000005) in (0, 1)
    assert to_micros(1234567.891011) == 1_234_567_891_011


# -- the fast path and the model agree -----------------------------------------------------------

_RFC = st.datetimes(
    min_value=datetime(1999, 12, 1),
    max_value=datetime(2030, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))]
    ),
).map(lambda d: d.isoformat())

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    # Money in exact micro-units on both paths needs |n| * 15625 < 2**53; larger integers have their own test.
    st.integers(min_value=-(5 * 10**11), max_value=5 * 10**11),
    st.integers(min_value=-3, max_value=3),
    st.floats(max_value=1e15, min_value=-1e15),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 0.5]),
    st.text(max_size=4),
    st.text(min_size=60, max_size=70),
    st.text(min_size=125, max_size=132),
    st.sampled_from(["", "click", "impression", "visit", "cart", "CNY", "cny", "USD", "CN", "-", "Click"]),
    _RFC,
)
_ANY = st.one_of(
    _SCALARS, st.lists(_SCALARS, max_size=2), st.dictionaries(st.text(max_size=3), _SCALARS, max_size=2)
)

_GOOD = {
    "event_id": st.text(min_size=1, max_size=12),
    "ts": st.one_of(st.integers(min_value=MIN_TS_MS - 10, max_value=2_000_000_000_000), _RFC),
    "channel": st.sampled_from(["douyin", "taobao", "wechat", "xiaohongshu"]),
    "campaign": st.sampled_from(["-", "c1", "618"]),
    "region": st.sampled_from(["cn-east", ""]),
    "type": st.sampled_from(["impression", "click", "visit", "cart"]),
    "count": st.integers(min_value=0, max_value=1000),
    "click_id": st.text(max_size=5),
    "order_id": st.text(min_size=1, max_size=5),
    "amount": st.one_of(
        st.integers(min_value=-5, max_value=10**9),
        st.floats(min_value=-1, max_value=1e9, allow_nan=False),
        st.integers(min_value=0, max_value=10**5).map(lambda cents: cents / 100),
    ),
    "new_customer": st.booleans(),
    "currency": st.sampled_from(["CNY", "cny", "Cny", "USD"]),
    "cost": st.one_of(
        st.integers(min_value=-5, max_value=10**9),
        st.floats(min_value=-1, max_value=1e9),
        st.integers(min_value=0, max_value=10**5).map(lambda cents: cents / 100),
    ),
}
_FIELDS = {
    "clicks": ("event_id", "ts", "channel", "campaign", "region", "type", "count", "click_id"),
    "orders": (
        "event_id",
        "ts",
        "channel",
        "campaign",
        "region",
        "order_id",
        "amount",
        "new_customer",
        "click_id",
        "currency",
    ),
    "spend": ("event_id", "ts", "channel", "campaign", "region", "cost", "currency"),
}
_REQUIRED = {"event_id", "ts", "channel", "type", "order_id", "amount", "cost"}


@st.composite
def docs(draw: st.DrawFn, json_safe: bool = False) -> tuple[str, dict[str, object]]:
    """A valid-ish record: each field good, absent, or replaced by an arbitrary value; plus extras."""
    topic = draw(st.sampled_from(sorted(_FIELDS)))
    doc: dict[str, object] = {}
    for name in _FIELDS[topic]:
        fate = draw(st.sampled_from(["good"] * 10 + ["absent", "other"]))
        if fate == "absent" and name not in _REQUIRED:
            continue
        if fate == "absent" and draw(st.integers(0, 3)) == 0:
            continue
        if fate == "other":
            # The ``type`` field only gets hashable values here; unhashable ones have their own test.
            doc[name] = draw(_SCALARS if name == "type" else _ANY)
        else:
            doc[name] = draw(_GOOD[name])
    doc.update(draw(st.dictionaries(st.sampled_from(["extra", "user", "v"]), _ANY, max_size=2)))
    if json_safe:
        try:
            doc = orjson.loads(orjson.dumps(doc))
        except (orjson.JSONEncodeError, TypeError):
            assume(False)
    return topic, doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs(), st.sampled_from(["CNY", "USD"]))
def test_fast_path_never_accepts_what_the_model_would_not(
    case: tuple[str, dict[str, object]], currency: str
) -> None:
    topic, doc = case
    fast = _fast(topic, doc, currency)
    if fast is not None:
        assert _from_model(topic, doc, currency) == fast


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(docs(json_safe=True), st.sampled_from(["CNY", "USD"]))
def test_decode_accepts_iff_the_model_validates(case: tuple[str, dict[str, object]], currency: str) -> None:
    topic, doc = case
    result = decode(topic, orjson.dumps(doc), currency, MAX)
    try:
        event = MODELS[topic].model_validate(doc, context={"currency": currency})
    except ValidationError:
        assert isinstance(result, Rejection)
        assert result.reason in ("invalid", "bad_name")
        return
    assert isinstance(result, Accepted)
    assert (result.event_id, result.ts_ms, result.channel, result.campaign) == (
        event.event_id,
        event.ts,
        event.channel,
        event.campaign,
    )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(["clicks", "orders", "spend"]),
    st.sampled_from(
        [
            "event_id",
            "ts",
            "channel",
            "campaign",
            "region",
            "type",
            "count",
            "click_id",
            "order_id",
            "amount",
            "new_customer",
            "currency",
            "cost",
        ]
    ),
    _JSON,
)
def test_decode_never_raises(topic: str, name: str, value: object) -> None:
    """Whatever one field holds, a record is accepted or rejected; it never crashes the fold stage."""
    doc = BUILDERS[topic]()
    doc[name] = value
    result = decode(topic, orjson.dumps(doc), CUR, MAX)
    assert isinstance(result, (Accepted, Rejection))


def test_the_names_the_hand_check_remembers_are_bounded() -> None:
    for i in range(_KNOWN_NAMES_MAX + 10):
        assert isinstance(dec("clicks", click(channel=f"ch{i}", campaign=f"c{i}")), Accepted)
    assert 0 < len(_good_channels) <= _KNOWN_NAMES_MAX
    assert 0 < len(_good_campaigns) <= _KNOWN_NAMES_MAX
    # A remembered name is still judged whole: the campaign rule holds for a known channel name.
    assert dec("clicks", click(channel="ch1", campaign="a|b")) == dec("clicks", click(campaign="a|b"))
    assert isinstance(dec("clicks", click(channel="ch1", campaign="a|b")), Rejection)
