"""agents.snapshot and alerts.kpi: KPI rows of the current and last complete windows; ratios without data."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.partials import BucketValue, merge
from agents.snapshot import (
    KpiRow,
    Lookup,
    build_rows,
    counts_of,
    global_watermark,
    last_complete_start,
)
from alerts.kpi import RATIOS, kpis, ratio
from streams.codec import N_SLOTS, SLOT_NAMES
from streams.windows import TOTAL, WINDOWS, Calendar

SHANGHAI = ZoneInfo("Asia/Shanghai")
CAL = Calendar(SHANGHAI)
COUNT_NAMES = ("impressions", "clicks", "visits", "carts", "orders", "gmv", "spend")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI).timestamp())


def vec(**named: int) -> list[int]:
    vector = [0] * N_SLOTS
    for name, value in named.items():
        vector[SLOT_NAMES.index(name)] = value
    return vector


def bucket(rows: dict[str, list[int]], base: dict[str, list[int]] | None = None) -> BucketValue:
    """A bucket value as the table holds it: optionally a folded block, then a pending one."""
    value = None
    if base is not None:
        value = merge(None, "clicks/0", 0, 9, base)
    value = merge(value, "clicks/0", 1, 19, rows)
    assert value is not None
    return value


def lookup_of(table: dict[tuple[str, str, int], BucketValue]) -> Lookup:
    return lambda channel, window, start: table.get((channel, window, start))


def by_key(rows: list[KpiRow]) -> dict[tuple[str, str, str, str], KpiRow]:
    keyed = {(r.channel, r.campaign, r.window, r.which): r for r in rows}
    assert len(keyed) == len(rows), "one row per (channel, campaign, window, which)"
    return keyed


# -- alerts.kpi --------------------------------------------------------------------------------------


def counts(**named: float) -> dict[str, float]:
    return {name: named.get(name, 0) for name in COUNT_NAMES}


@pytest.mark.parametrize(
    ("given_counts", "expected"),
    [
        (counts(), {k: None for k in RATIOS}),
        (
            counts(impressions=1000, clicks=25, visits=20, carts=5, orders=2, gmv=800.0, spend=50.0),
            {
                "ctr": 0.025,
                "cvr": 0.08,
                "roi": 16.0,
                "aov": 400.0,
                "cpc": 2.0,
                "cpa": 25.0,
                "funnel_visit": 0.8,
                "funnel_cart": 0.25,
                "funnel_order": 0.4,
            },
        ),
        # Clicks without impressions: CTR has no data, but CVR and CPC do.
        (
            counts(clicks=10, orders=1, spend=5.0),
            {
                "ctr": None,
                "cvr": 0.1,
                "roi": 0.0,
                "aov": 0.0,
                "cpc": 0.5,
                "cpa": 5.0,
                "funnel_visit": 0.0,
                "funnel_cart": None,
                "funnel_order": None,
            },
        ),
        # GMV without spend: ROI has no data (never infinite, never 0).
        (
            counts(orders=3, gmv=900.0),
            {
                "ctr": None,
                "cvr": None,
                "roi": None,
                "aov": 300.0,
                "cpc": None,
                "cpa": 0.0,
                "funnel_visit": None,
                "funnel_cart": None,
                "funnel_order": None,
            },
        ),
        # Impressions but no clicks: CTR is a real 0, the rest have no data.
        (
            counts(impressions=500),
            {
                "ctr": 0.0,
                "cvr": None,
                "roi": None,
                "aov": None,
                "cpc": None,
                "cpa": None,
                "funnel_visit": None,
                "funnel_cart": None,
                "funnel_order": None,
            },
        ),
    ],
)
def test_kpis_table(given_counts: dict[str, float], expected: dict[str, float | None]) -> None:
    got = kpis(given_counts)
    assert got == expected
    for name, value in got.items():
        if expected[name] is None:
            assert value is None  # not 0, not 0.0, not NaN


def test_ratio() -> None:
    assert ratio(1, 0) is None
    assert ratio(0, 0) is None
    assert ratio(0.0, 0.0) is None
    assert ratio(0, 4) == 0.0
    assert ratio(3, 4) == 0.75


def test_kpi_formulas_are_the_contract_ones() -> None:
    assert {k: RATIOS[k] for k in ("ctr", "cvr", "roi", "aov", "cpc", "cpa")} == {
        "ctr": ("clicks", "impressions"),
        "cvr": ("orders", "clicks"),
        "roi": ("gmv", "spend"),
        "aov": ("gmv", "orders"),
        "cpc": ("spend", "clicks"),
        "cpa": ("spend", "orders"),
    }
    assert {k: RATIOS[k] for k in ("funnel_visit", "funnel_cart", "funnel_order")} == {
        "funnel_visit": ("visits", "clicks"),
        "funnel_cart": ("carts", "visits"),
        "funnel_order": ("orders", "carts"),
    }


_COUNT = st.one_of(st.just(0), st.integers(min_value=0, max_value=10**9))
_MONEY = st.one_of(
    st.just(0.0), st.integers(min_value=0, max_value=10**12).map(lambda micros: micros / 1_000_000)
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "impressions": _COUNT,
            "clicks": _COUNT,
            "visits": _COUNT,
            "carts": _COUNT,
            "orders": _COUNT,
            "gmv": _MONEY,
            "spend": _MONEY,
        }
    )
)
def test_kpis_match_a_direct_computation(c: dict[str, float]) -> None:
    direct = {
        "ctr": c["clicks"] / c["impressions"] if c["impressions"] != 0 else None,
        "cvr": c["orders"] / c["clicks"] if c["clicks"] != 0 else None,
        "roi": c["gmv"] / c["spend"] if c["spend"] != 0 else None,
        "aov": c["gmv"] / c["orders"] if c["orders"] != 0 else None,
        "cpc": c["spend"] / c["clicks"] if c["clicks"] != 0 else None,
        "cpa": c["spend"] / c["orders"] if c["orders"] != 0 else None,
        "funnel_visit": c["visits"] / c["clicks"] if c["clicks"] != 0 else None,
        "funnel_cart": c["carts"] / c["visits"] if c["visits"] != 0 else None,
        "funnel_order": c["orders"] / c["carts"] if c["carts"] != 0 else None,
    }
    assert kpis(c) == direct
    row = KpiRow("douyin", "-", "1m", "last", 0, 60, True, dict(c))
    assert row.ratios() == direct


# -- snapshot rows -------------------------------------------------------------------------------------

WM = at(2024, 5, 1, 12, 34, 30) + 0.25  # the event-time watermark
GRACE = 60.0
WINDOW_STARTS = {
    ("1m", "current"): at(2024, 5, 1, 12, 34),
    ("1m", "last"): at(2024, 5, 1, 12, 32),
    ("1h", "current"): at(2024, 5, 1, 12),
    ("1h", "last"): at(2024, 5, 1, 11),
    ("1d", "current"): at(2024, 5, 1),
    ("1d", "last"): at(2024, 4, 30),
}


def test_rows_of_a_channel_current_last_and_total() -> None:
    table = {
        ("douyin", "1m", at(2024, 5, 1, 12, 34)): bucket({"-": vec(impressions=100, clicks=3)}),
        ("douyin", "1m", at(2024, 5, 1, 12, 32)): bucket({"-": vec(impressions=50, clicks=1)}),
        ("douyin", "1m", at(2024, 5, 1, 12, 33)): bucket(
            {"-": vec(impressions=999)}
        ),  # neither current nor last
        ("douyin", TOTAL, 0): bucket({"-": vec(impressions=1149, clicks=4)}),
    }
    rows = build_rows(["douyin"], lookup_of(table), CAL, WM, GRACE)
    keyed = by_key(rows)
    assert set(keyed) == {("douyin", "-", w, which) for w in WINDOWS for which in ("current", "last")} | {
        ("douyin", "-", TOTAL, "total")
    }
    for (window, which), start in WINDOW_STARTS.items():
        row = keyed[("douyin", "-", window, which)]
        assert row.window_start == start, (window, which)
        assert row.window_end == CAL.end(window, start)
        assert row.complete is (which == "last")
    assert keyed[("douyin", "-", "1m", "current")].counts["impressions"] == 100
    assert keyed[("douyin", "-", "1m", "last")].counts["impressions"] == 50
    assert keyed[("douyin", "-", "1m", "last")].ratios()["ctr"] == pytest.approx(0.02)
    total = keyed[("douyin", "-", TOTAL, "total")]
    assert (total.window_start, total.window_end, total.complete) == (0, None, False)
    assert total.counts["clicks"] == 4


def test_a_silent_channel_gets_zero_rows_for_its_last_window() -> None:
    table = {("wechat", "1m", at(2024, 5, 1, 12, 34)): bucket({"c1": vec(impressions=10)})}
    keyed = by_key(build_rows(["wechat"], lookup_of(table), CAL, WM, GRACE))
    for window in WINDOWS:
        last = keyed[("wechat", "-", window, "last")]
        assert last.complete is True
        assert all(value == 0 for value in last.counts.values())
        assert set(last.counts) == set(SLOT_NAMES)
        assert all(value is None for value in last.ratios().values())
    assert ("wechat", "c1", "1m", "last") not in keyed  # no invented campaign rows
    assert keyed[("wechat", "c1", "1m", "current")].counts["impressions"] == 10
    assert keyed[("wechat", "-", TOTAL, "total")].counts["impressions"] == 0


def test_campaign_rows_and_the_channel_row_sums_them() -> None:
    start = WINDOW_STARTS[("1h", "last")]
    table = {
        ("taobao", "1h", start): bucket(
            {"c2": vec(clicks=5, orders=1, gmv=300_000_000), "-": vec(impressions=40, clicks=2)},
            base={
                "c1": vec(impressions=100, clicks=3, spend=12_500_000),
                "c2": vec(impressions=60, clicks=1),
            },
        )
    }
    keyed = by_key(build_rows(["taobao"], lookup_of(table), CAL, WM, GRACE))
    c1 = keyed[("taobao", "c1", "1h", "last")].counts
    c2 = keyed[("taobao", "c2", "1h", "last")].counts
    channel = keyed[("taobao", "-", "1h", "last")].counts
    assert (c1["impressions"], c1["clicks"], c1["spend"]) == (100, 3, 12.5)
    assert (c2["impressions"], c2["clicks"], c2["orders"], c2["gmv"]) == (60, 6, 1, 300.0)
    assert channel == {
        "impressions": 200,
        "clicks": 11,
        "visits": 0,
        "carts": 0,
        "orders": 1,
        "gmv": 300.0,
        "spend": 12.5,
        "new_customers": 0,
    }
    assert ("taobao", "-", "1h", "last") in keyed and ("taobao", "c1", "1h", "current") not in keyed
    ratios = keyed[("taobao", "-", "1h", "last")].ratios()
    assert ratios["ctr"] == pytest.approx(11 / 200) and ratios["roi"] == pytest.approx(300 / 12.5)


def test_channels_are_independent_and_sorted() -> None:
    table = {("b", "1m", WINDOW_STARTS[("1m", "last")]): bucket({"-": vec(clicks=1)})}
    rows = build_rows(["b", "a"], lookup_of(table), CAL, WM, GRACE)
    assert [r.channel for r in rows] == ["a"] * 7 + ["b"] * 7
    keyed = by_key(rows)
    assert keyed[("a", "-", "1m", "last")].counts["clicks"] == 0
    assert keyed[("b", "-", "1m", "last")].counts["clicks"] == 1
    assert build_rows([], lookup_of(table), CAL, WM, GRACE) == []


def test_counts_of_converts_money_to_currency_units() -> None:
    assert counts_of(vec(orders=2, gmv=599_990_000, spend=1)) == {
        "impressions": 0,
        "clicks": 0,
        "visits": 0,
        "carts": 0,
        "orders": 2,
        "gmv": 599.99,
        "spend": 0.000001,
        "new_customers": 0,
    }


def test_to_json_matches_the_cli_contract() -> None:
    table = {("douyin", "1d", at(2024, 4, 30)): bucket({"-": vec(impressions=10, clicks=1, gmv=5_000_000)})}
    keyed = by_key(build_rows(["douyin"], lookup_of(table), CAL, WM, GRACE))
    doc = keyed[("douyin", "-", "1d", "last")].to_json(SHANGHAI)
    for name in (
        "channel",
        "campaign",
        "window",
        "window_start",
        "window_end",
        "complete",
        "impressions",
        "clicks",
        "visits",
        "carts",
        "orders",
        "gmv",
        "spend",
        "ctr",
        "cvr",
        "roi",
        "aov",
        "cpc",
        "cpa",
    ):
        assert name in doc, name
    assert doc["window_start"] == "2024-04-30T00:00:00+08:00"
    assert doc["window_end"] == "2024-05-01T00:00:00+08:00"
    assert (doc["complete"], doc["ctr"], doc["cvr"], doc["roi"], doc["gmv"]) == (True, 0.1, 0.0, None, 5.0)
    assert json.loads(json.dumps(doc))["roi"] is None  # null, not 0
    assert keyed[("douyin", "-", TOTAL, "total")].to_json(SHANGHAI)["window_end"] is None


def test_row_field_and_plus() -> None:
    a = KpiRow("douyin", "-", "1m", "last", 60, 120, True, counts(impressions=10, clicks=1))
    b = KpiRow("taobao", "-", "1m", "last", 60, 120, True, counts(impressions=30, clicks=5, gmv=2.5))
    assert a.field == "douyin|-|1m|last"
    both = a.plus(b)
    assert (both.channel, both.window, both.window_start, both.complete) == ("douyin", "1m", 60, True)
    assert both.counts == counts(impressions=40, clicks=6, gmv=2.5)
    assert both.ratios()["ctr"] == pytest.approx(6 / 40)
    assert a.counts == counts(impressions=10, clicks=1)  # unchanged


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["Asia/Shanghai", "Asia/Kolkata", "Europe/Berlin"]),
    st.floats(min_value=1_600_000_000, max_value=1_900_000_000),
    st.one_of(st.sampled_from([0.0, 60.0, 3600.0]), st.floats(min_value=0, max_value=3 * 86400)),
)
def test_current_holds_the_watermark_and_last_is_the_newest_complete(
    zone: str, wm: float, grace: float
) -> None:
    cal = Calendar(ZoneInfo(zone))
    keyed = by_key(build_rows(["c"], lambda *_: None, cal, wm, grace))
    for window in WINDOWS:
        current = keyed[("c", "-", window, "current")]
        last = keyed[("c", "-", window, "last")]
        assert current.window_end is not None and current.window_start <= wm < current.window_end
        assert current.complete is False
        assert last.complete is True
        assert last.window_end == cal.end(window, last.window_start)
        assert last.window_end + grace <= wm
        following = last.window_end  # the next bucket is not complete yet
        assert cal.end(window, following) + grace > wm
        assert last_complete_start(cal, window, wm, grace) == last.window_start


# -- the global watermark --------------------------------------------------------------------------------

NOW, IDLE = 10_000.0, 30.0


@pytest.mark.parametrize(
    ("marks", "expected"),
    [
        ([], None),
        ([(500.0, NOW - 1, True)], 500.0),
        (
            [(500.0, NOW - 1, False), (400.0, NOW - 2, False), (600.0, NOW, True)],
            400.0,
        ),  # the slowest holds it back
        (
            [(500.0, NOW - 1, True), (100.0, NOW - IDLE - 1, True)],
            500.0,
        ),  # idle: caught up and silent, ignored
        (
            [(500.0, NOW - 1, True), (100.0, NOW - IDLE, True)],
            500.0,
        ),  # silent for exactly idle_s counts as idle
        ([(500.0, NOW - 1, True), (100.0, NOW - IDLE + 1, True)], 100.0),  # caught up but recent: holds
        ([(500.0, NOW - 1, True), (100.0, NOW - 3600, False)], 100.0),  # behind, however long silent: holds
        # All idle: event time moves on with the wall clock (minus idle_s), never back.
        ([(500.0, NOW - 100, True), (900.0, NOW - 200, True)], NOW - IDLE),
        ([(NOW + 50, NOW - 100, True), (900.0, NOW - 200, True)], NOW + 50),
    ],
)
def test_global_watermark(marks: list[tuple[float, float, bool]], expected: float | None) -> None:
    assert global_watermark(iter(marks), NOW, IDLE) == expected


_MARKS = st.lists(
    st.tuples(st.floats(min_value=0, max_value=20_000), st.floats(min_value=0, max_value=NOW), st.booleans()),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(_MARKS, st.floats(min_value=0, max_value=1000))
def test_global_watermark_properties(marks: list[tuple[float, float, bool]], later: float) -> None:
    got = global_watermark(marks, NOW, IDLE)
    holding = [m for m, seen, caught_up in marks if not caught_up or NOW - seen < IDLE]
    if holding and min(holding) <= 0:
        assert got is None  # a partition not read yet: event time is unknown, nothing may close
    elif holding:
        assert got == min(holding)
        assert all(got <= m for m in holding)
    elif max(m for m, _, _ in marks) <= 0:
        assert got is None  # nothing was ever read
    else:
        assert got is not None
        assert got >= max(m for m, _, _ in marks)
        assert got >= NOW - IDLE
        again = global_watermark(marks, NOW + later, IDLE)
        assert again is not None and again >= got  # never goes back while all are idle
