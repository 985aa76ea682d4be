"""The worker's garbage-collection policy: the survivors of a slow full collection are frozen out of the next
ones, a quick one changes nothing, and the periodic sweep still frees what became unreachable among them."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from adpulse.settings import Settings
from agents.gc_refreeze import SWEEP_RETRY_S, Refreezer
from agents.metrics import PipelineMetrics


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    # Only the tests' own collections: an automatic one in between (when it comes depends on every test
    # run before in this process) would freeze too.
    gc.unfreeze()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()
        gc.collect()


def installed(freeze_after_s: float) -> tuple[Refreezer, CollectorRegistry]:
    registry = CollectorRegistry()
    return Refreezer(PipelineMetrics(registry), freeze_after_s, sweep_s=3600.0), registry


def test_what_a_slow_full_collection_finds_alive_is_frozen_out_of_the_next() -> None:
    refreezer, registry = installed(freeze_after_s=0.0)  # every collection counts as slow
    stop = refreezer.install()
    try:
        kept = [Node() for _ in range(1000)]
        gc.collect()
        assert gc.get_freeze_count() >= len(kept)
        # At least this one: another thread's collection meanwhile counts too (CI once saw 2 here, cause not
        # found: the fixture now stops automatic collections, not another thread's explicit one).
        freezes = registry.get_sample_value("adpulse_gc_freezes_total")
        assert freezes is not None and freezes >= 1
        # A young collection does not freeze: only a full one has walked everything alive.
        frozen = gc.get_freeze_count()
        more = [Node() for _ in range(1000)]
        gc.collect(0)
        assert gc.get_freeze_count() == frozen
        del kept, more
    finally:
        stop()


def test_a_quick_full_collection_freezes_nothing() -> None:
    refreezer, registry = installed(freeze_after_s=3600.0)
    stop = refreezer.install()
    try:
        kept = [Node() for _ in range(1000)]
        gc.collect()
        assert gc.get_freeze_count() == 0
        assert registry.get_sample_value("adpulse_gc_freezes_total") == 0
        del kept
    finally:
        stop()


def test_cycles_among_frozen_objects_are_kept_until_the_sweep_frees_them() -> None:
    refreezer, registry = installed(freeze_after_s=0.0)
    stop = refreezer.install()
    try:
        garbage = cycle()
        freed = weakref.ref(garbage)
        gc.collect()  # alive now: frozen
        del garbage
        young = cycle()  # garbage a plain collection frees: not counted as the frozen ones'
        del young
        gc.collect()
        assert freed() is not None  # frozen: no collection walks it
        assert refreezer.sweep() == 2
        assert freed() is None
        assert registry.get_sample_value("adpulse_gc_sweep_unreachable_total") == 2
        assert gc.get_freeze_count() > 0  # the sweep was slow enough here: its survivors are frozen again
    finally:
        stop()


def test_a_young_cycle_is_still_collected_without_a_sweep() -> None:
    refreezer, _ = installed(freeze_after_s=0.0)
    stop = refreezer.install()
    try:
        gc.collect()
        garbage = cycle()
        freed = weakref.ref(garbage)
        del garbage
        gc.collect()
        assert freed() is None
    finally:
        stop()


def test_the_sweeps_run_on_their_period_with_jitter_and_retry_soon_when_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    results = iter([None, 0, 0])

    class Recorded(Refreezer):
        def sweep(self) -> int | None:
            return next(results)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise asyncio.CancelledError

    refreezer = Recorded(PipelineMetrics(CollectorRegistry()), 0.05, sweep_s=1000.0, jitter=lambda: 1.1)
    monkeypatch.setattr("agents.gc_refreeze.asyncio.sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(refreezer.run())
    assert waits == [1100.0, SWEEP_RETRY_S, 1100.0]


def test_sweeps_are_at_least_a_minute_apart() -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, gc_sweep_s=0)
    assert Settings(_env_file=None).gc_freeze_after_s > 0  # on by default
