"""What a worker refuses to start on (``adpulse.worker.partition_count_problem``); the refusal itself, on the
brokers, is in ``tests/integration/test_worker_start.py``."""

from __future__ import annotations

from adpulse.worker import partition_count_problem


def test_the_partition_counts_a_worker_starts_on() -> None:
    fits = partition_count_problem(4, ("p", 4), ("c", 4))
    assert fits is None
    assert partition_count_problem(4, ("p", 4), ("c", 0)) is None  # Faust creates the changelog
    missing = partition_count_problem(4, ("p", 0), ("c", 0))
    assert missing is not None and "topic p does not exist" in missing
    other = partition_count_problem(2, ("p", 4), ("c", 4))
    assert other is not None and "ADPULSE_PARTITIONS=4" in other
    apart = partition_count_problem(4, ("p", 4), ("c", 2))
    assert apart is not None and "no setting of ADPULSE_PARTITIONS fits both" in apart
