"""A snapshot tick writes only what it read from partitions no rebalance touched meanwhile."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agents.buckets import PartitionsMovedError, _if_owned, ownership


def _app(rebalancing: bool = False, count: int = 3) -> SimpleNamespace:
    return SimpleNamespace(rebalancing=rebalancing, rebalancing_count=count)


def test_no_tick_starts_while_faust_rebalances() -> None:
    assert ownership(_app(rebalancing=True), lambda: frozenset({0})) is None


def test_a_quiet_tick_still_owns_its_partitions() -> None:
    app = _app()
    still_owned = ownership(app, lambda: frozenset({0, 2}))
    assert still_owned is not None and still_owned()


@pytest.mark.parametrize(
    "change",
    [
        "rebalancing",  # a rebalance is under way
        "came and went",  # one began and ended: same partitions, but read across it
        "moved",  # another set of partitions
    ],
)
def test_a_tick_that_a_rebalance_overlapped_no_longer_owns(change: str) -> None:
    app = _app()
    assigned = {"now": frozenset({0, 2})}
    still_owned = ownership(app, lambda: assigned["now"])
    assert still_owned is not None
    if change == "rebalancing":
        app.rebalancing = True
    elif change == "came and went":
        app.rebalancing_count += 1
    else:
        assigned["now"] = frozenset({0})
    assert not still_owned()


def test_a_write_is_made_only_while_owned() -> None:
    written: list[str] = []

    async def write() -> None:
        written.append("rows")

    asyncio.run(_if_owned(lambda: True, write))
    assert written == ["rows"]
    with pytest.raises(PartitionsMovedError):
        asyncio.run(_if_owned(lambda: False, write))
    assert written == ["rows"]
