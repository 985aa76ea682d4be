"""Hostile records through a real worker on the real broker and Redis, with a router delivering the alerts:
a few thousand records of every hostile case (1 MB ones, 400 KB keys, a flood of 2,500 campaigns) and a
reproducible hypothesis seed. Nothing crashes, every rejected record is in the DLQ with its reason, and the
windows, the totals and the alerts equal the ground truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from adpulse.settings import Settings
from tests.faults.harness import Pipeline
from tests.faults.hostile import CASES, Hostile, campaign_flood, traffic
from tests.faults.table import FaultRow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

EXAMPLES = 12


def hostile_set(start_ms: int) -> list[Hostile]:
    """Records of ``EXAMPLES`` hypothesis examples (a fixed seed: the same set every run), five minutes of
    event time each, with a campaign flood in the middle."""
    batches: list[list[Hostile]] = []

    @seed(20261206)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def collect(data: st.DataObject) -> None:
        n = len(batches)
        batches.append(data.draw(traffic(f"b{n}", start_ms + n * 300_000, 150, 350, step_ms=1_500)))

    collect()
    middle = len(batches) // 2
    batches.insert(middle, campaign_flood("flood", "douyin", start_ms + middle * 300_000 + 30_000, 2_500))
    return [record for batch in batches for record in batch]


def test_hostile_records_through_a_real_worker_on_the_real_broker(
    make_settings: Callable[..., Settings], tmp_path: Path, fault_row: Callable[[FaultRow], None]
) -> None:
    start_ms = (int(time.time()) // 60 * 60 - 2 * 3600) * 1000
    records = hostile_set(start_ms)
    assert not set(CASES) - {r.case for r in records}, "a case is missing from the set"
    settings = make_settings(
        grace_s=60.0, block_records=5000, flush_interval_s=0.3, tick_s=0.5, idle_partition_s=3.0, partitions=4
    )
    # Channel-level alerts: the flood's 2,500 campaigns stay out of chat (and out of the cap's choice).
    with Pipeline(settings, tmp_path, alert_level="channel") as pipeline:
        pipeline.send(records)
        outcome = pipeline.settle(
            "hostile records, real worker and broker",
            timeout_s=120,
            windows=("1m", "1h", "total"),
            recent_only=True,
            choices=True,
            tally_by="1m",
        )
    fault_row(outcome.row)
    outcome.check()
