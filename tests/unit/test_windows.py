"""streams.windows: minute buckets and the zoned hour/day calendar, including 30-minute offsets and DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.windows import MINUTE_S, NOMINAL_S, TOTAL, WINDOWS, Calendar, minute_start

UTC = UTC
SHANGHAI = ZoneInfo("Asia/Shanghai")
KOLKATA = ZoneInfo("Asia/Kolkata")
BERLIN = ZoneInfo("Europe/Berlin")
ZONES = (
    "Asia/Shanghai",
    "Asia/Kolkata",
    "Europe/Berlin",
    "Asia/Kathmandu",
    "America/New_York",
    "Australia/Sydney",
    "America/Sao_Paulo",
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())


def local(
    zone: ZoneInfo,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    fold: int = 0,
) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=zone, fold=fold).timestamp())


@cache
def calendar(name: str) -> Calendar:
    return Calendar(ZoneInfo(name))


# -- minutes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts_ms", "start"),
    [
        (0, 0),
        (59_999, 0),
        (60_000, 60),
        (1_700_000_000_000, 1_699_999_980),
        (1_700_000_039_999, 1_699_999_980),
        (1_700_000_040_000, 1_700_000_040),
        (-1, -60),
    ],
)
def test_minute_start_examples(ts_ms: int, start: int) -> None:
    assert minute_start(ts_ms) == start


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_minute_start_holds_the_instant_and_is_aligned(ts_ms: int) -> None:
    start = minute_start(ts_ms)
    assert start % MINUTE_S == 0
    assert start * 1000 <= ts_ms < (start + MINUTE_S) * 1000


# -- hours and days in a zone --------------------------------------------------------------------

CASES = [
    # (zone, instant, window, expected start, expected end)
    ("Asia/Shanghai", utc(2024, 5, 1, 4, 34, 56), "1m", utc(2024, 5, 1, 4, 34), utc(2024, 5, 1, 4, 35)),
    ("Asia/Shanghai", utc(2024, 5, 1, 4, 34, 56), "1h", utc(2024, 5, 1, 4), utc(2024, 5, 1, 5)),
    ("Asia/Shanghai", utc(2024, 5, 1, 4, 34, 56), "1d", utc(2024, 4, 30, 16), utc(2024, 5, 1, 16)),
    # 15:59:59 UTC is 23:59:59 in Shanghai; 16:00 UTC is already the next local day.
    ("Asia/Shanghai", utc(2024, 5, 1, 15, 59, 59), "1d", utc(2024, 4, 30, 16), utc(2024, 5, 1, 16)),
    ("Asia/Shanghai", utc(2024, 5, 1, 16), "1d", utc(2024, 5, 1, 16), utc(2024, 5, 2, 16)),
    # Kolkata is UTC+05:30: local hours start at half past the UTC hour, days at 18:30 UTC.
    ("Asia/Kolkata", utc(2024, 5, 1, 4, 34, 56), "1h", utc(2024, 5, 1, 4, 30), utc(2024, 5, 1, 5, 30)),
    ("Asia/Kolkata", utc(2024, 5, 1, 4, 29, 59), "1h", utc(2024, 5, 1, 3, 30), utc(2024, 5, 1, 4, 30)),
    ("Asia/Kolkata", utc(2024, 5, 1, 4, 34, 56), "1d", utc(2024, 4, 30, 18, 30), utc(2024, 5, 1, 18, 30)),
    ("Asia/Kolkata", utc(2024, 5, 1, 18, 30), "1d", utc(2024, 5, 1, 18, 30), utc(2024, 5, 2, 18, 30)),
    # Kathmandu is UTC+05:45.
    ("Asia/Kathmandu", utc(2024, 5, 1, 4, 14, 59), "1h", utc(2024, 5, 1, 3, 15), utc(2024, 5, 1, 4, 15)),
    # Berlin spring forward (2024-03-31 02:00 CET -> 03:00 CEST): a 23-hour day.
    ("Europe/Berlin", utc(2024, 3, 31, 12), "1d", utc(2024, 3, 30, 23), utc(2024, 3, 31, 22)),
    ("Europe/Berlin", utc(2024, 3, 31, 0, 59), "1h", utc(2024, 3, 31, 0), utc(2024, 3, 31, 1)),
    ("Europe/Berlin", utc(2024, 3, 31, 1, 0), "1h", utc(2024, 3, 31, 1), utc(2024, 3, 31, 2)),
    # Berlin fall back (2024-10-27 03:00 CEST -> 02:00 CET): a 25-hour day, local 02:xx twice.
    ("Europe/Berlin", utc(2024, 10, 27, 12), "1d", utc(2024, 10, 26, 22), utc(2024, 10, 27, 23)),
    ("Europe/Berlin", utc(2024, 10, 27, 0, 30), "1h", utc(2024, 10, 27, 0), utc(2024, 10, 27, 1)),
    ("Europe/Berlin", utc(2024, 10, 27, 1, 30), "1h", utc(2024, 10, 27, 1), utc(2024, 10, 27, 2)),
    ("Europe/Berlin", utc(2024, 10, 27, 1, 30), "1d", utc(2024, 10, 26, 22), utc(2024, 10, 27, 23)),
]


@pytest.mark.parametrize(("zone", "instant", "window", "start", "end"), CASES)
def test_start_and_end(zone: str, instant: int, window: str, start: int, end: int) -> None:
    cal = calendar(zone)
    assert cal.start(window, instant) == start
    assert cal.end(window, start) == end


def test_local_midnight_and_local_hour() -> None:
    cal = Calendar(SHANGHAI)
    instant = local(SHANGHAI, 2024, 5, 1, 12, 34, 56)
    assert cal.start("1h", instant) == local(SHANGHAI, 2024, 5, 1, 12)
    assert cal.start("1d", instant) == local(SHANGHAI, 2024, 5, 1)
    assert cal.end("1d", local(SHANGHAI, 2024, 12, 31)) == local(SHANGHAI, 2025, 1, 1)


@pytest.mark.parametrize(("day", "hours"), [((2024, 3, 31), 23), ((2024, 10, 27), 25), ((2024, 7, 1), 24)])
def test_berlin_day_lengths_and_hour_count(day: tuple[int, int, int], hours: int) -> None:
    cal = Calendar(BERLIN)
    start = local(BERLIN, *day)
    end = cal.end("1d", start)
    assert end - start == hours * 3600
    assert cal.start("1d", end - 1) == start
    assert cal.start("1d", end) == end
    # Walk the hour buckets of the day: they tile it, each is a whole hour.
    walked, at = 0, start
    while at < end:
        assert cal.start("1h", at) == at
        nxt = cal.end("1h", at)
        assert nxt - at == 3600
        walked, at = walked + 1, nxt
    assert (walked, at) == (hours, end)


def test_previous() -> None:
    cal = Calendar(BERLIN)
    assert cal.previous("1m", utc(2024, 5, 1, 12, 0)) == utc(2024, 5, 1, 11, 59)
    assert cal.previous("1h", utc(2024, 5, 1, 12, 0)) == utc(2024, 5, 1, 11, 0)
    # The day before 2024-04-01 in Berlin is the 23-hour day.
    assert cal.previous("1d", local(BERLIN, 2024, 4, 1)) == local(BERLIN, 2024, 3, 31)
    assert cal.previous("1d", local(BERLIN, 2024, 10, 28)) == local(BERLIN, 2024, 10, 27)
    kolkata = Calendar(KOLKATA)
    assert kolkata.previous("1h", utc(2024, 5, 1, 4, 30)) == utc(2024, 5, 1, 3, 30)
    assert kolkata.previous("1d", utc(2024, 5, 1, 18, 30)) == utc(2024, 4, 30, 18, 30)


def test_total_and_unknown_windows() -> None:
    cal = Calendar(SHANGHAI)
    assert cal.start(TOTAL, 1_700_000_000) == 0
    with pytest.raises(ValueError, match="never ends"):
        cal.end(TOTAL, 0)
    with pytest.raises(ValueError, match="unknown window"):
        cal.start("5m", 1_700_000_000)
    assert WINDOWS == ("1m", "1h", "1d")
    assert NOMINAL_S == {"1m": 60, "1h": 3600, "1d": 86400}


def test_midnight_dst_change_keeps_one_start_per_day() -> None:
    """Havana falls back at 01:00 CDT -> 00:00 CST (2023-11-05): local 00:xx happens twice.

    Both 00:30s belong to the day that began at 00:00 CDT (04:00 UTC), which lasts 25 hours.
    """
    cal = calendar("America/Havana")
    day = utc(2023, 11, 5, 4)
    assert cal.start("1d", utc(2023, 11, 5, 4, 30)) == day  # first 00:30 (CDT)
    assert cal.start("1d", utc(2023, 11, 5, 5, 30)) == day  # second 00:30 (CST)
    assert cal.end("1d", day) == utc(2023, 11, 6, 5)


# -- properties ----------------------------------------------------------------------------------


def _transitions(name: str) -> list[int]:
    """UTC instants where the zone's offset changes, 2000-2040 (to aim instants at DST edges)."""
    zone = ZoneInfo(name)
    found = []
    day = utc(2000, 1, 1)
    offset = datetime.fromtimestamp(day, zone).utcoffset()
    while day < utc(2040, 1, 1):
        nxt = day + 86400
        new = datetime.fromtimestamp(nxt, zone).utcoffset()
        if new != offset:
            lo, hi = day, nxt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, zone).utcoffset() == offset:
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
            offset = new
        day = nxt
    return found or [utc(2024, 1, 1)]


TRANSITIONS = {name: _transitions(name) for name in ZONES}


@st.composite
def instants(draw: st.DrawFn) -> tuple[str, int]:
    zone = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        at = draw(st.integers(min_value=utc(2000, 1, 1), max_value=utc(2040, 1, 1)))
    else:  # near a DST change, where buckets go wrong if anything does
        edge = draw(st.sampled_from(TRANSITIONS[zone]))
        at = edge + draw(st.integers(min_value=-2 * 86400, max_value=2 * 86400))
    return zone, at


@settings(max_examples=600, deadline=None)
@given(instants(), st.sampled_from(WINDOWS))
def test_every_instant_is_in_exactly_one_bucket_and_buckets_tile(case: tuple[str, int], window: str) -> None:
    zone, at = case
    cal = calendar(zone)
    start = cal.start(window, at)
    end = cal.end(window, start)
    assert start <= at < end
    assert start % MINUTE_S == 0 and end % MINUTE_S == 0
    # The bucket is its own start's bucket, and its neighbours do not hold the instant.
    assert cal.start(window, start) == start
    assert cal.start(window, end - 1) == start
    before = cal.previous(window, start)
    assert cal.end(window, before) == start  # no gap, no overlap before
    assert cal.start(window, end) == end  # the next bucket begins where this one ends
    assert cal.previous(window, end) == start
    assert before < start < end
    if window == "1h":
        assert end - start == 3600
        assert datetime.fromtimestamp(start, ZoneInfo(zone)).minute == 0
    if window == "1d":
        assert 23 * 3600 <= end - start <= 25 * 3600
        first = datetime.fromtimestamp(start, ZoneInfo(zone))
        assert (first.hour, first.minute) in ((0, 0), (1, 0))  # 01:00 only where midnight was skipped
        assert datetime.fromtimestamp(end - 1, ZoneInfo(zone)).date() == first.date()


@settings(max_examples=200, deadline=None)
@given(instants(), st.integers(min_value=1, max_value=3 * 86400))
def test_buckets_are_monotone(case: tuple[str, int], step: int) -> None:
    zone, at = case
    cal = calendar(zone)
    for window in WINDOWS:
        assert cal.start(window, at) <= cal.start(window, at + step)


@settings(max_examples=200, deadline=None)
@given(instants())
def test_finer_buckets_nest_in_coarser_ones(case: tuple[str, int]) -> None:
    """Hours and days are roll-ups of minutes, so a minute never straddles an hour or a day."""
    zone, at = case
    cal = calendar(zone)
    minute = cal.start("1m", at)
    hour = cal.start("1h", at)
    day = cal.start("1d", at)
    assert cal.start("1h", minute) == hour
    assert cal.start("1d", minute) == day
    assert (
        cal.start("1d", hour) == day or hour < day
    )  # an hour may begin before a midnight that isn't on the hour
    assert hour <= minute and day <= minute
    assert minute + 60 <= cal.end("1h", hour)
    assert minute + 60 <= cal.end("1d", day)


def test_caches_do_not_mix_zones() -> None:
    at = utc(2024, 5, 1, 4, 34, 56)
    assert Calendar(SHANGHAI).start("1d", at) != Calendar(KOLKATA).start("1d", at)
    assert Calendar(KOLKATA).start("1h", at) - Calendar(SHANGHAI).start("1h", at) == 1800
    assert timedelta(
        seconds=Calendar(SHANGHAI).end("1d", utc(2024, 4, 30, 16)) - utc(2024, 4, 30, 16)
    ) == timedelta(days=1)
