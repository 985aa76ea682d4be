"""Keep Python's full garbage collections short when the worker holds a lot of state.

A full collection walks every object the collector tracks and holds every thread meanwhile. At 100,000
campaigns the judge's state is some 8–10 million such objects, and each full collection stalled the worker
for ~2.4 s (``BENCHMARKS.md``, "10 channels × 10,000 campaigns"), a hundred and more times a simulated day.
Those objects are long-lived: a full collection that has just walked them found them alive, and will find
them alive again. So what survives a full collection is frozen (``gc.freeze()``) out of the next ones: they
walk only what became long-lived since, and cost what changed, not what is kept.

Frozen objects are still freed when nothing refers to them any more; what freezing would leak is a frozen
object that later becomes part of unreachable *cycles*. A sweep every ``sweep_s`` (6 hours by default)
unfreezes everything and runs one full collection over it all: that one stall is the price of the bound, and
``adpulse_gc_sweep_unreachable_total`` counts what the sweeps found (what freezing alone would have kept).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from agents.metrics import PipelineMetrics

log = logging.getLogger(__name__)

OLDEST = 2


class Refreezer:
    """Freeze what each full collection leaves alive; sweep everything every ``sweep_s`` (0: never)."""

    def __init__(
        self,
        metrics: PipelineMetrics,
        sweep_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.metrics = metrics
        self.sweep_s = sweep_s
        self.clock = clock

    def install(self) -> Callable[[], None]:
        """Start freezing after full collections; returns the function that stops it."""
        gc.callbacks.append(self._after)
        return lambda: gc.callbacks.remove(self._after)

    def _after(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == OLDEST:
            # Every younger generation was merged into the oldest for this collection: freezing now
            # moves exactly its survivors to the permanent generation.
            gc.freeze()
            self.metrics.gc_frozen.set(gc.get_freeze_count())

    def sweep(self) -> int:
        """Unfreeze everything and collect it all (a stall as long as a plain full collection); what it
        leaves alive is frozen again. Returns the unreachable objects it found."""
        started = self.clock()
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        unreachable = gc.collect()
        self.metrics.gc_sweep_unreachable.inc(unreachable)
        log.info(
            "garbage collector sweep: %d frozen objects walked in %.2f s, %d unreachable found",
            frozen,
            self.clock() - started,
            unreachable,
        )
        return unreachable

    async def run(self) -> None:
        """Sweep every ``sweep_s`` until cancelled (never if it is 0)."""
        if self.sweep_s <= 0:
            return
        while True:
            await asyncio.sleep(self.sweep_s)
            self.sweep()
