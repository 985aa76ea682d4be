"""Outages under a working worker and router, with traffic before, during and after: Redis down for 60 s
(stopped and started again on its append-only file; the worker also restarted meanwhile, after a ``kill -9``
or a SIGTERM) and cut for 20 s (every connection cut and the port closed by a gate in front of it: the short
one, in ``make test``), the broker down for 30 s and for 45 s (the same gate, its data kept, as a broker
restarting from its disks; 45 s outlasts the producers' 40 s request timeout). Afterwards every window
equals the ground truth and every alert was delivered once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from adpulse.metrics_page import metric_sum
from adpulse.settings import Settings
from tests.conftest import own_stack
from tests.faults.gate import gated_broker, gated_redis
from tests.faults.harness import Pipeline, fault_traffic, two_hours_ago_ms
from tests.faults.hostile import Hostile
from tests.faults.table import FaultRow
from tests.support.processes import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

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


def _redis_outage(
    pipeline: Pipeline,
    traffic: Sequence[Hostile],
    down: Callable[[], object],
    up: Callable[[], object],
    down_s: float,
    restart: Callable[[WorkerProcess], None] | None,
) -> None:
    """A third of ``traffic`` before Redis goes ``down``, a third during the (at least) ``down_s`` it stays
    away, a third after it is ``up`` again. ``restart``: how the worker is also stopped and started during
    the outage (it comes back while Redis is still away; Redis stays away until the new worker has met that
    at the assignment of its source partitions, with no checkpoint to read, however long that takes)."""
    third = len(traffic) // 3
    chunk = max(1, third // 10)
    worker = pipeline.workers[0]
    pipeline.send(traffic[:third], chunk=chunk, pause_s=0.3)
    down()
    down_at = time.monotonic()
    _during(pipeline, traffic[third : 2 * third], down_s * 5 / 6)
    if restart is not None:
        restart(worker)
        waiting = {"operation": "reading fold checkpoints"}
        wait_for(
            lambda: metric_sum(worker.metrics(), "adpulse_redis_retries_total", **waiting) > 0,
            180,
            "the restarted worker waiting for its checkpoints",
        )
    time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))
    assert metric_sum(worker.metrics(), "adpulse_redis_unavailable") == 1, "the worker did not see the outage"
    up()
    pipeline.send(traffic[2 * third :], chunk=chunk, pause_s=0.3)


def _restart(pipeline: Pipeline, worker: WorkerProcess) -> None:
    """Stop ``worker`` as a deployment does (SIGTERM) and start it again."""
    with pipeline.stopped(worker):
        pass


@pytest.mark.faults_long
@pytest.mark.timeout(900)
@pytest.mark.parametrize("restart", ["", "killed", "stopped"], ids=lambda r: f"worker-{r or 'running'}")
def test_redis_down_60s_under_a_working_worker_and_router(
    tmp_path: Path, fault_row: Callable[[FaultRow], None], restart: str
) -> None:
    """Redis stopped for 60 s and started again on its append-only file; ``restart``: the worker is also
    killed (``kill -9``) or stopped (SIGTERM, as a deployment does: it gives its partitions up while Redis is
    away) during the outage, and started again."""
    traffic = fault_traffic(EVENTS, two_hours_ago_ms(), 40 * 60_000, seed=21)
    with (
        own_stack(tmp_path / "home") as (base, stack),
        Pipeline(base.model_copy(update=TUNING), tmp_path, workers=1, routers=1) as pipeline,
    ):
        how = {"killed": pipeline.kill9, "stopped": lambda worker: _restart(pipeline, worker)}.get(restart)
        _redis_outage(pipeline, traffic, lambda: stack.down(["redis"]), stack.up, 60.0, how)
        fault = "Redis down 60 s" + (f", the worker {restart} and started meanwhile" if restart else "")
        outcome = pipeline.settle(fault, timeout_s=240)
    fault_row(outcome.row)
    outcome.check()


# In make faults: make test keeps test_redis_outage (the fold stage through two Redis outages, both brokers)
# and the router's Redis outage test, and CI must stay under ~25 minutes on two cores.
@pytest.mark.faults_long
@pytest.mark.timeout(300)
def test_redis_cut_for_20s_under_a_working_worker_and_router(
    make_settings: Callable[..., Settings], tmp_path: Path, fault_row: Callable[[FaultRow], None]
) -> None:
    """The short Redis outage of ``make test``: every connection to Redis cut and its port closed for 20 s (a
    gate in front of it)."""
    traffic = fault_traffic(9_000, two_hours_ago_ms(), 20 * 60_000, seed=24)
    with (
        gated_redis(make_settings(**TUNING)) as (settings, gate),
        Pipeline(settings, tmp_path, workers=1, routers=1) as pipeline,
    ):
        _redis_outage(pipeline, traffic, gate.shut, gate.open, 20.0, None)
        outcome = pipeline.settle("Redis cut 20 s", timeout_s=180)
    fault_row(outcome.row)
    outcome.check()


@pytest.mark.faults_long
@pytest.mark.timeout(900)
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
