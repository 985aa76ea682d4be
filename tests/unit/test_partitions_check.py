"""The bucket table's partition-count check (``BucketTable._verify_source_topic_partitions``): a count the
consumer's metadata does not know (a topic a metadata response left out counts 0) is no mismatch, so table
writes go on while a broker is killed or restarting; a real mismatch still raises. The broker fault itself is
in ``tests/integration/test_kafka_cluster.py``."""

from __future__ import annotations

import inspect
from pathlib import Path

import faust
import pytest
from faust.exceptions import PartitionsMismatch
from faust.tables.base import Collection

from agents.buckets import BucketTable
from streams.app import make_app

SOURCE = "t.partials"


@pytest.fixture
def table(tmp_path: Path) -> BucketTable:
    app = make_app(
        "partitions-unit",
        "127.0.0.1:1",
        partitions=4,
        web_host="127.0.0.1",
        web_port=1,
        datadir=str(tmp_path),
    )
    table = BucketTable(app, name="buckets", default=None, partitions=4, key_type=str)
    app.tables.add(table)
    return table


def _metadata(table: BucketTable, monkeypatch: pytest.MonkeyPatch, counts: dict[str, int | None]) -> None:
    """What the consumer's metadata says each topic has (Faust reads ``consumer.topic_partitions``)."""
    monkeypatch.setattr(table.app.consumer, "topic_partitions", counts.get, raising=False)


def test_faust_still_checks_through_the_overridden_method() -> None:
    # The override is only worth something while Faust's table writes call it by this name.
    assert "_verify_source_topic_partitions" in inspect.getsource(Collection.partition_for_key)


@pytest.mark.parametrize("missing", [0, None])
def test_a_count_the_metadata_lacks_is_no_mismatch_and_is_checked_again_later(
    table: BucketTable, monkeypatch: pytest.MonkeyPatch, missing: int | None
) -> None:
    _metadata(table, monkeypatch, {SOURCE: 4, table.changelog_topic_name: missing})
    table._verify_source_topic_partitions(SOURCE)  # noqa: SLF001 - the hook under test
    assert SOURCE not in table._verified_source_topics_for_partitions  # noqa: SLF001

    _metadata(table, monkeypatch, {SOURCE: missing, table.changelog_topic_name: 4})
    table._verify_source_topic_partitions(SOURCE)  # noqa: SLF001
    assert SOURCE not in table._verified_source_topics_for_partitions  # noqa: SLF001

    _metadata(table, monkeypatch, {SOURCE: 4, table.changelog_topic_name: 4})
    table._verify_source_topic_partitions(SOURCE)  # noqa: SLF001
    assert SOURCE in table._verified_source_topics_for_partitions  # noqa: SLF001


def test_a_real_mismatch_still_raises(table: BucketTable, monkeypatch: pytest.MonkeyPatch) -> None:
    _metadata(table, monkeypatch, {SOURCE: 6, table.changelog_topic_name: 4})
    with pytest.raises(PartitionsMismatch):
        table._verify_source_topic_partitions(SOURCE)  # noqa: SLF001


def test_once_verified_a_later_gap_in_the_metadata_changes_nothing(
    table: BucketTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    _metadata(table, monkeypatch, {SOURCE: 4, table.changelog_topic_name: 4})
    table._verify_source_topic_partitions(SOURCE)  # noqa: SLF001
    _metadata(table, monkeypatch, {SOURCE: 4, table.changelog_topic_name: 0})
    table._verify_source_topic_partitions(SOURCE)  # noqa: SLF001 - does not raise


def test_faust_own_check_would_have_raised_on_the_gap(
    table: BucketTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the CI failure was: Faust's check took the 0 of a topic the metadata left out for a mismatch.
    _metadata(table, monkeypatch, {SOURCE: 4, table.changelog_topic_name: 0})
    with pytest.raises(PartitionsMismatch):
        faust.Table._verify_source_topic_partitions(table, SOURCE)  # noqa: SLF001


def test_each_count_is_read_once(table: BucketTable, monkeypatch: pytest.MonkeyPatch) -> None:
    # The consumer thread may replace its metadata between two reads: a second read that finds the topic
    # gone (0) must not turn the first read's agreement into a mismatch.
    answers = {SOURCE: iter([4, 4]), table.changelog_topic_name: iter([4, 0])}
    monkeypatch.setattr(
        table.app.consumer, "topic_partitions", lambda topic: next(answers[topic]), raising=False
    )
    table._verify_source_topic_partitions(SOURCE)  # noqa: SLF001
    assert SOURCE in table._verified_source_topics_for_partitions  # noqa: SLF001
