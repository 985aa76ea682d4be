"""``kill -9`` of workers and routers at random points while traffic flows and alerts are delivered: every
window equals the ground truth, every alert reaches its target once (a resend after a router crash carries
the same Idempotency-Key), and nothing dies that was not killed. ``ADPULSE_FAULT_SEED`` replays the points.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from adpulse.settings import Settings
from tests.faults.harness import (
    Pipeline,
    Process,
    Receiver,
    RouterProcess,
    fault_seed,
    fault_traffic,
    last_error,
    two_hours_ago_ms,
    write_alerts,
    write_routes,
)
from tests.faults.table import FaultRow
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration


def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        grace_s=60.0, block_records=2000, flush_interval_s=0.3, tick_s=0.5, idle_partition_s=3.0, partitions=4
    )


def _kill_at_random_points(
    pipeline: Pipeline, rng: random.Random, chunks: int, victims: list[Process]
) -> Callable[[int], None]:
    """An ``on_chunk`` that kills each victim with ``kill -9`` after a chunk drawn for it, a random moment
    into the pause, and starts it again after a random 0–2 s (as a supervisor would)."""
    at: dict[int, list[Process]] = {}
    for victim in victims:
        at.setdefault(rng.randrange(1, chunks), []).append(victim)
    chunk_of = iter(range(1, chunks))

    def on_chunk(_sent: int) -> None:
        for victim in at.get(next(chunk_of), []):
            time.sleep(rng.uniform(0.0, 0.5))
            pipeline.kill9(victim, down_s=rng.uniform(0.0, 2.0))

    return on_chunk


# In make faults: make test already kills a worker (test_pipeline_exact) and a router (test_router) with
# -9, and CI must stay under ~25 minutes on two cores.
@pytest.mark.faults_long
@pytest.mark.timeout(480)
def test_kill9_of_a_worker_and_the_router_at_random_points(
    make_settings: Callable[..., Settings], tmp_path: Path, fault_row: Callable[[FaultRow], None]
) -> None:
    seed = fault_seed()
    rng = random.Random(seed)
    traffic = fault_traffic(20_000, two_hours_ago_ms(), 30 * 60_000, seed=seed)
    with Pipeline(_settings(make_settings), tmp_path, workers=2, routers=1) as pipeline:
        victims: list[Process] = [rng.choice(pipeline.workers), pipeline.routers[0]]
        on_chunk = _kill_at_random_points(pipeline, rng, 10, victims)
        pipeline.send(traffic, chunk=2_000, pause_s=0.5, on_chunk=on_chunk)
        outcome = pipeline.settle(f"kill -9 a worker and the router (seed {seed})")
    fault_row(outcome.row)
    outcome.check()


@pytest.mark.faults_long
@pytest.mark.timeout(900)
def test_kill9_of_workers_and_routers_repeatedly(
    make_settings: Callable[..., Settings], tmp_path: Path, fault_row: Callable[[FaultRow], None]
) -> None:
    seed = fault_seed()
    rng = random.Random(seed)
    traffic = fault_traffic(60_000, two_hours_ago_ms(), 40 * 60_000, seed=seed)
    with Pipeline(_settings(make_settings), tmp_path, workers=2, routers=2) as pipeline:
        victims: list[Process] = [rng.choice(pipeline.workers) for _ in range(6)]
        victims += [rng.choice(pipeline.routers) for _ in range(3)]
        on_chunk = _kill_at_random_points(pipeline, rng, 20, victims)
        pipeline.send(traffic, chunk=3_000, pause_s=1.0, on_chunk=on_chunk)
        outcome = pipeline.settle(f"kill -9 workers x6 and routers x3 (seed {seed})", timeout_s=300)
    fault_row(outcome.row)
    outcome.check()


def _at_least(receiver: Receiver, deliveries: int) -> bool:
    return len(receiver.alerts) >= deliveries


def _alert(i: int) -> dict[str, Any]:
    channel = ("douyin", "taobao", "wechat", "jd")[i % 4]
    return {
        "id": f"fault-alert-{i:05d}",
        "fingerprint": f"threshold:ctr:{channel}:c{i}:1m",
        "status": "firing",
        "change": "fired",
        "kind": "threshold",
        "severity": "warning",
        "metric": "ctr",
        "channel": channel,
        "campaign": f"c{i}",
        "value": 0.011,
        "summary": f"CTR of {channel}/c{i} is 1.10 %, below the target 2.00 % (last 1m)",
        "window_start": "2026-11-24T10:00:00+08:00",
        "window_end": "2026-11-24T10:01:00+08:00",
        "fired_at": "2026-11-24T10:02:03+08:00",
    }


@pytest.mark.faults_long
@pytest.mark.timeout(600)
def test_kill9_of_routers_in_the_middle_of_1000_alerts_repeatedly(
    make_settings: Callable[..., Settings], tmp_path: Path, fault_row: Callable[[FaultRow], None]
) -> None:
    """Two routers share a slow chat target; one or the other is killed five times while it delivers. Each
    crash may resend what was in flight at that moment (delivered, not yet marked sent): at most one alert
    per crash, with the Idempotency-Key it had the first time."""
    seed = fault_seed()
    rng = random.Random(seed)
    settings = make_settings()
    alerts = [_alert(i) for i in range(1000)]
    kills = 5
    with Receiver(delay_s=0.01) as receiver:
        routes = write_routes(tmp_path / "routes.yml", receiver)
        routers = [
            RouterProcess(
                settings, routes, tmp_path / f"router-{i}.log", f"router-{i}", ADPULSE_ROUTER_CLAIM_IDLE_S="2"
            )
            for i in range(2)
        ]
        crashes = 0
        try:
            for router in routers:
                router.start().wait_ready()
            write_alerts(settings, alerts)
            for k in range(kills):
                target = (k + 1) * len(alerts) // (kills + 2) + rng.randrange(50)
                wait_for(partial(_at_least, receiver, target), 120, f"{target} deliveries", interval_s=0.01)
                victim = rng.choice(routers)
                victim.kill9()
                time.sleep(rng.uniform(0.0, 2.0))
                victim.start().wait_ready()
            wait_for(lambda: set(receiver.fired()) >= {a["fingerprint"] for a in alerts}, 180, "every alert")
            time.sleep(2.0)  # a resend would arrive by now
            crashes = sum(1 for router in routers if not router.alive())
        finally:
            for router in routers:
                router.stop()
    fired = receiver.fired()
    expected = {a["fingerprint"] for a in alerts}
    duplicated = sum(n - 1 for n in fired.values())
    fault_row(
        FaultRow(
            f"kill -9 routers x{kills} mid-delivery (seed {seed})",
            alerts_expected=len(expected),
            delivered=len(set(fired) & expected),
            duplicated=duplicated,
            crashes=crashes,
        )
    )
    assert set(fired) == expected
    assert duplicated <= kills, f"more resends than crashes: {duplicated}"
    keys = receiver.keys()
    assert all(len(keys[fp]) == 1 for fp, n in fired.items() if n > 1), (
        "a resend with another Idempotency-Key"
    )
    assert receiver.bad_signatures == 0
    assert crashes == 0, "\n".join(last_error(router.log_path) for router in routers)
