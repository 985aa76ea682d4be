"""More than 100,000 hostile records through the worker's data path in memory (fold stage, table, rendering),
with crashes and replays at drawn points: nothing raises, every rejected record gets a DLQ record (with a
reason, under the broker's size limit), and every window equals the ground truth of the contract. That run is
``make faults``'; ``make test`` runs a sample of 10,000 (every case drawn all the same).

Hypothesis draws the records (``tests.faults.hostile``) and the run plan; the test goes through every
example and reports all findings at the end, grouped by case, rather than stopping at the first (the set
of failing cases is the finding). ``ADPULSE_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from adpulse.settings import Settings
from tests.faults.hostile import (
    CASES,
    CHANNEL_POOL,
    Hostile,
    Judgement,
    Placed,
    campaign_flood,
    compare,
    judge,
    partition_for,
    summarize,
    tally,
    traffic,
)
from tests.faults.pure import CrashError, DataPath, Plan
from tests.faults.table import FaultRow

pytestmark = pytest.mark.timeout(600)

PARTITIONS = 2
#: Event time of the examples: three hours ago, so that nothing honest is ahead of the clock.
START_MS = (int(time.time()) // 60 * 60 - 3 * 3600) * 1000

plans = st.builds(
    Plan,
    fetch_sizes=st.lists(st.integers(1, 400), min_size=1, max_size=4).map(tuple),
    flush_records=st.integers(300, 3000),
    crashes=st.frozensets(st.integers(1, 30), max_size=3),
)


@st.composite
def examples(draw: st.DrawFn, n: int) -> tuple[list[Hostile], Plan, int]:
    """One example: hostile traffic (every thirtieth with a campaign flood), a run plan, a block size."""
    records = draw(traffic(f"x{n}", START_MS, min_records=150, max_records=650, step_ms=4_000))
    block = draw(st.sampled_from((10, 64, 500, 5000)))
    channel = draw(st.sampled_from(CHANNEL_POOL))
    at = draw(st.integers(0, len(records)))
    # The example's number decides, not a draw: hypothesis favours edge values, so a drawn one-in-N comes
    # out far more often, or never. Drawn or not, the same draws are made (hypothesis replays them).
    if n % 30 == 10:
        records[at:at] = campaign_flood(f"x{n}-flood", channel, START_MS + 60_000, 2_100)
        block = 5000  # the whole flood in one block: one partial would carry every campaign
    return records, draw(plans), block


def place(records: list[Hostile]) -> list[Placed]:
    """Where a producer keyed like the records puts them, with offsets from 0 per partition."""
    offsets: Counter[tuple[str, int]] = Counter()
    placed = []
    for record in records:
        tp = (f"adpulse.{record.topic}", partition_for(record.key, PARTITIONS))
        placed.append(Placed(record, tp[0], tp[1], offsets[tp]))
        offsets[tp] += 1
    return placed


@pytest.mark.faults_long
def test_hostile_records_never_crash_the_data_path_and_count_exactly(
    fault_row: Callable[[FaultRow], None], tmp_path: Path
) -> None:
    _fuzz(100_000, 300, "hostile records, data path in memory", fault_row, tmp_path)


def test_a_sample_of_hostile_records_never_crashes_the_data_path(
    fault_row: Callable[[FaultRow], None], tmp_path: Path
) -> None:
    _fuzz(10_000, 35, "hostile records (a sample), data path in memory", fault_row, tmp_path)


def _fuzz(
    records_at_least: int, examples_n: int, name: str, fault_row: Callable[[FaultRow], None], tmp_path: Path
) -> None:
    """``examples_n`` examples of hostile traffic, ``records_at_least`` records in all (the campaign floods
    on top), every case among them."""
    run_seed = int(os.environ.get("ADPULSE_FUZZ_SEED") or random.randrange(2**32))
    seen: Counter[str] = Counter()
    findings: list[str] = []
    totals = Counter[str]()
    example = iter(range(10**9))

    @seed(run_seed)
    @settings(
        max_examples=examples_n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        records, plan, block = data.draw(examples(next(example)))
        placed = place(records)
        seen.update(record.case for record in records)
        totals["sent"] += len(records)
        config = Settings(block_records=block, grace_s=60.0, home=tmp_path)
        try:
            result = DataPath(config).run(placed, plan)
        except CrashError as crash:
            totals["crashes"] += 1
            totals["lost"] += sum(1 for r in records if "ok" in r.allowed)
            findings.append(f"crash in {crash.stage} ({type(crash.error).__name__}): {crash}")
            return
        totals["replays"] += result.crashes
        verdict: Judgement = judge(
            placed, result.rejected, grace_ms=60_000, trusted_now_ms=int(time.time() * 1000)
        )
        differences = compare(verdict.truth, result.got, ("1m", "1h", "1d", "total"))
        findings.extend(verdict.problems + result.problems + differences)
        lost, doubled = tally(verdict, result.got) if differences else (0, 0)
        totals["counted"] += verdict.counted - lost
        totals["lost"] += lost
        totals["doubled"] += doubled

    run()
    fault_row(
        FaultRow(
            name,
            totals["sent"],
            totals["counted"] + totals["doubled"],
            totals["lost"],
            totals["doubled"],
            crashes=totals["crashes"],
        )
    )
    if findings:
        replay = f"seed {run_seed} (ADPULSE_FUZZ_SEED={run_seed} replays it)"
        pytest.fail(f"{replay}:\n{summarize(findings, examples=1)}", pytrace=False)
    assert totals["sent"] - seen["campaign-flood"] >= records_at_least, f"only {totals['sent']} records drawn"
    assert not set(CASES) - set(seen), f"cases never drawn: {sorted(set(CASES) - set(seen))}"
    assert totals["replays"] > 0
