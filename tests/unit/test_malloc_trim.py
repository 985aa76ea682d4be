"""Handing freed memory back to the system: the cadence and metrics of ``MallocTrim``, and glibc's own
``malloc_trim`` giving back a fragmented heap (in a process of its own)."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from adpulse.settings import Settings
from agents.malloc_trim import MallocTrim, libc_malloc_trim, resident_bytes
from agents.metrics import PipelineMetrics

REPO = Path(__file__).resolve().parents[2]


def metrics() -> tuple[PipelineMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return PipelineMetrics(registry), registry


def value(registry: CollectorRegistry, name: str) -> float:
    found = registry.get_sample_value(name)
    assert found is not None, name
    return found


def test_a_trim_is_timed_and_what_it_gave_back_counted() -> None:
    m, registry = metrics()
    calls: list[int] = []

    def fake_trim() -> int:
        calls.append(0)
        return 1

    resident = iter([100_000_000, 40_000_000])
    ticks = iter([1.0, 1.25])
    trim = MallocTrim(m, 10.0, fake_trim, lambda: next(resident), lambda: next(ticks))
    assert trim.once() == 60_000_000
    assert calls == [0]
    assert value(registry, "adpulse_malloc_trimmed_bytes_total") == 60_000_000
    assert value(registry, "adpulse_malloc_trim_seconds_count") == 1
    assert value(registry, "adpulse_malloc_trim_seconds_sum") == 0.25


def test_memory_that_grew_meanwhile_counts_nothing_and_without_a_trim_nothing_runs() -> None:
    m, registry = metrics()
    resident = iter([40_000_000, 50_000_000])
    assert MallocTrim(m, 10.0, lambda: 0, lambda: next(resident)).once() == 0
    assert MallocTrim(m, 10.0, lambda: 0, lambda: None).once() == 0
    assert value(registry, "adpulse_malloc_trimmed_bytes_total") == 0
    untrimmed = MallocTrim(m, 0.01, None)
    assert untrimmed.once() == 0
    asyncio.run(asyncio.wait_for(untrimmed.run(), 5))  # returns at once: nothing to run


def test_it_trims_every_period_off_the_event_loop() -> None:
    m, registry = metrics()
    threads: list[bool] = []

    def trim() -> int:
        try:
            asyncio.get_running_loop()
            threads.append(False)  # on the loop: wrong
        except RuntimeError:
            threads.append(True)
        return 1

    async def main() -> None:
        task = asyncio.create_task(MallocTrim(m, 0.01, trim).run())
        while len(threads) < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert threads[:3] == [True, True, True]


def test_glibc_gives_back_a_fragmented_heap() -> None:
    if platform.libc_ver()[0] != "glibc" and not os.environ.get("CI"):
        pytest.skip("malloc_trim is glibc's (CI runs on Debian: there it must work)")
    assert libc_malloc_trim() is not None
    assert resident_bytes() is not None
    # 160 MB in 8 KiB blocks (the C allocator's, not Python's own), one in 16 kept: the free ones lie
    # between blocks still in use, so the heap cannot shrink from its top and they stay resident until
    # malloc_trim hands them back.
    script = textwrap.dedent(
        """
        from agents.malloc_trim import libc_malloc_trim, resident_bytes
        keep, junk = [], []
        for i in range(20_000):
            (keep if i % 16 == 0 else junk).append(bytearray(b"x" * 8192))
        del junk
        before = resident_bytes()
        libc_malloc_trim()()
        print(before - resident_bytes())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert int(out.stdout) > 100 * 2**20, out


def test_a_failing_trim_is_logged_once_and_the_task_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    m, _ = metrics()
    calls: list[int] = []

    def broken() -> int:
        calls.append(0)
        raise RuntimeError("can't start new thread")

    async def main() -> None:
        task = asyncio.create_task(MallocTrim(m, 0.01, broken).run())
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        assert not task.done()  # still trimming: a failure never ends the task (nor the worker)
        task.cancel()

    with caplog.at_level("DEBUG", logger="agents.malloc_trim"):
        asyncio.run(asyncio.wait_for(main(), 30))
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "malloc_trim failed" in warnings[0].getMessage()


@pytest.mark.parametrize("period", [0.001, 0.5, float("inf"), float("nan"), -1.0])
def test_the_period_is_never_or_at_least_a_second(period: float) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, malloc_trim_s=period)


def test_the_period_accepts_never_and_whole_seconds() -> None:
    assert Settings(_env_file=None, malloc_trim_s=0).malloc_trim_s == 0
    assert Settings(_env_file=None, malloc_trim_s=1).malloc_trim_s == 1
    assert Settings(_env_file=None).malloc_trim_s == 10
