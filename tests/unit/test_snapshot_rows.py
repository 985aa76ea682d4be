"""agents.snapshot_rows: the snapshot reported by its changes is the full snapshot, tick after tick."""

from __future__ import annotations

import random
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.partials import BucketValue, merge
from agents.snapshot import KpiRow, build_rows
from agents.snapshot_rows import SnapshotRows
from streams.codec import N_SLOTS
from streams.windows import TOTAL, WINDOWS, Calendar

CAL = Calendar(ZoneInfo("Asia/Shanghai"))
GRACE = 30.0
T0 = 1_764_000_000 - 1_764_000_000 % 86_400


def applied(
    reported: dict[str, KpiRow], rows: SnapshotRows, watermark_of: dict[str, float], table: dict[Any, Any]
) -> None:
    delta = rows.update(watermark_of, lambda c, w, s: table.get((c, w, s)))
    for name in delta.deleted:
        reported.pop(name, None)
    for row in delta.changed:
        reported[row.field] = row
    assert sorted(r.field for r in delta.channel_rows) == sorted(
        r.field for r in reported.values() if r.campaign == "-"
    )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), ticks=st.integers(1, 25))
def test_applying_each_ticks_changes_gives_the_full_snapshot(seed: int, ticks: int) -> None:
    rng = random.Random(seed)
    table: dict[tuple[str, str, int], BucketValue] = {}
    blocks: dict[tuple[str, str, int], int] = {}
    rows = SnapshotRows(CAL, GRACE)
    reported: dict[str, KpiRow] = {}
    watermark = float(T0 + rng.randrange(0, 86_400))
    channels = ["douyin", "taobao", "jd"]
    for _ in range(ticks):
        watermark += rng.choice([1.0, 30.0, 61.0, 3_600.0, 40_000.0])
        live = [c for c in channels if rng.random() < 0.8]
        for channel in live:
            for _ in range(rng.randrange(0, 4)):
                ts = int(watermark) - rng.randrange(0, 90)
                campaign = rng.choice(["-", "a", "b", "c", "(other)"])
                vector = rng.choice([[1] * N_SLOTS, [0, 1] + [0] * (N_SLOTS - 2)])
                for window in (*WINDOWS, TOTAL):
                    start = CAL.start(window, ts)
                    key = (channel, window, start)
                    block = blocks.get(key, 0) + rng.randrange(0, 2)
                    blocks[key] = block
                    merged = merge(table.get(key), "clicks/0", block, block * 10 + 9, {campaign: vector})
                    if merged is not None:
                        table[key] = merged
        if table and rng.random() < 0.2:  # a bucket expires
            victim = rng.choice(list(table))
            del table[victim]
        watermark_of = {c: watermark for c in live}
        applied(reported, rows, watermark_of, table)
        full = build_rows(live, lambda c, w, s: table.get((c, w, s)), CAL, watermark, GRACE)
        assert {r.field: r for r in full} == reported
