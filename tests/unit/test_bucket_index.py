"""The bucket index the snapshot timer and expiry use instead of scanning every table key."""

from __future__ import annotations

from agents.buckets import SEP, BucketIndex, _expired, bucket_key


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
