"""The bucket index the snapshot timer and expiry use instead of scanning every table key."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from adpulse.settings import Settings
from agents.buckets import (
    MAX_SHARDS,
    SEP,
    WHOLE,
    BucketConfig,
    BucketIndex,
    BucketViews,
    TickLaps,
    _expired,
    bucket_key,
    parse_partial,
    split_key,
)
from agents.partials import BucketValue, merge, totals

_T = TypeVar("_T")


def test_index_follows_writes_and_deletes() -> None:
    index = BucketIndex()
    index.add("douyin", "1m", 60)
    index.add("douyin", "1m", 60)
    index.add("douyin", "1h", 0)
    index.add("jd", "total", 0)
    assert index.channels() == {"douyin", "jd"}
    assert index.starts("douyin", "1m") == {60}
    index.discard("douyin", "1m", 60)
    index.discard("douyin", "1m", 60)
    assert index.starts("douyin", "1m") == set()
    index.discard("douyin", "1h", 0)
    assert index.channels() == {"jd"}


def test_index_rebuilds_only_when_the_table_size_differs() -> None:
    keys = [bucket_key("wechat", "1m", 120), bucket_key("wechat", "1h", 0), bucket_key("baidu", "1d", 0)]
    calls: list[int] = []

    def listing() -> list[str]:
        calls.append(1)
        return keys

    index = BucketIndex()
    index.sync(len(keys), listing)
    index.sync(len(keys), listing)
    assert len(calls) == 1
    assert index.starts("wechat", "1m") == {120} and index.channels() == {"wechat", "baidu"}
    keys.append(f"baidu{SEP}1m{SEP}60")
    index.sync(len(keys), listing)
    assert len(calls) == 2 and index.starts("baidu", "1m") == {60}


def test_an_index_rebuilt_off_the_loop_keeps_the_writes_and_deletes_made_meanwhile() -> None:
    """The snapshot timer rebuilds after a recovery in a worker thread (a million keys took 2.5 s on the
    loop); the agent goes on writing and deleting keys meanwhile, and none of that may be lost."""
    keys = [bucket_key("wechat", "1m", 120), bucket_key("wechat", "1m", 180, 2), "junk"]
    bad: list[str] = []
    index = BucketIndex()

    async def offload(fn: Callable[..., _T], *args: Any) -> _T:
        # What the agent does on the loop while the thread builds from the keys listed before.
        index.add("jd", "1h", 3600, 1)
        keys.append(bucket_key("jd", "1h", 3600, 1))
        index.discard("wechat", "1m", 120)
        keys.remove(bucket_key("wechat", "1m", 120))
        index.add("jd", "1h", 3600, 1)  # written twice: one key
        return fn(*args)

    asyncio.run(index.resync(len(keys), lambda: keys, offload, lambda key, exc: bad.append(key)))
    assert bad == ["junk"]
    assert index.channels() == {"wechat", "jd"}
    assert index.starts("wechat", "1m") == {180} and index.starts("jd", "1h") == {3600}
    assert index.buckets() == 2
    # In step with the table now: the next tick does not rebuild, on or off the loop.
    index.sync(len(keys), lambda: pytest.fail("rebuilt again"))

    async def no_offload(fn: Callable[..., _T], *args: Any) -> _T:
        raise AssertionError("rebuilt again")

    asyncio.run(index.resync(len(keys), lambda: keys, no_offload))
    index.add("jd", "1d", 0)  # no journal left behind: the rebuild is over
    assert index._journal is None  # noqa: SLF001


def test_expiry_keeps_recent_buckets_and_the_total() -> None:
    index = BucketIndex()
    for window, start in [("1m", 0), ("1m", 10_000), ("1h", 0), ("1d", 0), ("total", 0)]:
        index.add("taobao", window, start)
    retention = {"1m": 3600.0, "1h": 86_400.0, "1d": 30 * 86_400.0}
    assert sorted(_expired(index, "taobao", retention, now=12_000.0)) == [("1m", 0)]
    assert sorted(_expired(index, "taobao", retention, now=100_000.0)) == [
        ("1h", 0),
        ("1m", 0),
        ("1m", 10_000),
    ]


def test_a_key_that_does_not_split_is_handed_over_once_and_the_rest_are_indexed() -> None:
    """Before, a channel holding U+001F made ``key.split`` raise on every tick and after every recovery."""
    keys = [bucket_key("wechat", "1m", 120), bucket_key("dou\x1fyin", "1m", 60), "junk", f"a{SEP}5m{SEP}0"]
    bad: list[str] = []
    calls: list[int] = []

    def listing() -> list[str]:
        calls.append(1)
        return keys

    index = BucketIndex()
    index.sync(len(keys), listing, lambda key, exc: bad.append(key))
    index.sync(len(keys), listing, lambda key, exc: bad.append(key))
    assert bad == keys[1:] and len(calls) == 1  # no rebuild on every tick because of them
    assert index.channels() == {"wechat"}
    with pytest.raises(ValueError):
        split_key(keys[1])
    assert split_key(keys[0]) == ("wechat", "1m", 120, WHOLE)


GOOD: dict[str, Any] = {
    "src": "clicks/0",
    "blk": 3,
    "upto": 17,
    "rows": [["1m", 60, "c1", 1, 2, 0, 0, 0, 0, 0, 0]],
}


def test_a_partials_message_is_read_only_if_it_is_what_the_fold_stage_sends() -> None:
    assert parse_partial(b"douyin", GOOD) == (
        "douyin",
        "clicks/0",
        3,
        17,
        {("1m", 60): {"c1": tuple(GOOD["rows"][0][3:])}},
    )
    bad_messages = [
        (b"dou\x1fyin", GOOD),
        (b"a|b", GOOD),
        (None, GOOD),
        (b"\xff", GOOD),
        (b"douyin", {**GOOD, "blk": "3"}),
        (b"douyin", {**GOOD, "rows": [["5m", 60, "c1", *[0] * 8]]}),
        (b"douyin", {**GOOD, "rows": [["1m", 60, "c1", 1, 2]]}),
        (b"douyin", {**GOOD, "rows": [["1m", 60, "c1", *[0] * 7, 2**64]]}),
        (b"douyin", {**GOOD, "rows": [["1m", 60, "c1", *[0] * 7, -1]]}),
        (b"douyin", {**GOOD, "rows": [["1m", 60, "c1", *[0] * 7, 1.5]]}),
        (b"douyin", {"rows": []}),
    ]
    for key, message in bad_messages:
        with pytest.raises(Exception):  # noqa: B017 - any exception: the agent skips the message
            parse_partial(key, message)


def test_closed_window_days_are_pruned_by_event_time_once_each() -> None:
    from datetime import date
    from zoneinfo import ZoneInfo

    from agents.buckets import expired_days
    from streams.windows import Calendar

    calendar = Calendar(ZoneInfo("UTC"))
    retention = {"1m": 6 * 3600.0, "1d": 62 * 86400.0}
    pruned: dict[str, date] = {}
    day = 86400.0
    watermark = 20_000 * day + 12 * 3600  # 2024-10-04 12:00 UTC
    first = expired_days(calendar, retention, watermark, pruned)
    # 1m: the cutoff is the day before (6 h + one day of TTL back): days before it, a fortnight at most.
    minute_days = [d for w, d in first if w == "1m"]
    assert minute_days[-1] == "2024-10-02" and len(minute_days) == 13
    assert ("1m", "2024-10-03") not in first
    assert expired_days(calendar, retention, watermark + 3600, pruned) == []
    assert expired_days(calendar, retention, watermark + day, pruned) == [
        ("1m", "2024-10-03"),
        ("1d", "2024-08-02"),
    ]
    # Event time leaps a month ahead (a fast replay): every day in between goes, once.
    leap = expired_days(calendar, retention, watermark + 31 * day, pruned)
    assert len([d for w, d in leap if w == "1m"]) == 30


def test_judged_marks_expire_with_their_windows_retention() -> None:
    from agents.evaluate import _judged_expired

    retention = {"1m": 3600.0, "1h": 86_400.0, "1d": 30 * 86_400.0}
    assert _judged_expired("douyin|spring|1m", 0, 3601.0, retention)
    assert not _judged_expired("douyin|spring|1h", 0, 3601.0, retention)
    assert not _judged_expired("douyin|-|1m", 0, 3600.0, retention)
    assert not _judged_expired("douyin|-|weird", 0, 1e12, retention)


def test_keys_name_a_shard_and_a_key_without_one_is_a_bucket_kept_whole() -> None:
    assert split_key(bucket_key("wechat", "1h", 3600, 5)) == ("wechat", "1h", 3600, 5)
    assert bucket_key("wechat", "1h", 3600) == f"wechat{SEP}1h{SEP}3600"  # what versions before shards wrote
    assert split_key(bucket_key("wechat", "1h", 3600, MAX_SHARDS - 1))[3] == MAX_SHARDS - 1
    bounds = Settings.model_fields["bucket_shards"].metadata
    assert [b.le for b in bounds if hasattr(b, "le")] == [MAX_SHARDS]  # the setting's bound

    def config(shards: int) -> BucketConfig:
        return BucketConfig("p", 1, "a", 1.0, 1.0, 1.0, {}, shards=shards)

    assert config(MAX_SHARDS).shards == MAX_SHARDS
    with pytest.raises(ValueError, match="shards"):
        config(MAX_SHARDS + 1)
    for junk in (
        f"wechat{SEP}1h{SEP}3600{SEP}x",
        f"wechat{SEP}1h{SEP}0{SEP}-1",
        f"wechat{SEP}1h{SEP}0{SEP}{MAX_SHARDS}",
        # int() reads these, but they are not the keys the agent writes (it could never delete them).
        *(f"wechat{SEP}1h{SEP}{start}{SEP}0" for start in (" 60", "+60", "060", "6_0", "\u0666\u0660", "-0")),
        *(f"wechat{SEP}1h{SEP}60{SEP}{shard}" for shard in ("01", " 1", "+1", "-0")),
        f"wechat{SEP}1h{SEP}060",
        f"wechat{SEP}1h{SEP}0{SEP}{10**9}",  # an int of a billion bits in the index, had it been taken
        f"a{SEP}1h{SEP}0{SEP}1{SEP}2",
    ):
        with pytest.raises(ValueError):
            split_key(junk)


def test_index_counts_keys_and_buckets_and_forgets_a_bucket_with_all_its_shards() -> None:
    index = BucketIndex()
    for shard in (0, 3, 3, WHOLE):
        index.add("jd", "1d", 0, shard)
    index.add("jd", "1m", 60, 1)
    assert index.buckets() == 2 and index.starts("jd", "1d") == {0}
    index.discard("jd", "1d", 0, WHOLE)  # the whole key, once cut into shards
    index.discard("jd", "1d", 0, 0)
    assert index.starts("jd", "1d") == {0} and index.buckets() == 2  # shard 3 is left
    index.discard("jd", "1d", 0)
    assert index.starts("jd", "1d") == set() and index.buckets() == 1
    # In keys: a table of the same size as the index (one key per shard) is not listed again.
    index.sync(1, lambda: pytest.fail("listed"))
    keys = [bucket_key("jd", "1m", 60, 1), bucket_key("jd", "1m", 60, 2), bucket_key("jd", "1h", 0)]
    rebuilt = BucketIndex()
    rebuilt.sync(len(keys), lambda: keys)
    assert rebuilt.buckets() == 2 and rebuilt.starts("jd", "1m") == {60}
    rebuilt.sync(len(keys), lambda: pytest.fail("listed"))
    assert rebuilt.buckets() == 2


def test_views_join_a_buckets_shards_and_stay_the_same_object_while_none_changes() -> None:
    table: dict[str, BucketValue] = {}

    def put(shard: int, campaign: str, clicks: int) -> None:
        value = merge(
            table.get(bucket_key("jd", "1m", 60, shard)), "clicks/0", 0, clicks, {campaign: [clicks]}
        )
        assert value is not None
        table[bucket_key("jd", "1m", 60, shard)] = value

    views = BucketViews(table.get, shards=4)
    assert views("jd", "1m", 60) is None
    put(1, "a", 1)
    assert views("jd", "1m", 60) is table[bucket_key("jd", "1m", 60, 1)]  # one shard: itself
    put(2, "b", 2)
    view = views("jd", "1m", 60)
    assert view is not None and totals(view) == {"a": [1], "b": [2]}
    assert views("jd", "1m", 60) is view  # unchanged: the same object (the snapshot tells by identity)
    put(2, "b", 5)
    changed = views("jd", "1m", 60)
    assert changed is not view and changed is not None and totals(changed) == {"a": [1], "b": [5]}
    # A bucket kept whole by a version before shards is read as it is, shards or not.
    whole = merge(None, "clicks/0", 0, 9, {"a": [7]})
    assert whole is not None
    table[bucket_key("jd", "1m", 60)] = whole
    assert views("jd", "1m", 60) is whole


def test_views_keep_a_bounded_number_of_rows() -> None:
    table: dict[str, BucketValue] = {}
    for start in range(10):
        for shard in range(2):
            value = merge(None, "clicks/0", 0, 9, {f"c{shard}-{i}": [1] for i in range(10)})
            assert value is not None
            table[bucket_key("jd", "1m", start * 60, shard)] = value
    views = BucketViews(table.get, shards=2, max_rows=50)
    first = views("jd", "1m", 0)
    for start in range(1, 10):
        assert views("jd", "1m", start * 60) is not None
    assert views._rows == 40  # noqa: SLF001 - the bound is what this tests
    assert views("jd", "1m", 0) is not first  # evicted: joined again (equal, a new object)


def test_a_slow_snapshot_tick_logs_where_its_time_went(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = iter([100.0, 100.2, 103.2, 103.5, 200.0, 200.1, 200.2])
    monkeypatch.setattr("agents.buckets.time.perf_counter", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="agents.buckets")
    slow = TickLaps()
    slow.lap("index")
    slow.lap("build")
    slow.log_if_slow(closed=26_000)
    assert caplog.messages == [
        "snapshot tick took 3.5 s (26000 closed window rows): index 0.20 s, build 3.00 s"
    ]
    quick = TickLaps()
    quick.lap("index")
    quick.log_if_slow(closed=0)
    assert len(caplog.messages) == 1


def _keys_of(index: BucketIndex) -> set[tuple[str, str, int, int]]:
    """The (channel, window, start, shard) keys ``index`` holds, read from its shards' bits."""
    return {
        (channel, window, start, shard)
        for channel, windows in index._starts.items()  # noqa: SLF001 - the representation under test
        for window, starts in windows.items()
        for start, bits in starts.items()
        for shard in range(WHOLE, bits.bit_length() - 1)
        if bits >> (shard + 1) & 1
    }


def test_the_index_agrees_with_a_set_of_keys_through_adds_discards_and_rebuilds() -> None:
    """The index keeps a bucket's shards as the bits of an int: checked against plain sets of keys, through
    random writes and deletes (high shards and the whole key among them), and a rebuild from the keys."""
    rng = random.Random(7)
    index = BucketIndex()
    model: set[tuple[str, str, int, int]] = set()
    for _ in range(5_000):
        channel, window, start = rng.choice("ab"), rng.choice(["1m", "1h"]), rng.randrange(4) * 60
        shard = rng.choice([WHOLE, 0, 1, 63, 64, 200])
        if rng.random() < 0.6:
            index.add(channel, window, start, shard)
            model.add((channel, window, start, shard))
        elif rng.random() < 0.5:
            index.discard(channel, window, start, shard)
            model.discard((channel, window, start, shard))
        else:
            index.discard(channel, window, start)
            model -= {key for key in model if key[:3] == (channel, window, start)}
        assert _keys_of(index) == model and index.buckets() == len({key[:3] for key in model})
        for c in "ab":
            for w in ("1m", "1h"):
                assert set(index.starts(c, w)) == {s for (bc, bw, s, _) in model if (bc, bw) == (c, w)}
    index.sync(len(model), lambda: pytest.fail("listed: the index counts a different number of keys"))
    rebuilt = BucketIndex()
    rebuilt.sync(len(model), lambda: [bucket_key(*key) for key in model])
    assert _keys_of(rebuilt) == model and rebuilt.buckets() == index.buckets()
    rebuilt.sync(len(model), lambda: pytest.fail("listed again"))
