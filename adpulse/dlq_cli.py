"""``adpulse dlq``: what the worker rejected, counted by reason, channel and producer, with samples.

Reads the DLQ topic (``streams.dlq`` writes it) with a consumer outside any group, so it never moves
anyone's offsets. A reject sent twice (the DLQ is at-least-once: a worker replaying a block after a crash
sends its rejects again) is counted once, by its source topic, partition and offset, so the totals are
those of ``adpulse_events_total{outcome!="accepted"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click
import orjson
from pydantic import ValidationError

from adpulse.cli_context import settings_of
from adpulse.settings import Settings, redacted_url
from streams.dlq import DlqRecord, record_channel

#: Samples kept per reason.
SAMPLES = 3
#: Characters of the original value shown around the offending field.
_CONTEXT = 60


@dataclass(frozen=True, slots=True)
class Reject:
    """One DLQ record as read: the record, its key, and the channel and producer it counts against."""

    record: DlqRecord
    key: bytes | None
    channel: str
    producer: str

    def to_json(self) -> dict[str, Any]:
        """The DLQ value plus the key and the derived channel and producer."""
        return {
            **self.record.model_dump(),
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "channel": self.channel,
            "producer": self.producer,
        }


def parse_reject(key: bytes | None, value: bytes | None) -> Reject | None:
    """A DLQ record, or None if it is not one (something else written to the topic)."""
    if value is None:
        return None
    try:
        record = DlqRecord.model_validate_json(value)
    except ValidationError:
        return None
    original = record.value.encode() if record.value is not None else None
    channel = record.channel or record_channel(key, original)
    if record.producer:
        producer = record.producer
    elif key is not None:
        producer = "key " + key.decode("utf-8", "replace")
    else:
        producer = "(no key)"
    return Reject(record, key, channel, producer)


@dataclass
class DlqSummary:
    """Rejects counted once each (by source position), by reason, channel, producer and source topic."""

    reasons: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    samples: int = SAMPLES
    seen: set[tuple[str, int, int]] = field(default_factory=set)
    by_reason: Counter[str] = field(default_factory=Counter)
    by_channel: Counter[str] = field(default_factory=Counter)
    by_producer: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    kept: dict[str, list[Reject]] = field(default_factory=dict)
    copies: int = 0

    def wants(self, reject: Reject) -> bool:
        """Whether ``reject`` passes the filters."""
        return (not self.reasons or reject.record.reason in self.reasons) and (
            not self.channels or reject.channel in self.channels
        )

    def add(self, reject: Reject) -> bool:
        """Count ``reject`` if it passes the filters and is new; True if it was counted."""
        if not self.wants(reject):
            return False
        position = (reject.record.topic, reject.record.partition, reject.record.offset)
        if position in self.seen:
            self.copies += 1
            return False
        self.seen.add(position)
        self.by_reason[reject.record.reason] += 1
        self.by_channel[reject.channel] += 1
        self.by_producer[reject.producer] += 1
        self.by_topic[reject.record.topic] += 1
        kept = self.kept.setdefault(reject.record.reason, [])
        if len(kept) < self.samples:
            kept.append(reject)
        return True

    @property
    def total(self) -> int:
        """Rejects counted."""
        return len(self.seen)

    def to_json(self) -> dict[str, Any]:
        """The summary as one JSON object."""
        return {
            "total": self.total,
            "by_reason": dict(self.by_reason.most_common()),
            "by_channel": dict(self.by_channel.most_common()),
            "by_producer": dict(self.by_producer.most_common()),
            "by_topic": dict(self.by_topic.most_common()),
            "copies_skipped": self.copies,
            "samples": [r.to_json() for kept in self.kept.values() for r in kept],
        }

    def render(self, topic: str) -> str:
        """The summary for people."""
        if not self.total:
            return f"{topic}: no rejected records" + (
                " match the filters" if self.reasons or self.channels else ""
            )
        lines = [f"{topic}: {self.total} rejected records"]
        for title, counts in (
            ("by reason", self.by_reason),
            ("by channel", self.by_channel),
            ("by producer", self.by_producer),
            ("by topic", self.by_topic),
        ):
            lines.append(f"{title}:")
            lines.extend(f"  {name:<32} {n:>8}" for name, n in counts.most_common(10))
            if len(counts) > 10:
                lines.append(f"  … and {len(counts) - 10} more")
        lines.append("samples:")
        for kept in self.kept.values():
            for reject in kept:
                lines.extend("  " + line for line in describe(reject))
        return "\n".join(lines)


def describe(reject: Reject) -> list[str]:
    """A reject in a few lines: where it came from, why, and the original with the offending field marked."""
    record = reject.record
    where = f"{record.topic}/{record.partition}@{record.offset}"
    head = f"{record.reason:<10} {where}  channel {reject.channel}  producer {reject.producer}"
    if record.field:
        head += f"  field {record.field}" + (f" ({record.problem})" if record.problem else "")
    return [head, f"  {record.detail}", f"  {point_at(record, _CONTEXT)}"]


def point_at(record: DlqRecord, context: int) -> str:
    """The original value, cut to the part around the offending field, which is marked »like this«."""
    if record.value is None:
        return "(not UTF-8: see value_b64)" if record.value_b64 else "(no value: a tombstone)"
    text = record.value
    name = (record.field or "").split(".", 1)[0]
    start = text.find(f'"{name}"') if name else -1
    if start < 0:
        shown = text[: 2 * context]
        suffix = "…" if len(text) > len(shown) else ""
        note = f"  (no {name!r} field)" if name and record.problem == "missing" else ""
        return shown + suffix + note
    end = _value_end(text, start)
    before = text[max(0, start - context) : start]
    after = text[end : end + context]
    return (
        ("…" if start > context else "")
        + before
        + "»"
        + text[start:end]
        + "«"
        + after
        + ("…" if end + context < len(text) else "")
    )


def _value_end(text: str, start: int) -> int:
    """Where the ``"name": value`` pair starting at ``start`` ends (at the next top-level , or })."""
    depth, quoted, escaped = 0, False, False
    colon = text.find(":", start)
    i = colon + 1 if colon >= 0 else start
    while i < len(text):
        char = text[i]
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            if depth == 0:
                return i
            depth -= 1
        elif char == "," and depth == 0:
            return i
        i += 1
    return len(text)


async def read_dlq(
    settings: Settings,
    on_reject: Callable[[Reject], object],
    since_ms: int | None = None,
    follow: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Read the DLQ from ``since_ms`` (or the beginning) to its end (or on, with ``follow``)."""
    from aiokafka import AIOKafkaConsumer

    from streams.metadata import topic_partitions

    topic = settings.topic("dlq")
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = await topic_partitions(settings.kafka_client_options(), topic)
        if not tps:
            raise click.ClickException(
                f"topic {topic} does not exist on {redacted_url(settings.kafka_bootstrap)}: is this the "
                "right broker and ADPULSE_TOPIC_PREFIX?"
            )
        consumer.assign(tps)
        if since_ms is None:
            await consumer.seek_to_beginning(*tps)
        else:
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
        ends = await consumer.end_offsets(tps)
        idle = 0
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for message in records:
                    reject = parse_reject(message.key, message.value)
                    if reject is not None:
                        on_reject(reject)
            if follow:
                continue
            idle = 0 if batch else idle + 1
            # The end offsets can point past the last record on some brokers: a few empty fetches end it too.
            positions = [await _position(consumer, tp) for tp in tps]
            if all(at >= ends[tp] for at, tp in zip(positions, tps, strict=True)) or idle >= 4:
                return
    finally:
        await consumer.stop()


async def _position(consumer: Any, tp: Any) -> int:
    position: int = await consumer.position(tp)
    return position


def _since_ms(text: str | None, settings: Settings) -> int | None:
    if text is None:
        return None
    from adpulse.simulate import parse_start

    try:
        moment: datetime = parse_start(text, settings.zone)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    return int(moment.timestamp() * 1000)


@click.command("dlq")
@click.option("--since", metavar="TIME", help="Only rejects written since: RFC 3339 or relative (-30m, -2h).")
@click.option("--reason", "reasons", multiple=True, help="Only this reason (repeatable).")
@click.option("--channel", "channels", multiple=True, help="Only this channel (repeatable).")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object (with --follow: one JSON line per reject)."
)
@click.option(
    "--follow", "-f", is_flag=True, help="Keep reading: print each reject as it arrives (Ctrl-C stops)."
)
@click.option(
    "--samples", type=click.IntRange(0), default=SAMPLES, show_default=True, help="Samples per reason."
)
def dlq_cli(
    since: str | None,
    reasons: Sequence[str],
    channels: Sequence[str],
    as_json: bool,
    follow: bool,
    samples: int,
) -> None:
    """What the worker did not count and why: rejects on the DLQ topic by reason, channel and producer,
    with samples that point at the offending field (reasons: docs/events.md, "Rejects").

    The producer is a record's adpulse-producer header, else its key. Each reject counts once, however
    often a worker replay sent it, so the totals match adpulse_events_total{outcome!="accepted"}.

    \b
    Examples:
      adpulse dlq
      adpulse dlq --since -1h --channel taobao --reason invalid
      adpulse dlq --follow --json | jq .detail
    """
    ctx = click.get_current_context()
    settings = settings_of(ctx)
    summary = DlqSummary(frozenset(reasons), frozenset(channels), samples)
    since_ms = _since_ms(since, settings)

    def show(reject: Reject) -> None:
        if not summary.add(reject):
            return
        if as_json:
            click.echo(orjson.dumps(reject.to_json()).decode())
        else:
            click.echo("\n".join(describe(reject)))
        sys.stdout.flush()  # a pipe (| jq) gets each reject as it arrives

    from aiokafka.errors import KafkaConnectionError

    try:
        if follow:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(read_dlq(settings, show, since_ms, follow=True))
            return
        asyncio.run(read_dlq(settings, summary.add, since_ms))
    except KafkaConnectionError as exc:
        raise click.ClickException(
            f"cannot reach Kafka at {redacted_url(settings.kafka_bootstrap)} ({exc}); "
            "is the broker up (adpulse stack up)?"
        ) from None
    if as_json:
        click.echo(orjson.dumps(summary.to_json()).decode())
    else:
        click.echo(summary.render(settings.topic("dlq")))
