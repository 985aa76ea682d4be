"""Trackers with bad clocks beside a correct one, on the same channels and partitions, live: one 3 minutes
fast, one stamping 2100, one sending no CreateTime (0 and -1), one in microseconds. A bad clock may get its
own events rejected as ``future``; it never makes the correct tracker's events late, and it never crashes
the worker. Compared on the all-time totals (the fast tracker's windows close minutes from now).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from adpulse.settings import Settings
from tests.faults.harness import Pipeline
from tests.faults.hostile import OK, YEAR_2100_MS, Counted, Hostile
from tests.faults.table import FaultRow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHANNELS = ("douyin", "taobao", "wechat", "jd")
ROUNDS = 50
PER_ROUND = 20
REJECTED = frozenset({"future", "invalid"})


def trackers(rng: random.Random) -> Callable[[int], list[Hostile]]:
    """A round of records from each tracker, stamped with the moment it is made."""

    def make(n: int) -> list[Hostile]:
        now = int(time.time() * 1000)
        records = []
        clocks = {
            "clock-correct": (now, now, OK),
            "clock-fast-3min": (now + 180_000, now + 180_000, OK),
            "clock-year-2100": (YEAR_2100_MS + now % 10**9, YEAR_2100_MS + now % 10**9, REJECTED),
            "clock-createtime-not-positive": (now, -(n % 2), OK),
            "clock-microseconds": (now * 1000, now * 1000, REJECTED),
        }
        for case, (ts, create, allowed) in clocks.items():
            for i in range(PER_ROUND):
                channel = rng.choice(CHANNELS)
                event = Counted(f"{case}-{n}-{i}", ts, channel, f"{channel}-c{i % 3}", (("clicks", 1),))
                doc = {"event_id": event.event_id, "ts": ts, "channel": channel, "campaign": event.campaign}
                value = orjson.dumps({**doc, "type": "click"})
                records.append(Hostile(case, "clicks", channel.encode(), value, create, allowed, event))
        return records

    return make


def test_a_bad_clock_never_makes_other_trackers_events_late(
    make_settings: Callable[..., Settings], tmp_path: Path, fault_row: Callable[[FaultRow], None]
) -> None:
    settings = make_settings(
        grace_s=60.0, block_records=500, flush_interval_s=0.3, tick_s=0.5, idle_partition_s=3.0, partitions=4
    )
    with Pipeline(settings, tmp_path, routers=0) as pipeline:
        pipeline.send(trackers(random.Random(3)), rounds=ROUNDS, pause_s=0.2)
        outcome = pipeline.settle(
            "skewed clocks: +3 min, 2100, CreateTime <= 0, microseconds",
            timeout_s=60,
            windows=("total",),
            tally_by="total",
        )
    fault_row(outcome.row)
    outcome.check()
