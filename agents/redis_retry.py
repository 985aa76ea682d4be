"""Riding out Redis outages on the worker: a Redis error holds progress back, it never ends the process.

For a monitor, Redis going away is a transient fault (a restart, a failover, a cut network), not a reason to
die: a worker that exits is restarted by its supervisor only to exit again while Redis stays down. The
worker's parts share one :class:`RedisRetry`:

- a transient error (the connection, a timeout, a server still loading its data, or read-only during a
  failover) is retried; any other error (a bug, a wrong command) still raises;
- ``call`` waits until Redis answers, with capped exponential backoff: for the snapshot timer and the judge,
  which have nothing else to do meanwhile;
- a :class:`Schedule` (``schedule()``) tries once and raises :class:`RedisUnavailableError`: for the fold
  stage, which must keep polling the broker (a consumer that stops polling is put out of its group) and
  instead pauses the partitions that wait for Redis, asking again when its ``due`` says so. Each caller
  backs off on its own schedule: with a shared one, the caller waiting in ``call`` would take every turn;
- each outage is logged once, a WARNING when it starts and an INFO with its length when Redis answers
  again, and counted: ``adpulse_redis_outages_total``, ``adpulse_redis_retries_total{operation}`` (the calls
  that failed, by what they were for) and ``adpulse_redis_unavailable`` (1 during an outage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.metrics import PipelineMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that say "Redis is not there right now" (``BusyLoadingError``, a server loading its data after a
#: restart, is a ``ConnectionError``; ``OSError`` covers a socket error redis-py did not wrap).
TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    TryAgainError,
    OSError,
)


class RedisUnavailableError(Exception):
    """Redis did not answer (or, during an outage, is not to be asked again yet): what needed it waits."""


class RedisRetry:
    """One process's view of whether Redis answers: the outage's log lines and metrics; see the module."""

    def __init__(
        self,
        metrics: PipelineMetrics | None = None,
        *,
        first_s: float = 0.25,
        cap_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.metrics = metrics
        self.first_s = first_s
        self.cap_s = cap_s
        self.clock = clock
        self._sleep = sleep
        self._down_since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        """Whether the last call failed and none has succeeded since."""
        return self._down_since is not None

    def backoff(self, failures: int) -> float:
        """The wait after ``failures`` (at least 1) failures in a row: doubling from ``first_s`` up to
        ``cap_s``."""
        return min(self.cap_s, self.first_s * 2.0 ** max(0, failures - 1))

    def schedule(self) -> Schedule:
        """A caller's own schedule of single attempts."""
        return Schedule(self)

    async def attempt(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()`` once; :class:`RedisUnavailableError` if Redis did not answer. ``what`` names the
        operation in the log and the metric ("writing fold checkpoints")."""
        try:
            result = await op()
        except TRANSIENT as exc:
            self._failed(what, exc)
            raise RedisUnavailableError(
                f"Redis unavailable while {what}: {type(exc).__name__}: {exc}"
            ) from exc
        self._answered()
        return result

    async def call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()`` until Redis answers, waiting with capped backoff in between. ``op`` must build its
        command afresh each time (a redis-py pipeline is empty after a failed ``execute``)."""
        failures = 0
        while True:
            try:
                return await self.attempt(what, op)
            except RedisUnavailableError:
                failures += 1
                await self._sleep(self.backoff(failures))

    def _failed(self, what: str, exc: BaseException) -> None:
        self._failures += 1
        if self.metrics is not None:
            self.metrics.redis_retries.labels(what).inc()
        if self._down_since is not None:
            return
        self._down_since = self.clock()
        if self.metrics is not None:
            self.metrics.redis_outages.inc()
            self.metrics.redis_unavailable.set(1)
        log.warning(
            "Redis unavailable (%s: %s) while %s: progress is held back (no checkpoint written, no offset "
            "committed, no snapshot or alert lost) and Redis is retried with backoff up to %.0f s; logged "
            "once per outage",
            type(exc).__name__,
            exc,
            what,
            self.cap_s,
        )

    def _answered(self) -> None:
        if self._down_since is None:
            return
        lasted = self.clock() - self._down_since
        log.info("Redis is back after %.1f s (%d failed calls retried); resuming", lasted, self._failures)
        self._down_since = None
        self._failures = 0
        if self.metrics is not None:
            self.metrics.redis_unavailable.set(0)


class Schedule:
    """One caller's turns at Redis during an outage: ``due`` once its own backoff since its last failure is
    over, or at once when anyone saw Redis answer since."""

    def __init__(self, retry: RedisRetry) -> None:
        self.retry = retry
        self._failures = 0
        self._next_try = 0.0

    def due(self) -> bool:
        """Whether this caller may ask Redis now."""
        return not self.retry.down or self.retry.clock() >= self._next_try

    async def attempt(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``RedisRetry.attempt``, this caller's next turn moved back after a failure."""
        try:
            result = await self.retry.attempt(what, op)
        except RedisUnavailableError:
            self._failures += 1
            self._next_try = self.retry.clock() + self.retry.backoff(self._failures)
            raise
        self._failures = 0
        return result
