"""The bulk read's decoding (``streams.store``) gives what Faust's own changelog decoding gives, and the
values it applies are left out of the garbage collector's work. The read itself, on the broker, is in
``tests/integration/test_bulk_recovery.py``."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import faust
import orjson
import pytest
from faust.exceptions import KeyDecodeError
from faust.types import TP

from agents.buckets import BucketTable, bucket_key
from agents.partials import BucketValue
from streams.app import make_app
from streams.store import BulkRecoveryStore


class Record(NamedTuple):
    key: bytes | None
    value: bytes | None
    offset: int


@pytest.fixture
def app(tmp_path: Path) -> faust.App:
    return make_app(
        "store-unit", "127.0.0.1:1", partitions=2, web_host="127.0.0.1", web_port=1, datadir=str(tmp_path)
    )


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # what the applies froze goes back to the collector's generations


def _store(app: faust.App) -> BulkRecoveryStore:
    table = BucketTable(app, name="buckets", default=None, partitions=2, key_type=str)
    app.tables.add(table)
    store = table.data
    assert isinstance(store, BulkRecoveryStore)
    return store


#: JSON keys as a changelog may hold them: what adpulse writes, and what it does not (a key that is no
#: string; a list, Faust's windowed key).
KEYS = [
    b'"douyin\\u001f1m\\u001f60\\u001f3"',
    orjson.dumps(bucket_key("双十一 🛒", "1h", 3600, 0)),
    b"17",
    b'["a", [1, 2]]',
    b'"a\\"b"',
]


def test_keys_decode_as_faust_decodes_them(app: faust.App) -> None:
    store = _store(app)
    topic: Any = store.table.changelog_topic
    table: Any = store.table
    faust_key = table._to_key  # noqa: SLF001
    decode = store._key_decoder()  # noqa: SLF001
    for raw in KEYS:
        expected = faust_key(app.serializers.loads_key(topic.key_type, raw, serializer=topic.key_serializer))
        assert faust_key(decode(raw)) == expected, raw
    for bad in (b"not json", b"", b'"\\ud800x"'):  # Faust refuses them too (a lone surrogate)
        with pytest.raises(KeyDecodeError):
            decode(bad)


@pytest.mark.usefixtures("unfrozen")
def test_applied_values_are_frozen_out_of_collections_and_the_collector_is_left_as_it_was(
    app: faust.App,
) -> None:
    store = _store(app)
    value: BucketValue = {"b": {"c1": (1, 2)}, "p": {"clicks/0": [3, 9, {"c2": (4, 5)}]}, "f": {"spend/0": 2}}
    records = [Record(orjson.dumps(f"k{i}"), orjson.dumps(value), i) for i in range(1000)]
    records.append(Record(orjson.dumps("k5"), None, 1000))  # a tombstone deletes
    frozen = gc.get_freeze_count()
    assert gc.isenabled()
    store._apply(0, records)  # noqa: SLF001
    assert gc.isenabled()
    assert len(store.data) == 999 and "k5" not in store.data and store.data["k7"] == value
    # Every applied value's containers are in the permanent generation, none in the collected ones.
    assert gc.get_freeze_count() - frozen >= 999 * 4
    applied = {id(store.data["k7"]), id(store.data["k7"]["b"]), id(store.data["k7"]["p"])}
    assert not applied & {id(o) for o in gc.get_objects()}
    gc.disable()
    try:
        store._apply(1, records[:3])  # noqa: SLF001
        assert not gc.isenabled()  # a collector paused by someone else stays paused
    finally:
        gc.enable()


class _Cycle:
    """A stand-in for a fetch aiokafka holds half read while a batch is applied (a reference cycle)."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.usefixtures("unfrozen")
def test_a_failed_bulk_read_leaves_nothing_it_froze_for_the_sweep(
    app: faust.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(app)
    topic: Any = store.table.changelog_topic
    changelog = TP(topic.get_topic_name(), 0)
    held: list[weakref.ref[_Cycle]] = []

    async def failing_read(tps: list[TP]) -> dict[TP, int]:
        fetch = _Cycle()
        held.append(weakref.ref(fetch))
        store._apply(0, [Record(orjson.dumps("k"), orjson.dumps({"n": 1}), 0)])  # noqa: SLF001 - freezes it
        del fetch  # dropped half read when the read fails
        raise ConnectionError("broker gone")

    monkeypatch.setattr(store, "read_back", failing_read)
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: {changelog})
    asyncio.run(store.on_rebalance({changelog}, set(), {changelog}))
    assert store.persisted_offset(changelog) is None  # Faust's own recovery reads it
    assert held and held[0]() is None  # collected now, not hours later by the sweep
