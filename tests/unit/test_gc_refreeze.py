"""The worker's garbage-collection policy: survivors of a full collection are frozen out of the next ones,
and the periodic sweep still frees what became unreachable among them."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from agents.gc_refreeze import Refreezer
from agents.metrics import PipelineMetrics


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


@pytest.fixture
def refreezer() -> Iterator[tuple[Refreezer, CollectorRegistry]]:
    registry = CollectorRegistry()
    refreezer = Refreezer(PipelineMetrics(registry), sweep_s=0)
    stop = refreezer.install()
    try:
        yield refreezer, registry
    finally:
        stop()
        gc.unfreeze()
        gc.collect()


def test_what_a_full_collection_finds_alive_is_frozen_out_of_the_next(
    refreezer: tuple[Refreezer, CollectorRegistry],
) -> None:
    _, registry = refreezer
    gc.unfreeze()
    kept = [Node() for _ in range(1000)]
    gc.collect()
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    assert registry.get_sample_value("adpulse_gc_frozen_objects") == frozen
    assert gc.get_count()[0] < 100  # nothing left young to walk
    # A young collection does not freeze: only full ones have walked everything alive.
    more = [Node() for _ in range(1000)]
    gc.collect(0)
    assert gc.get_freeze_count() == frozen
    del kept, more


def test_cycles_among_frozen_objects_are_kept_until_the_sweep_frees_them(
    refreezer: tuple[Refreezer, CollectorRegistry],
) -> None:
    sweeper, registry = refreezer
    garbage = cycle()
    freed = weakref.ref(garbage)
    gc.collect()  # alive now: frozen
    del garbage
    gc.collect()
    assert freed() is not None  # frozen: no collection walks it
    assert sweeper.sweep() >= 2
    assert freed() is None
    assert (registry.get_sample_value("adpulse_gc_sweep_unreachable_total") or 0) >= 2
    assert gc.get_freeze_count() > 0  # the sweep's survivors are frozen again


def test_a_young_cycle_is_still_collected_without_a_sweep(
    refreezer: tuple[Refreezer, CollectorRegistry],
) -> None:
    gc.collect()
    garbage = cycle()
    freed = weakref.ref(garbage)
    del garbage
    gc.collect()
    assert freed() is None


def test_the_sweeps_run_on_their_period_and_never_when_it_is_zero() -> None:
    registry = CollectorRegistry()
    asyncio.run(asyncio.wait_for(Refreezer(PipelineMetrics(registry), sweep_s=0).run(), 1.0))  # returns

    swept: list[int] = []

    class Counting(Refreezer):
        def sweep(self) -> int:
            swept.append(1)
            return 0

    async def two_sweeps() -> None:
        task = asyncio.create_task(Counting(PipelineMetrics(CollectorRegistry()), sweep_s=0.01).run())
        while len(swept) < 2:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(two_sweeps(), 10.0))
    assert len(swept) >= 2
