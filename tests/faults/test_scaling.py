"""Scaling during traffic: a second worker joins (partitions move to it mid-block) and later leaves (they
move back); every window equals the ground truth and every alert is delivered once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from adpulse.settings import Settings
from tests.faults.harness import Pipeline, fault_traffic, two_hours_ago_ms
from tests.faults.table import FaultRow

pytestmark = [pytest.mark.integration, pytest.mark.faults_long, pytest.mark.timeout(600)]

TUNING = {
    "grace_s": 60.0,
    "block_records": 2000,
    "flush_interval_s": 0.3,
    "tick_s": 0.5,
    "idle_partition_s": 3.0,
}


def test_a_second_worker_joins_and_leaves_during_traffic(
    make_settings: Callable[..., Settings], tmp_path: Path, fault_row: Callable[[FaultRow], None]
) -> None:
    traffic = fault_traffic(60_000, two_hours_ago_ms(), 40 * 60_000, seed=23)
    with Pipeline(make_settings(partitions=4, **TUNING), tmp_path, workers=1, routers=1) as pipeline:

        def scale(sent: int) -> None:
            if sent == 15_000:
                pipeline.join()
            elif sent == 40_000:
                pipeline.leave(pipeline.workers[1])

        pipeline.send(traffic, chunk=5_000, pause_s=1.0, on_chunk=scale)
        outcome = pipeline.settle("a second worker joins, then leaves", timeout_s=240)
    fault_row(outcome.row)
    outcome.check()
