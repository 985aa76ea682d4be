"""Outages under a working worker and router, with traffic before, during and after: Redis down for 60 s
(stopped and started again on its append-only file), the broker down for 30 s and for 45 s (every connection
cut and the port closed, its data kept, as a broker restarting from its disks; 45 s outlasts the producers'
40 s request timeout). Afterwards every window equals the ground truth and every alert was delivered once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.conftest import own_stack
from tests.faults.gate import gated_broker
from tests.faults.harness import Pipeline, fault_traffic, two_hours_ago_ms
from tests.faults.hostile import Hostile
from tests.faults.table import FaultRow

pytestmark = [pytest.mark.integration, pytest.mark.faults_long, pytest.mark.timeout(900)]

EVENTS = 40_000
TUNING = {
    "grace_s": 60.0,
    "block_records": 2000,
    "flush_interval_s": 0.3,
    "tick_s": 0.5,
    "idle_partition_s": 3.0,
}


def _during(pipeline: Pipeline, records: Sequence[Hostile], seconds: float) -> None:
    """Send ``records`` spread over ``seconds`` (trackers keep sending to a broker that is up)."""
    chunks = 10
    pipeline.send(records, chunk=max(1, len(records) // chunks), pause_s=seconds / chunks)


@pytest.mark.parametrize("restart", [False, True], ids=["worker-running", "worker-restarted-meanwhile"])
def test_redis_down_60s_under_a_working_worker_and_router(
    tmp_path: Path, fault_row: Callable[[FaultRow], None], restart: bool
) -> None:
    """``restart``: the worker is also killed during the outage and comes back while Redis is still down
    (its partitions are assigned to it with no checkpoint to read)."""
    traffic = fault_traffic(EVENTS, two_hours_ago_ms(), 40 * 60_000, seed=21)
    third = len(traffic) // 3
    with (
        own_stack(tmp_path / "home") as (base, stack),
        Pipeline(base.model_copy(update=TUNING), tmp_path, workers=1, routers=1) as pipeline,
    ):
        pipeline.send(traffic[:third], chunk=2_000, pause_s=0.3)
        stack.down(["redis"])
        down_at = time.monotonic()
        _during(pipeline, traffic[third : 2 * third], 50.0)
        if restart:
            pipeline.kill9(pipeline.workers[0])
        time.sleep(max(0.0, 60.0 - (time.monotonic() - down_at)))
        stack.up()
        pipeline.send(traffic[2 * third :], chunk=2_000, pause_s=0.3)
        fault = "Redis down 60 s" + (", the worker restarted meanwhile" if restart else "")
        outcome = pipeline.settle(fault, timeout_s=240)
    fault_row(outcome.row)
    outcome.check()


@pytest.mark.parametrize("down_s", [30, 45])
def test_broker_down_under_a_working_worker_and_router(
    tmp_path: Path, fault_row: Callable[[FaultRow], None], down_s: int
) -> None:
    traffic = fault_traffic(EVENTS, two_hours_ago_ms(), 40 * 60_000, seed=22)
    with (
        own_stack(tmp_path / "home") as (base, _),
        gated_broker(base, tmp_path / "broker") as (settings, gate),
        Pipeline(settings.model_copy(update=TUNING), tmp_path, workers=1, routers=1) as pipeline,
    ):

        def outage(sent: int) -> None:
            # Right after a chunk reached the broker: the worker is folding it, partials and DLQ records in
            # flight, when every connection drops.
            if sent == len(traffic) // 2:
                gate.shut()
                time.sleep(down_s)
                gate.open()

        pipeline.send(traffic, chunk=4_000, pause_s=0.3, on_chunk=outage)
        outcome = pipeline.settle(f"broker down {down_s} s", timeout_s=300)
    fault_row(outcome.row)
    outcome.check()
