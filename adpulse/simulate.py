"""``adpulse simulate``: produce realistic tracker traffic (:mod:`adpulse.traffic`) to Kafka.

Live mode (default) keeps event time on the wall clock, paced to ``--rate``. Backfill mode starts at
``--start`` and runs event time at ``--speed`` × the wall clock (or as fast as the broker takes it); once it
catches up with the present it continues live, so event time never runs ahead of the clock.

Records go out through one producer, built into per-partition batches with aiokafka's batch API: on this
kind of machine that reaches ~250 k records/s, where ``send()`` per record tops out near ~57 k/s (measured
against the embedded broker). The partition is chosen here, not by the client, because the ground truth's
lateness depends on which records share a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TextIO
from zoneinfo import ZoneInfo

import click
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from adpulse.cli_context import settings_of
from adpulse.settings import Settings, redacted_url
from adpulse.traffic.generator import Record, TrafficGenerator
from adpulse.traffic.profiles import DEFAULT_CHANNELS
from adpulse.traffic.scenarios import Scenario, parse_duration_s, parse_scenario
from adpulse.traffic.truth import TOPICS, GroundTruth

#: Records generated per step when running faster than real time: bounds memory and keeps the display live.
_RECORDS_PER_STEP = 20_000
#: How often live mode produces (event time advances in steps of at least this much).
_LIVE_TICK_S = 0.1
_BATCH_BYTES = 256 * 1024
_FAULTY_KINDS = ("invalid", "late", "duplicate")


class SimulationError(RuntimeError):
    """The simulation could not run (e.g. the topics do not exist); the message says how to fix it."""


# --------------------------------------------------------------------------------------------------- report


@dataclass
class SimulationReport:
    """What a run sent: records per topic and kind, the event-time span, and the ground truth."""

    mode: str
    wall_s: float
    interrupted: bool
    truth: GroundTruth

    @property
    def sent(self) -> int:
        """Records sent, of every kind."""
        return self.truth.sent

    @property
    def records(self) -> dict[str, dict[str, int]]:
        """Records per topic and kind (valid, invalid, late, duplicate)."""
        return {topic: dict(kinds) for topic, kinds in self.truth.kinds.items()}

    def write_truth(self, path: Path) -> None:
        """Write the ground truth (format: :meth:`GroundTruth.to_dict`) as JSON to ``path``."""
        path.write_bytes(self.truth.to_json())

    def summary(self) -> str:
        """A few lines for people."""
        rate = self.sent / self.wall_s if self.wall_s > 0 else 0.0
        lines = [f"sent {self.sent} records in {self.wall_s:.1f}s ({rate:,.0f}/s), {self.mode}"]
        for topic, kinds in self.records.items():
            lines.append(f"  {topic:<7} " + "  ".join(f"{kind} {n}" for kind, n in kinds.items()))
        if self.interrupted:
            lines.append("  (stopped early)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- progress


@dataclass
class ProgressSnapshot:
    """The numbers a progress display shows."""

    mode: str
    event_time: datetime
    sent: int
    per_second: float
    per_topic: dict[str, int]
    faulty: dict[str, int]
    phases: list[str] = field(default_factory=list)


class Progress(Protocol):
    """Where progress goes while a run lasts."""

    def update(self, snapshot: ProgressSnapshot) -> None: ...

    def close(self) -> None: ...


class RichProgress:
    """A live table in the terminal."""

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, snapshot: ProgressSnapshot) -> None:
        table = Table(title=f"adpulse simulate — {snapshot.mode}", show_header=False, min_width=48)
        table.add_row("event time", snapshot.event_time.isoformat(timespec="seconds"))
        table.add_row("records sent", f"{snapshot.sent:,}")
        table.add_row("records/s", f"{snapshot.per_second:,.0f}")
        for topic, n in snapshot.per_topic.items():
            table.add_row(f"  {topic}", f"{n:,}")
        for kind, n in snapshot.faulty.items():
            table.add_row(f"  {kind}", f"{n:,}")
        for phase in snapshot.phases:
            table.add_row("scenario", phase)
        self._live.update(table)

    def close(self) -> None:
        self._live.stop()


class LineProgress:
    """Plain log lines, at most one per ``interval_s`` (for pipes, files and CI logs)."""

    def __init__(
        self, stream: TextIO, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream, self._interval_s, self._clock = stream, interval_s, clock
        self._last = -math.inf

    def update(self, snapshot: ProgressSnapshot) -> None:
        now = self._clock()
        if now - self._last < self._interval_s:
            return
        self._last = now
        topics = " ".join(f"{t}={n}" for t, n in snapshot.per_topic.items())
        faulty = " ".join(f"{k}={n}" for k, n in snapshot.faulty.items() if n)
        phases = "; ".join(snapshot.phases)
        parts = [
            f"simulate {snapshot.mode} event_time={snapshot.event_time.isoformat(timespec='seconds')}",
            f"sent={snapshot.sent} rate={snapshot.per_second:.0f}/s {topics}",
            faulty,
            phases,
        ]
        print(" | ".join(p for p in parts if p), file=self._stream, flush=True)

    def close(self) -> None:
        """Nothing to tear down."""


def default_progress(console: Console | None = None) -> Progress:
    """A rich live table when stdout is a terminal, plain log lines on stderr otherwise."""
    console = console or Console()
    return RichProgress(console) if console.is_terminal else LineProgress(sys.stderr)


# ----------------------------------------------------------------------------------------------- producing


class BatchSender:
    """Builds records into one batch per partition and submits full batches; at most one step in flight."""

    def __init__(self, producer: AIOKafkaProducer, topic_names: dict[str, str]) -> None:
        self._producer = producer
        self._topic_names = topic_names
        self._in_flight: list[asyncio.Future[Any]] = []

    async def send(self, records: Iterable[Record]) -> None:
        """Send ``records`` (to the partition each names); then wait for the previous call's deliveries."""
        open_batches: dict[tuple[str, int], Any] = {}
        submitted: list[asyncio.Future[Any]] = []
        for topic, key, value, ts_ms, partition in records:
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[topic, partition] = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=ts_ms) is None:  # full: send it, start another
                submitted.append(await self._submit(batch, topic, partition))
                batch = open_batches[topic, partition] = self._producer.create_batch()
                batch.append(key=key, value=value, timestamp=ts_ms)
        for (topic, partition), batch in open_batches.items():
            submitted.append(await self._submit(batch, topic, partition))
        # Overlap: this step's batches travel while the previous step's acknowledgements are checked.
        await asyncio.gather(*self._in_flight)
        self._in_flight = submitted

    async def flush(self) -> None:
        """Wait until everything sent so far is acknowledged (acks=all)."""
        await asyncio.gather(*self._in_flight)
        self._in_flight = []

    async def _submit(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        batch.close()
        sent: asyncio.Future[Any] = await self._producer.send_batch(
            batch, self._topic_names[topic], partition=partition
        )
        return sent


async def topic_partitions(producer: AIOKafkaProducer, topic_names: dict[str, str]) -> dict[str, int]:
    """Partition count of each topic; raises :class:`SimulationError` naming the missing ones."""
    metadata = await producer.client.fetch_all_metadata()
    counts = {short: metadata.partitions_for_topic(full) for short, full in topic_names.items()}
    missing = [topic_names[short] for short, parts in counts.items() if not parts]
    if missing:
        raise SimulationError(
            f"topic(s) {', '.join(missing)} do not exist on the broker; "
            "start the embedded stack (`adpulse stack up`) or create them, then retry"
        )
    return {short: len(parts) for short, parts in counts.items() if parts}


# ------------------------------------------------------------------------------------------------- pacing


@dataclass
class Pacer:
    """Decides how far event time may advance: ``speed`` × elapsed wall time, never past the wall clock."""

    start_ms: int
    end_ms: int | None
    speed: float
    rate: float
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    _t0: float = field(init=False)

    def __post_init__(self) -> None:
        self._t0 = self.monotonic()

    def target_ms(self, cursor_ms: int) -> int:
        """Event time to generate up to now (``cursor_ms`` if nothing is due yet)."""
        elapsed_ms = (self.monotonic() - self._t0) * 1000
        paced = self.start_ms + elapsed_ms * self.speed if math.isfinite(self.speed) else math.inf
        step_ms = max(_LIVE_TICK_S * 1000, _RECORDS_PER_STEP / self.rate * 1000)
        target = min(paced, self.clock() * 1000, cursor_ms + step_ms)
        if self.end_ms is not None:
            target = min(target, self.end_ms)
        return max(cursor_ms, int(target))

    def done(self, cursor_ms: int) -> bool:
        """Whether the run's event time is complete."""
        return self.end_ms is not None and cursor_ms >= self.end_ms


# ---------------------------------------------------------------------------------------------- simulate


async def simulate(
    settings: Settings,
    *,
    rate: float,
    duration_s: float | None,
    seed: int = 0,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    scenarios: Sequence[Scenario] = (),
    start: datetime | None = None,
    speed: float | None = None,
    progress: bool | Progress = True,
    campaigns_per_channel: int = 3,
    daily_curve: bool = True,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> SimulationReport:
    """Produce simulated traffic to the ``clicks``, ``orders`` and ``spend`` topics; report what was sent.

    ``rate`` is records per event-time second (the day's mean when ``daily_curve``). ``duration_s`` is
    event time to cover; None runs until ``stop`` is set (live) or up to the present (backfill). ``start``
    (aware datetime) switches to backfill at ``speed`` (event-time seconds per wall second; ``math.inf``,
    the default with ``start``, is as fast as possible). ``progress`` is True for the default display,
    False for none, or a :class:`Progress`. ``clock`` is the wall clock (epoch seconds).
    """
    pacer, mode = plan(start=start, speed=speed, duration_s=duration_s, rate=rate, clock=clock)
    stop = stop or asyncio.Event()
    topic_names = {short: settings.topic(short) for short in TOPICS}
    began = time.monotonic()
    async with _started(_producer(settings)) as producer:
        generator = TrafficGenerator(
            seed,
            channels=channels,
            campaigns_per_channel=campaigns_per_channel,
            zone=settings.zone,
            scenarios=scenarios,
            partitions=await topic_partitions(producer, topic_names),
            grace_s=settings.grace_s,
            currency=settings.currency,
            max_record_bytes=settings.max_record_bytes,
            max_future_skew_s=settings.max_future_skew_s,
            daily_curve=daily_curve,
            origin_ms=pacer.start_ms,
        )
        with _shown(progress) as display:
            sender = BatchSender(producer, topic_names)
            cursor = await _ProduceLoop(generator, sender, pacer, rate, stop, display, mode).run()
    return SimulationReport(mode, time.monotonic() - began, not pacer.done(cursor), generator.truth)


def plan(
    *,
    start: datetime | None,
    speed: float | None,
    duration_s: float | None,
    rate: float,
    clock: Callable[[], float] = time.time,
) -> tuple[Pacer, str]:
    """The run's pacer and mode label ("live", "backfill max", "backfill ×10") from the user's choices."""
    now_ms = int(clock() * 1000)
    if start is None:
        if speed is not None:
            raise SimulationError("--speed needs --start: live traffic runs on the wall clock")
        start_ms, speed, label = now_ms, 1.0, "live"
    else:
        if start.tzinfo is None:
            raise SimulationError("start must be timezone-aware")
        start_ms = int(start.timestamp() * 1000)
        if start_ms > now_ms:
            raise SimulationError("--start must not be in the future: event time never runs ahead of now")
        speed = math.inf if speed is None else speed
        label = "backfill max" if math.isinf(speed) else f"backfill ×{speed:g}"
    if not speed > 0:
        raise SimulationError("speed must be > 0")
    if duration_s is not None:
        end_ms: int | None = start_ms + int(duration_s * 1000)
    else:  # live: until stopped; backfill: up to the moment the run began
        end_ms = None if start is None else now_ms
    return Pacer(start_ms, end_ms, speed, rate, clock=clock), label


def _producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **settings.kafka_client_options(),
        acks="all",
        # The embedded broker has no InitProducerId, which idempotence needs.
        enable_idempotence=False,
        linger_ms=20,
        max_batch_size=_BATCH_BYTES,
        # Oversized test records (> max_record_bytes) must reach the broker, for the pipeline to reject them.
        max_request_size=max(1024 * 1024, 4 * settings.max_record_bytes),
    )


@contextlib.asynccontextmanager
async def _started(producer: AIOKafkaProducer) -> AsyncIterator[AIOKafkaProducer]:
    try:
        await producer.start()
        yield producer
    finally:
        await producer.stop()


@contextlib.contextmanager
def _shown(progress: bool | Progress) -> Iterator[Progress | None]:
    display = default_progress() if progress is True else progress or None
    try:
        yield display
    finally:
        if display is not None:
            display.close()


class _RateMeter:
    """Records per wall second, over the last few seconds."""

    def __init__(self, window_s: float = 3.0) -> None:
        self._window_s = window_s
        self._marks: list[tuple[float, int]] = []

    def rate(self, sent: int) -> float:
        now = time.monotonic()
        self._marks.append((now, sent))
        while len(self._marks) > 2 and now - self._marks[0][0] > self._window_s:
            self._marks.pop(0)
        (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class _ProduceLoop:
    """Generate what is due, send it, show progress; until the event time is covered or ``stop`` is set."""

    generator: TrafficGenerator
    sender: BatchSender
    pacer: Pacer
    rate: float
    stop: asyncio.Event
    display: Progress | None
    mode: str
    meter: _RateMeter = field(default_factory=_RateMeter)

    async def run(self) -> int:
        """Produce until done or stopped; returns the event time reached (epoch ms)."""
        cursor = self.pacer.start_ms
        while not self.pacer.done(cursor) and not self.stop.is_set():
            target = self.pacer.target_ms(cursor)
            if target - cursor < _LIVE_TICK_S * 1000 and not self.pacer.done(target):
                await _sleep_or_stop(self.stop, _LIVE_TICK_S)
                continue
            await self.sender.send(self.generator.records(cursor, target, self.rate))
            cursor = target
            if self.display is not None:
                self.display.update(self.snapshot(cursor))
            await asyncio.sleep(0)  # let signal handlers and the producer's sender task run between steps
        await self.sender.flush()
        return cursor

    def snapshot(self, cursor: int) -> ProgressSnapshot:
        """The progress numbers at event time ``cursor``."""
        kinds = self.generator.truth.kinds
        sent = self.generator.truth.sent
        return ProgressSnapshot(
            mode=self.mode,
            event_time=datetime.fromtimestamp(cursor / 1000, self.generator.zone),
            sent=sent,
            per_second=self.meter.rate(sent),
            per_topic={topic: sum(counts.values()) for topic, counts in kinds.items()},
            faulty={kind: sum(counts[kind] for counts in kinds.values()) for kind in _FAULTY_KINDS},
            phases=self.generator.phases(cursor),
        )


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


# ----------------------------------------------------------------------------------------------------- CLI

_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?\s*[smhd]?)$")


def parse_start(text: str, zone: ZoneInfo, now: datetime | None = None) -> datetime:
    """``-30m``/``-2h`` (before now), ``now``, or RFC 3339; a time without offset is read in ``zone``."""
    now = now or datetime.now(zone)
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(seconds=parse_duration_s(relative.group(1).replace(" ", "")))
    if text == "now":
        return now
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        example = "2024-06-18T09:00:00+08:00"
        raise ValueError(f"not a start time: {text!r} (use RFC 3339 such as {example}, or -30m)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def parse_speed(text: str) -> float:
    """Event-time seconds per wall second from ``10`` or ``max`` (as fast as possible → ``math.inf``)."""
    if text.strip().lower() == "max":
        return math.inf
    try:
        speed = float(text)
    except ValueError:
        raise ValueError(f"not a speed: {text!r} (a number > 0, or max)") from None
    if not speed > 0 or math.isnan(speed):
        raise ValueError(f"speed must be > 0, got {text!r}")
    return speed


class _Parsed(click.ParamType):
    """A click type around one of the parse functions (their ValueError becomes a usage error)."""

    def __init__(self, metavar: str, parse: Callable[[str], Any]) -> None:
        self.name = metavar.lower()
        self._metavar = metavar
        self._parse = parse

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self._metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_EPILOG = """\b
Scenarios (repeatable; parameters optional, after a colon):
  ctr-drop        a channel's CTR falls to 40 %          channel, at, for, factor
  spend-surge     a channel's spend per click ×3         channel, at, for, factor
  tracker-outage  a channel sends nothing for 2 min      channel, at, for, spend
                  (spend=keep: only clicks, visits, carts stop; impressions, spend, orders go on)
  bad-records     1 % malformed records                  at, for, fraction, channel
  late-events     1 % old ts, half beyond the grace      at, for, fraction, beyond
  duplicates      1 % records sent twice                 at, for, fraction
  Channel scenarios start 60 s into the run, the others at once; `for` is
  until the end unless given.

\b
Examples:
  adpulse simulate --rate 500 --scenario ctr-drop:channel=douyin,at=2m
  adpulse simulate --start -30m --speed max --seed 7 \\
      --scenario late-events --scenario duplicates --truth truth.json
"""


@click.command("simulate", epilog=_EPILOG)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=200.0,
    show_default=True,
    help="Records per second of event time (the day's mean: traffic follows a daily curve).",
)
@click.option(
    "--duration",
    type=_Parsed("DURATION", parse_duration_s),
    help="Event time to cover, e.g. 90s, 10m, 2h. Default: until Ctrl-C (live) or until now (--start).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed and start, same records.")
@click.option(
    "--channels", default=",".join(DEFAULT_CHANNELS), show_default=True, help="Comma-separated channels."
)
@click.option(
    "--campaigns", type=click.IntRange(1, 50), default=3, show_default=True, help="Campaigns per channel."
)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=_Parsed("NAME[:key=value,...]", parse_scenario),
    help="Add a scenario (repeatable); see below.",
)
@click.option("--start", metavar="TIME", help="Backfill from this event time: RFC 3339 or relative (-30m).")
@click.option(
    "--speed",
    type=_Parsed("SPEED", parse_speed),
    help="With --start: event-time seconds per wall second, or max (the default).",
)
@click.option("--flat", is_flag=True, help="No daily curve: the same rate around the clock.")
@click.option(
    "--truth",
    "truth_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the ground truth (expected KPI totals, records by kind) as JSON to this file.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display and no summary.")
def simulate_cli(
    rate: float,
    duration: float | None,
    seed: int,
    channels: str,
    campaigns: int,
    scenarios: tuple[Scenario, ...],
    start: str | None,
    speed: float | None,
    flat: bool,
    truth_path: Path | None,
    quiet: bool,
) -> None:
    """Send realistic tracker traffic (impressions, clicks, visits, carts, orders, spend) to the topics."""
    settings = settings_of(click.get_current_context())
    try:
        start_at = parse_start(start, settings.zone) if start is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--start") from None
    options = {
        "rate": rate,
        "duration_s": duration,
        "seed": seed,
        "channels": [c.strip() for c in channels.split(",") if c.strip()],
        "scenarios": scenarios,
        "start": start_at,
        "speed": speed,
        "progress": not quiet,
        "campaigns_per_channel": campaigns,
        "daily_curve": not flat,
    }
    try:
        report = asyncio.run(_simulate_until_signal(settings, **options))
    except (SimulationError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    except KafkaConnectionError as exc:
        hint = "is the broker up (`adpulse stack up`), and ADPULSE_KAFKA_BOOTSTRAP right?"
        message = f"cannot reach Kafka at {redacted_url(settings.kafka_bootstrap)} ({exc}); {hint}"
        raise click.ClickException(message) from None
    if truth_path is not None:
        report.write_truth(truth_path)
    if not quiet:
        click.echo(report.summary())


async def _simulate_until_signal(settings: Settings, **options: Any) -> SimulationReport:
    """:func:`simulate`, stopped cleanly (flushed, truth kept) by Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await simulate(settings, stop=stop, **options)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
