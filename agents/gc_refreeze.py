"""Keep Python's full garbage collections short when the worker holds a lot of state.

A full collection walks every object the collector tracks and holds every thread meanwhile. At 100,000
campaigns that took 2.4–3.3 s (``BENCHMARKS.md``, "10 channels × 10,000 campaigns"): a hundred and more
times a simulated day with CPython's default thresholds; with young collections every 50,000 objects
(``adpulse.worker.tune_gc``) rarely, but each one as long.
Those objects are long-lived: a full collection that has just walked them found them alive, and will find
them alive again. So a full collection that took ``freeze_after_s`` or longer freezes what it found alive
(``gc.freeze()``) out of the next ones: they walk only what became long-lived since, and cost what changed,
not what is kept. A short one changes nothing: a worker with little state collects as CPython always does.

Frozen objects are still freed when nothing refers to them any more; what freezing keeps is a frozen object
that later becomes part of an unreachable *cycle* (an error with its traceback, a request in flight that
refers to itself), and whatever it refers to. Freezing only after slow collections keeps those few: the
cycles alive at that moment. A sweep every ``sweep_s`` (6 hours by default, ±10 % so that workers started
together do not sweep together) unfreezes everything and collects it all: that one stall, as long as a
plain full collection, is the price of the bound; ``adpulse_gc_sweep_unreachable_total`` counts what the
sweeps freed among the frozen (and the old) objects.

Threads: the judge runs in a worker thread, and a collection it triggers calls back in that thread. Between
the end of that collection and the callback, another thread may allocate; those objects are frozen unseen
(they are young: at worst a cycle among them waits for the sweep). ``gc.collect()`` does nothing while
another thread collects: a sweep that meets one is retried a minute later.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from agents.metrics import PipelineMetrics

log = logging.getLogger(__name__)

OLDEST = 2
#: How long a worker waits to sweep again after another thread's collection kept a sweep from running.
SWEEP_RETRY_S = 60.0


class Refreezer:
    """Freeze what a slow full collection leaves alive; sweep everything every ``sweep_s``."""

    def __init__(
        self,
        metrics: PipelineMetrics,
        freeze_after_s: float,
        sweep_s: float,
        clock: Callable[[], float] = time.perf_counter,
        jitter: Callable[[], float] = lambda: random.uniform(0.9, 1.1),
    ) -> None:
        self.metrics = metrics
        self.freeze_after_s = freeze_after_s
        self.sweep_s = sweep_s
        self.clock = clock
        self.jitter = jitter
        self._started: float | None = None
        self._sweeper: int | None = None  # the thread sweeping, while it does
        self._swept = False

    def install(self) -> Callable[[], None]:
        """Start watching full collections; returns the function that stops it."""
        gc.callbacks.append(self._after)
        return lambda: gc.callbacks.remove(self._after)

    def _after(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != OLDEST:
            return
        if phase == "start":
            self._started = self.clock()
            return
        took = self.clock() - self._started if self._started is not None else 0.0
        self._started = None
        if self._sweeper is not None:
            self._swept = self._swept or threading.get_ident() == self._sweeper
            return  # the sweep decides
        if took >= self.freeze_after_s:
            # Every younger generation was merged into the oldest for this collection: its survivors
            # are what is left to freeze (gc.get_freeze_count() would walk them all: not here).
            gc.freeze()
            self.metrics.gc_freezes.inc()

    def sweep(self) -> int | None:
        """Collect everything, the frozen objects too (a stall as long as a plain full collection), and
        freeze what is left if that was slow. Returns the unreachable objects found among the frozen and
        the old ones, or None when another thread's collection kept the sweep from running (try later)."""
        self._sweeper = threading.get_ident()
        try:
            # The young generations' garbage first (cheap), so that the count below is mostly what the
            # frozen and the old objects held (a full collection here would double the sweep's stall).
            gc.collect(1)
            self._swept = False
            started = self.clock()
            gc.unfreeze()
            unreachable = gc.collect()
            took = self.clock() - started
            if not self._swept:
                gc.freeze()  # as it was: nothing was collected
                log.info("garbage collector sweep skipped (another thread was collecting); retrying")
                return None
            if took >= self.freeze_after_s:
                gc.freeze()
                self.metrics.gc_freezes.inc()
        finally:
            self._sweeper = None
        self.metrics.gc_sweep_unreachable.inc(unreachable)
        log.info(
            "garbage collector sweep: %.2f s, %d unreachable objects found among the frozen and old ones",
            took,
            unreachable,
        )
        return unreachable

    async def run(self) -> None:
        """Sweep every ``sweep_s`` (± 10 %) until cancelled."""
        wait = self.sweep_s * self.jitter()
        while True:
            await asyncio.sleep(wait)
            wait = self.sweep_s * self.jitter() if self.sweep() is not None else SWEEP_RETRY_S
