"""``adpulse validate``: the worker's verdicts on a JSONL sample, per line; the documented examples."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from adpulse.cli import cli
from adpulse.settings import Settings
from adpulse.traffic.generator import TrafficGenerator
from adpulse.traffic.scenarios import BadRecords, Duplicates, LateEvents
from adpulse.validate import UNKNOWN_TOPIC, validate_lines
from tests.unit.test_events_doc import Block, example_blocks

SETTINGS = Settings(home=Path("/nonexistent"), web_port=0)
#: The simulator's names for what it spoils, and the worker's reason for each.
WORKER_REASON = {"not_json": "not_json", "oversized": "oversized", "future_ts": "future"}


def test_a_mixed_sample_gets_the_count_the_simulator_knows_per_reason() -> None:
    start_ms = (int(time.time()) - 1200) * 1000
    generator = TrafficGenerator(
        11,
        scenarios=[BadRecords(fraction=0.03), LateEvents(fraction=0.03), Duplicates(fraction=0.03)],
        partitions=SETTINGS.partitions,
        grace_s=SETTINGS.grace_s,
        daily_curve=False,
        origin_ms=start_ms,
    )
    by_topic: dict[str, list[bytes]] = {}
    for topic, _key, value, _ts, _partition in generator.records(start_ms, start_ms + 600_000, 40):
        by_topic.setdefault(topic, []).append(value + b"\n")
    truth = generator.truth
    expected: Counter[str] = Counter()
    for kind, n in truth.invalid_reasons.items():
        expected[WORKER_REASON.get(kind, "invalid")] += n
    for kind in ("late", "duplicate"):
        expected[kind] = sum(truth.kinds[topic][kind] for topic in truth.kinds)
    assert all(expected[k] > 5 for k in ("invalid", "not_json", "late", "duplicate", "future", "oversized"))

    # Per topic, as the simulator sent them (a spoilt line may not show its topic by its shape).
    reports = {topic: validate_lines(lines, SETTINGS, topic) for topic, lines in by_topic.items()}

    counts: Counter[str] = Counter()
    for report in reports.values():
        counts.update(report.counts())
    assert counts == expected
    assert sum(len(r.verdicts) for r in reports.values()) == truth.sent
    assert sum(len(r.verdicts) - len(r.rejected) for r in reports.values()) == sum(
        truth.kinds[t]["valid"] for t in truth.kinds
    )
    # Each verdict points at its own line, and names the field where one is to blame.
    for topic, report in reports.items():
        for verdict in report.rejected:
            line = by_topic[topic][verdict.line - 1]
            if verdict.reason == "duplicate":
                assert line in by_topic[topic][: verdict.line - 1]
            if verdict.reason in ("late", "future"):
                assert verdict.field == "ts"
            if verdict.reason == "oversized":
                assert len(line) > SETTINGS.max_record_bytes


@pytest.mark.parametrize("block", example_blocks("jsonl"), ids=lambda b: f"line{b.line}")
def test_documented_reject_examples_get_their_reason(block: Block) -> None:
    report = validate_lines([line.encode() for line in block.text.splitlines()], SETTINGS, block.info[1])
    assert [(v.reason, v.field) for v in report.rejected] == [
        (block.attribute("expect"), block.attribute("field"))
    ], f"docs/events.md line {block.line}: {report.rejected}"
    assert len(report.verdicts) == len(block.text.splitlines())


def test_every_reason_has_a_documented_example_but_those_no_short_line_shows() -> None:
    shown = {b.attribute("expect") for b in example_blocks("jsonl")}
    from tests.unit.test_events_doc import documented_reasons

    assert set(documented_reasons()) - shown == {"oversized", "error"}


def test_blank_lines_are_skipped_and_line_numbers_are_the_files() -> None:
    lines = [b"\n", b'{"event_id":"a","ts":1772431530000,"channel":"x","type":"click"}\n', b"  \n", b"[1]\n"]
    report = validate_lines(lines, SETTINGS)
    assert [(v.line, v.reason) for v in report.verdicts] == [(2, None), (4, "invalid")]


def test_a_line_of_no_known_shape_asks_for_the_topic() -> None:
    line = b'{"event_id":"a","ts":1772431530000,"channel":"x"}'
    assert [v.reason for v in validate_lines([line], SETTINGS).verdicts] == [UNKNOWN_TOPIC]
    verdict = validate_lines([line], SETTINGS, "spend").verdicts[0]
    assert (verdict.reason, verdict.field, verdict.problem) == ("invalid", "cost", "missing")


def test_the_command_exits_1_on_any_reject_and_prints_json(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"event_id":"a","ts":1772431530000,"channel":"x","type":"click"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"event_id":"b","ts":1772431530000,"channel":"x","type":"hover"}\n')
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", str(good)])
    assert ok.exit_code == 0 and "1 records, 1 accepted, 0 rejected" in ok.output
    failed = runner.invoke(cli, ["validate", "--json", str(bad)])
    assert failed.exit_code == 1
    report = orjson.loads(failed.output)
    assert report["rejected"] == 1 and report["reasons"]["invalid"]["lines"] == [2]
    assert report["reasons"]["invalid"]["samples"][0]["field"] == "type"
    piped = runner.invoke(cli, ["validate", "-"], input=bad.read_bytes())
    assert piped.exit_code == 1 and "line 2: type (invalid)" in piped.output
