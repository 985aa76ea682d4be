"""``adpulse validate``: check a JSONL sample offline with exactly the worker's rules (the same code).

Each line is one record value. It goes through ``streams.codec.decode`` and then the worker's own fold
(``agents.fold.PartitionFold``), as if a tracker had just sent the file in order, keyed by channel: records
are spread over ``ADPULSE_PARTITIONS`` partitions with Kafka's default partitioner, stamped with the time
of the check and received at that time, so duplicates, lateness (the watermark of each partition) and
``ts`` in the future are judged as the worker would judge them now. Nothing is sent anywhere.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import click
import orjson

from adpulse.cli_context import settings_of
from adpulse.settings import Settings
from agents.fold import Checkpoint, FoldConfig, PartitionFold
from streams.dlq import record_channel
from streams.partitioning import partition_of
from streams.topics import SOURCE_TOPICS, topic_of
from streams.windows import Calendar

#: A line whose topic cannot be told (no ``--topic``, no ``topic`` field, no telling shape). Not a worker
#: reason: on Kafka the topic is never in doubt.
UNKNOWN_TOPIC = "unknown_topic"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the worker would do with one line: ``reason`` None means counted."""

    line: int
    topic: str | None
    channel: str
    reason: str | None = None
    detail: str = ""
    field: str | None = None
    problem: str | None = None


@dataclass(slots=True)
class ValidationReport:
    """Every line's verdict, in file order."""

    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def rejected(self) -> list[Verdict]:
        """The lines the worker would not count (each would be a DLQ record)."""
        return [v for v in self.verdicts if v.reason is not None]

    def counts(self) -> dict[str, int]:
        """Lines per reason, most frequent first."""
        counts: dict[str, int] = {}
        for verdict in self.rejected:
            assert verdict.reason is not None
            counts[verdict.reason] = counts.get(verdict.reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def to_json(self, samples: int) -> dict[str, Any]:
        """The report as JSON: totals, and per reason its count, every line number and a few samples."""
        reasons: dict[str, Any] = {}
        for reason, count in self.counts().items():
            lines = [v for v in self.rejected if v.reason == reason]
            reasons[reason] = {
                "count": count,
                "lines": [v.line for v in lines],
                "samples": [
                    {
                        "line": v.line,
                        "topic": v.topic,
                        "channel": v.channel,
                        "field": v.field,
                        "problem": v.problem,
                        "detail": v.detail,
                    }
                    for v in lines[:samples]
                ],
            }
        return {
            "records": len(self.verdicts),
            "accepted": len(self.verdicts) - len(self.rejected),
            "rejected": len(self.rejected),
            "reasons": reasons,
        }


@dataclass(slots=True)
class _Line:
    """A line as the fold sees a Kafka record."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    line: int
    #: CreateTime, as a tracker's client stamps it (the fold bounds it by the receive time).
    timestamp_type: int = 0


def validate_lines(
    lines: Iterable[bytes],
    settings: Settings,
    topic: str | None = None,
    now_ms: int | None = None,
) -> ValidationReport:
    """Judge every non-blank line as the worker would if a tracker sent them now, in this order."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    config = FoldConfig(
        # One block for the whole sample: blocks only matter for restarts.
        block_records=1 << 62,
        grace_s=settings.grace_s,
        max_future_skew_s=settings.max_future_skew_s,
        max_record_bytes=settings.max_record_bytes,
        currency=settings.currency,
    )
    calendar = Calendar(settings.zone)
    verdicts: dict[int, Verdict] = {}
    streams: dict[tuple[str, int], list[_Line]] = {}
    for number, raw in enumerate(lines, start=1):
        value = raw.rstrip(b"\r\n")
        if not value.strip():
            continue
        short = topic or _infer(value)
        channel = record_channel(None, value)
        if short is None:
            verdicts[number] = Verdict(
                number,
                None,
                channel,
                UNKNOWN_TOPIC,
                "cannot tell the topic: pass --topic or add a topic field",
            )
            continue
        # Keyed by channel, as trackers should: the partition decides which records share a watermark.
        key = channel.encode()
        partition = partition_of(channel, settings.partitions)
        stream = streams.setdefault((short, partition), [])
        stream.append(_Line(short, partition, len(stream), now_ms, key, value, number))
    for (short, partition), records in streams.items():
        fold = PartitionFold(short, partition, config, calendar, Checkpoint(0, 0, 0))
        rejects = {id(record): rejection for record, rejection in fold.process(records, now_ms).rejects}
        for record in records:
            rejection = rejects.get(id(record))
            channel = record_channel(record.key, record.value)
            verdicts[record.line] = (
                Verdict(record.line, short, channel)
                if rejection is None
                else Verdict(
                    record.line,
                    short,
                    channel,
                    rejection.reason,
                    rejection.detail,
                    rejection.field,
                    rejection.problem,
                )
            )
    return ValidationReport([verdicts[n] for n in sorted(verdicts)])


def _infer(value: bytes) -> str | None:
    """The topic a line's shape says; a line that is no JSON object can go to any topic's decoder (it is
    rejected the same way on each)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return SOURCE_TOPICS[0]
    return topic_of(doc) if isinstance(doc, dict) else SOURCE_TOPICS[0]


def render_report(report: ValidationReport, source: str, samples: int) -> str:
    """The report for people: totals, then each reason with its count and a few lines."""
    total, rejected = len(report.verdicts), len(report.rejected)
    lines = [f"{source}: {total} records, {total - rejected} accepted, {rejected} rejected"]
    for reason, count in report.counts().items():
        lines.append(f"  {reason:<14} {count:>7}")
        for verdict in [v for v in report.rejected if v.reason == reason][:samples]:
            where = verdict.field or "record"
            if verdict.problem:
                where += f" ({verdict.problem})"
            lines.append(f"    line {verdict.line}: {where}: {verdict.detail}")
    return "\n".join(lines)


@click.command("validate")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--topic",
    type=click.Choice(SOURCE_TOPICS),
    help="Every line is for this topic (default: a line's topic field, else its shape).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--samples", type=click.IntRange(0), default=3, show_default=True, help="Lines shown per reason."
)
def validate_cli(file: BinaryIO, topic: str | None, as_json: bool, samples: int) -> None:
    """Check FILE (JSONL, one record value per line; - for stdin) with the worker's own rules.

    Prints how many lines would be counted and, per reject reason (docs/events.md, "Rejects"), the line
    numbers, the offending field and what is wrong. Duplicates, lateness and ts in the future are judged
    as if the file were sent now, in order, keyed by channel. Exits 1 if any line would be rejected.

    \b
    Examples:
      adpulse validate sample.jsonl
      tail -n 1000 tracker.log | adpulse validate --topic clicks --json -
    """
    ctx = click.get_current_context()
    settings = settings_of(ctx)
    report = validate_lines(file, settings, topic)
    if as_json:
        click.echo(orjson.dumps(report.to_json(samples)).decode())
    else:
        click.echo(render_report(report, "-" if file is sys.stdin.buffer else file.name, samples))
    if report.rejected:
        ctx.exit(1)
