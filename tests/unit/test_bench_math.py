"""The arithmetic the benchmark scripts report with: percentiles, Redis command counts, partition spread,
workload sizes, rates, consumer lag and trends (the scripts themselves run only by hand)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from harness import percentile
from recovery import VALID_SHARE, log_milestones, workload_size
from scale_out import balanced_channels, records_per_partition, spread
from soak import consumer_lag, growth_per_hour, per_second, scenario_args, sent_records
from throughput import WorkerRun, calls_between
from workload import generate, numbered_channels

from streams.partitioning import partition_of


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([0.0, 10.0], 0.95) == pytest.approx(9.5)
    assert percentile([0.0, 10.0], 0.99) == pytest.approx(9.9)
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_calls_between_keeps_the_commands_that_grew_most_called_first() -> None:
    before = {"hset": 5, "get": 1, "xadd": 2}
    after = {"hset": 8, "get": 1, "xadd": 9, "del": 2}
    assert list(calls_between(before, after).items()) == [("xadd", 7), ("hset", 3), ("del", 2)]


def _run(outcomes: dict[str, int], counted_before: int, calls: dict[str, int]) -> WorkerRun:
    nan = float("nan")
    return WorkerRun(
        nan, nan, nan, nan, nan, nan, nan, None, nan, nan, outcomes, True, [],
        counted_before=counted_before, redis_calls=calls,
    )  # fmt: skip


def test_redis_commands_per_event_count_only_the_measured_events() -> None:
    run = _run({"accepted": 900, "invalid": 100}, 200, {"hset": 6, "zadd": 2})
    assert run.redis_per_event == pytest.approx(8 / 800)
    assert math.isnan(_run({"accepted": 5}, 5, {"hset": 1}).redis_per_event)


def test_spread_is_the_busiest_workers_share_when_partitions_are_dealt_round_robin() -> None:
    even = dict.fromkeys(range(6), 10)
    assert spread(even, 1) == 1.0
    assert spread(even, 2) == pytest.approx(0.5)
    assert spread(even, 3) == pytest.approx(1 / 3)
    assert spread(even, 4) == pytest.approx(20 / 60)  # partitions 0, 4 and 1, 5 share a worker
    assert spread({0: 30, 1: 10}, 2) == pytest.approx(0.75)


def test_balanced_channels_put_the_same_number_on_every_partition() -> None:
    channels = balanced_channels(12, 6)
    assert len(set(channels)) == 12
    per = records_per_partition([("clicks", c.encode(), b"{}") for c in channels], 6)
    assert per == dict.fromkeys(range(6), 2)
    assert all(partition_of(c, 6) in range(6) for c in channels)


def test_workload_size_covers_the_rows_asked_for_on_average() -> None:
    minutes, records = workload_size(1000, 10, 3.0)
    covered = 1 - math.exp(-3.0)
    assert minutes == math.ceil(100 / covered)
    assert 10 * minutes * covered >= 1000
    assert records == math.ceil(3.0 * 10 * minutes / VALID_SHARE)
    with pytest.raises(ValueError):
        workload_size(0, 10, 3.0)


def test_generate_draws_only_the_channels_given() -> None:
    channels = numbered_channels(3)
    records, expected = generate(2000, 1_700_000_000_000, channels=channels, weights=[1.0, 1.0, 1.0])
    assert {key.decode() for _topic, key, _value in records} == set(channels)
    assert set(expected.totals) == set(channels)
    with pytest.raises(ValueError):
        generate(10, 1_700_000_000_000, channels=channels, weights=[1.0])


def test_per_second_is_zero_without_time_or_after_a_reset() -> None:
    assert per_second(100.0, 600.0, 10.0) == 50.0
    assert per_second(100.0, 600.0, 0.0) == 0.0
    assert per_second(600.0, 100.0, 10.0) == 0.0


def test_consumer_lag_counts_uncommitted_records_and_whole_uncommitted_partitions() -> None:
    ends = {("clicks", 0): 100, ("clicks", 1): 50, ("spend", 0): 7}
    committed = {("clicks", 0): 90, ("clicks", 1): 60}
    assert consumer_lag(ends, committed) == 10 + 0 + 7


def test_growth_per_hour_is_the_least_squares_slope() -> None:
    assert growth_per_hour([0.0, 1800.0, 3600.0], [100.0, 105.0, 110.0]) == pytest.approx(10.0)
    assert growth_per_hour([0.0, 1800.0, 3600.0], [100.0, 90.0, 100.0]) == pytest.approx(0.0)
    assert growth_per_hour([5.0], [1.0]) == 0.0
    assert growth_per_hour([5.0, 5.0], [1.0, 2.0]) == 0.0


def test_scenarios_are_spread_over_the_live_run() -> None:
    placed = scenario_args(1800.0)
    first_spec, start, end = placed[0]
    assert first_spec == "ctr-drop:channel=douyin,at=180s,for=360s"
    assert (start, end) == (180.0, 540.0)
    assert all(0.0 <= s < e <= 1800.0 for _spec, s, e in placed)
    assert scenario_args(600.0)[1][0] == "bad-records:fraction=0.05,at=150s,for=30s"


def test_log_milestones_take_the_first_line_of_each_for_this_app() -> None:
    log = "\n".join(
        [
            "[2026-12-07 00:18:20,059] [1] [INFO] Joined group 'bench-a' (generation 2) with member_id x",
            "[2026-12-07 00:18:33,186] [1] [INFO] Successfully synced group bench-ab with generation 2",
            "[2026-12-07 00:18:33,500] [1] [INFO] Successfully synced group bench-a with generation 2",
            "[2026-12-07 00:18:40,932] [1] [INFO] [^---Recovery]: Recovery complete ",
            "[2026-12-07 00:18:41,932] [1] [INFO] [^---Recovery]: Recovery complete ",
            "| table | continued without a stamp |",
            "[2026-12-07 00:18:46,037] [1] [INFO] Successfully synced group bench-a-fold with generation 2",
        ]
    )
    got = log_milestones(log, "bench-a")
    assert got["recovered"] - got["faust_synced"] == pytest.approx(7.432)
    assert got["fold_synced"] - got["faust_synced"] == pytest.approx(12.537)
    assert log_milestones("nothing here", "bench-a") == {}


def test_sent_records_reads_the_summary_of_simulate() -> None:
    log = "simulate backfill | sent=19783 rate=0/s\nsent 59852 records in 0.4s (133,844/s), backfill max\n"
    assert sent_records(log) == 59852
    assert sent_records("simulate backfill | sent=19783 rate=0/s") is None
