"""The worker's Redis retry: transient errors wait with capped backoff, one log line and one count per outage,
real errors still raise."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from agents.metrics import PipelineMetrics
from agents.redis_retry import RedisRetry, RedisUnavailableError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.on_sleep: Callable[[], None] = lambda: None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.on_sleep()
        self.slept.append(seconds)
        self.now += seconds


class Flaky:
    """An operation that fails ``failures`` times with ``error``, then answers ``"ok"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def _retry(registry: CollectorRegistry, clock: Clock) -> RedisRetry:
    return RedisRetry(PipelineMetrics(registry), first_s=0.25, cap_s=5.0, clock=clock, sleep=clock.sleep)


def test_call_waits_with_capped_backoff_and_logs_and_counts_the_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agents.redis_retry")
    registry, clock = CollectorRegistry(), Clock()
    retry = _retry(registry, clock)
    op = Flaky(8, RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))

    assert asyncio.run(retry.call("writing the KPI snapshot", op)) == "ok"

    assert op.calls == 9
    assert clock.slept == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "while writing the KPI snapshot" in warnings[0]
    assert infos == ["Redis is back after 22.8 s (8 failed calls retried); resuming"]
    assert registry.get_sample_value("adpulse_redis_outages_total") == 1
    assert (
        registry.get_sample_value("adpulse_redis_retries_total", {"operation": "writing the KPI snapshot"})
        == 8
    )
    assert registry.get_sample_value("adpulse_redis_unavailable") == 0
    assert not retry.down


def test_a_schedule_attempts_once_and_waits_its_own_backoff() -> None:
    registry, clock = CollectorRegistry(), Clock()
    retry = _retry(registry, clock)
    turns = retry.schedule()
    loading = Flaky(2, BusyLoadingError("Redis is loading the dataset in memory"))

    def state() -> tuple[bool, bool]:
        """(down, due) now."""
        return retry.down, turns.due()

    with pytest.raises(RedisUnavailableError, match="while reading fold checkpoints"):
        asyncio.run(turns.attempt("reading fold checkpoints", loading))
    assert state() == (True, False)
    assert registry.get_sample_value("adpulse_redis_unavailable") == 1
    clock.now += 0.25
    assert state() == (True, True)
    with pytest.raises(RedisUnavailableError):
        asyncio.run(turns.attempt("reading fold checkpoints", loading))
    clock.now += 0.4
    assert state() == (True, False)  # the second failure doubled the wait
    clock.now += 0.1
    assert asyncio.run(turns.attempt("reading fold checkpoints", loading)) == "ok"
    assert state() == (False, True)

    # A second outage is counted again.
    with pytest.raises(RedisUnavailableError):
        asyncio.run(turns.attempt("writing fold checkpoints", Flaky(1, OSError("Connection reset by peer"))))
    assert registry.get_sample_value("adpulse_redis_outages_total") == 2


def test_a_caller_waiting_in_call_takes_no_turn_from_a_schedule() -> None:
    """The snapshot timer fails again at every end of its backoff: between its failures the fold stage's
    schedule still gets its turns (with one backoff shared, each failure of the timer pushed them back, and
    the fold stage only asked again once Redis was back), and it goes at once when the timer sees Redis
    answer."""
    registry, clock = CollectorRegistry(), Clock()
    retry = _retry(registry, clock)
    turns = retry.schedule()
    down = RedisConnectionError("Connection refused")
    with pytest.raises(RedisUnavailableError):
        asyncio.run(turns.attempt("reading fold checkpoints", Flaky(1, down)))  # its next turn: 0.25 s on
    due_after_the_timer_failed: list[bool] = []
    clock.on_sleep = lambda: due_after_the_timer_failed.append(turns.due())

    asyncio.run(retry.call("writing the KPI snapshot", Flaky(3, down)))  # fails at 0, 0.25 and 0.75 s

    assert due_after_the_timer_failed == [False, True, True]
    assert clock.now == 1001.75 and not retry.down and turns.due()


def test_errors_that_are_not_an_outage_still_raise() -> None:
    registry, clock = CollectorRegistry(), Clock()
    retry = _retry(registry, clock)
    wrong = Flaky(1, ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))

    with pytest.raises(ResponseError):
        asyncio.run(retry.call("writing the KPI snapshot", wrong))
    assert wrong.calls == 1 and clock.slept == [] and not retry.down
    assert registry.get_sample_value("adpulse_redis_outages_total") == 0
