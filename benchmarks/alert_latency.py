"""Alert latency of one adpulse worker: from the moment the evidence is complete to the alert in Redis.

Per run (one set of ``ADPULSE_TICK_S`` / ``ADPULSE_FLUSH_INTERVAL_S``), on a fresh embedded stack (Tansu +
valkey on free loopback ports) with ONE ``python -m adpulse worker`` and live background traffic
(``python -m adpulse simulate --rate R --flat``, a process of its own):

- **budget crossing** (the target: p95 ≤ 1 s): day budgets for N channels ``bench00..`` are set through
  ``adpulse.budget_cli.produce_setting``; once the worker judges all of them (``adpulse_budget_used_ratio``
  on /metrics), one spend event per channel (``cost`` = 85 % of the budget) is sent with ``send_and_wait``,
  a random 1–2 s apart (not a multiple of the tick, so sends do not phase-lock with it). t0 = when the
  broker acknowledged the event; the alert's time is the id of its ``adpulse:alerts`` stream entry (the
  Redis server's clock at XADD, same machine; an XREAD BLOCK reader's receive time is reported too). The
  latency is split with the timestamps the pipeline leaves behind: the partial's CreateTime on
  ``adpulse.partials`` (fold stage done) and the first changelog record of the channel's bucket on the
  Faust table's changelog (Faust agent merged it).
- **window close** (optional, ``--window-minutes``): a rules file with the seed targets plus one rule that
  fires on every closed 1-minute window of channels ``win00..`` (CTR below 200 %, one impression is
  enough); a few impressions of two new such channels are sent each minute. The evidence is complete when
  the window's end plus ``ADPULSE_GRACE_S`` has passed on the wall clock; latency = XADD time − that.

Results go to stdout and to a generated section of BENCHMARKS.md.

    python benchmarks/alert_latency.py --channels 40 --window-minutes 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

# Before the imports below, so that the script runs from a checkout without installing (ruff allows
# imports after sys.path.insert).
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (
    KAFKA_CHANGELOG_BATCH_BYTES,
    REPO,
    Started,
    broker_env,
    command_and_machine,
    free_ports,
    percentile,
    section_head,
    section_markers,
    write_markdown,
)
from procstat import cpu_seconds

from adpulse.kafka_server import KAFKA_VERSION
from adpulse.metrics_page import label, metric_samples, metric_sum, read_metrics
from adpulse.settings import Settings, redacted_url
from streams.keys import Keys

TARGET_P95_S = 1.0


#: How the report names each broker.
BROKER_NAMES = {
    "tansu": "Tansu",
    "kafka": f"Apache Kafka {KAFKA_VERSION}, one KRaft node, the worker's changelog batched "
    f"(`ADPULSE_CHANGELOG_BATCH_BYTES={KAFKA_CHANGELOG_BATCH_BYTES}`)",
}


def markers(broker: str) -> tuple[str, str]:
    """The generated section's markers: one section per broker, so both stay in BENCHMARKS.md."""
    return section_markers("alert_latency.py", broker)


# --------------------------------------------------------------------------------------------- helpers


def worker_metrics(port: int) -> str | None:
    """The worker's /metrics page, or None while it is not serving."""
    return read_metrics(f"http://127.0.0.1:{port}/metrics")


@dataclass
class RunConfig:
    tick_s: float
    flush_s: float
    #: ADPULSE_FETCH_WAIT_MS for the worker; None: the setting's default.
    fetch_wait_ms: int | None = None

    @property
    def label(self) -> str:
        return f"tick {self.tick_s:g} s / flush {self.flush_s:g} s" + (
            f" / fetch wait {self.fetch_wait_ms} ms" if self.fetch_wait_ms else ""
        )


def parse_config(text: str) -> RunConfig:
    try:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError
        return RunConfig(float(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else None)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected TICK_S:FLUSH_S[:FETCH_WAIT_MS] such as 0.5:0.25, got {text!r}"
        ) from None


# --------------------------------------------------------------------------------------------- results


@dataclass
class BudgetSample:
    channel: str
    t_send: float
    t_ack: float
    xadd_s: float | None = None  # stream entry id (Redis clock at XADD)
    seen_s: float | None = None  # when the XREAD reader got it
    partial_s: float | None = None  # CreateTime of the first partial of the channel (fold stage published)
    changelog_s: float | None = None  # CreateTime of the first changelog record of its bucket (agent merged)

    @property
    def latency(self) -> float | None:
        return None if self.xadd_s is None else self.xadd_s - self.t_ack


@dataclass
class WindowSample:
    channel: str
    window_end_s: float
    complete_s: float  # window end + grace
    xadd_s: float | None = None
    seen_s: float | None = None

    @property
    def latency(self) -> float | None:
        return None if self.xadd_s is None else self.xadd_s - self.complete_s


@dataclass
class RunResult:
    config: RunConfig
    settings: dict[str, str]
    budget: list[BudgetSample]
    window: list[WindowSample]
    traffic_events_per_s: float
    worker_cpu_cores: float
    event_time_lag_s: list[float]
    tick_mean_s: float | None
    tick_count: int
    startup_s: float
    problems: list[str] = field(default_factory=list)
    fetch_probe: dict[int, list[float]] = field(default_factory=dict)
    #: Background traffic asked of ``adpulse simulate`` (records/s), and what it says it sent.
    rate_asked: int = 0
    rate_sent: float | None = None
    #: The share of the sustained one-worker throughput that ``rate_asked`` is (None: a fixed --rate).
    load: float | None = None

    def budget_latencies(self) -> list[float]:
        return [s.latency for s in self.budget if s.latency is not None]

    def window_latencies(self) -> list[float]:
        return [s.latency for s in self.window if s.latency is not None]


# --------------------------------------------------------------------------------------------- one run


async def stream_reader(
    client: Any, key: str, start_id: bytes, sink: list[tuple[float, float, dict]], stop: asyncio.Event
) -> None:
    """XREAD BLOCK from ``start_id``; append (xadd_s, seen_s, alert) for every entry."""
    last = start_id
    while not stop.is_set():
        got = await client.xread({key: last}, block=500, count=100)
        seen = time.time()
        for _stream, entries in got or ():
            for entry_id, fields in entries:
                last = entry_id
                ms = int(entry_id.split(b"-", 1)[0])
                sink.append((ms / 1000, seen, orjson.loads(fields[b"alert"])))


async def send_spend(
    producer: Any, topic: str, channel: str, cost: float, event_id: str
) -> tuple[float, float]:
    value = {"event_id": event_id, "ts": int(time.time() * 1000), "channel": channel, "cost": cost}
    t_send = time.time()
    await producer.send_and_wait(topic, orjson.dumps(value), key=channel.encode())
    return t_send, time.time()


async def window_traffic(
    producer: Any,
    topic: str,
    args: argparse.Namespace,
    grace_s: float,
    samples: list[WindowSample],
    stop: asyncio.Event,
) -> None:
    """Each minute, at +``args.window_offset`` s: a few impressions of ``args.window_per_minute`` new
    channels."""
    k = 0
    for _minute in range(args.window_minutes):
        now = time.time()
        minute = now - now % 60
        at = minute + args.window_offset
        if at < now + 0.5:
            minute += 60
            at += 60
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), at - time.time())
        if stop.is_set():
            return
        for _ in range(args.window_per_minute):
            channel = f"win{k:02d}"
            k += 1
            ts = int(time.time() * 1000)
            for i in range(5):
                value = {"event_id": f"{channel}-{i}", "ts": ts, "channel": channel, "type": "impression"}
                await producer.send_and_wait(topic, orjson.dumps(value), key=channel.encode())
            end = minute + 60
            samples.append(WindowSample(channel, end, end + grace_s))


def window_channels(args: argparse.Namespace) -> list[str]:
    return [f"win{k:02d}" for k in range(args.window_minutes * args.window_per_minute)]


def rules_file(path: Path, channels: list[str]) -> Path:
    """The seed targets plus one rule that fires on every closed 1-minute window of ``channels``."""
    import yaml

    from alerts.rules import default_rules

    rules = [rule.model_dump(mode="json", exclude_defaults=True) for rule in default_rules()]
    rules.append(
        {
            "metric": "ctr",
            "below": 2.0,
            "windows": ["1m"],
            "level": "channel",
            "min_volume": {"impressions": 1},
            "match": {"channel": channels},
        }
    )
    path.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    return path


async def first_stamps(
    settings: Settings, channels: list[str], since_ms: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Per channel: CreateTime (s) of its first partial and of its first bucket changelog record after
    ``since_ms``."""
    from aiokafka import AIOKafkaConsumer

    from streams.metadata import topic_partitions

    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    partial: dict[str, float] = {}
    changelog: dict[str, float] = {}
    try:
        topics = await consumer.topics()
        changelogs = sorted(t for t in topics if t.endswith("buckets-changelog"))
        wanted = {settings.topic("partials"): partial, **{t: changelog for t in changelogs}}
        # Asked of the cluster: on Kafka a consumer's partitions_for_topic knows no topic it did not fetch.
        tps = [tp for t in wanted for tp in await topic_partitions(settings.kafka_client_options(), t)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        names = [(c, c.encode()) for c in channels]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batches.items():
                into = wanted[tp.topic]
                for record in records:
                    if record.key is None or record.timestamp < since_ms:
                        continue
                    for name, raw in names:
                        if raw in record.key:
                            stamp = record.timestamp / 1000
                            if name not in into or stamp < into[name]:
                                into[name] = stamp
                            break
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
    finally:
        await consumer.stop()
    return partial, changelog


async def measure(
    args: argparse.Namespace,
    config: RunConfig,
    settings: Settings,
    worker_port: int,
    worker_pid: int,
    samples: list[BudgetSample],
    windows: list[WindowSample],
    lag_samples: list[float],
) -> tuple[float, float, float | None, int]:
    """Budgets, wait, the spend probes (and window probes), the stream reader.

    Returns the traffic rate, CPU and tick."""
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaProducer

    from adpulse.budget_cli import produce_setting
    from streams.events import BudgetSetting

    channels = [f"bench{i:02d}" for i in range(args.channels)]
    for channel in channels:
        await produce_setting(
            settings, BudgetSetting(channel=channel, period="day", amount=args.amount, owner="@bench")
        )
    deadline = time.monotonic() + 60
    while True:
        text = await asyncio.to_thread(worker_metrics, worker_port)
        judged = {label(labels, "channel") for labels, _ in metric_samples(text, "adpulse_budget_used_ratio")}
        if set(channels) <= judged:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the worker judges only {len(set(channels) & judged)} of {len(channels)} budgets after 60 s"
            )
        await asyncio.sleep(0.5)
    print(f"  worker judges all {len(channels)} budgets; warming up {args.warmup:.0f} s")
    await asyncio.sleep(args.warmup)

    client = aioredis.from_url(settings.redis_url)
    key = Keys(settings.redis_prefix).alerts
    newest = await client.xrevrange(key, count=1)
    start_id = newest[0][0] if newest else b"0-0"
    entries: list[tuple[float, float, dict]] = []
    stop = asyncio.Event()
    reader = asyncio.create_task(stream_reader(client, key, start_id, entries, stop))
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(), acks="all", enable_idempotence=False, linger_ms=0
    )
    await producer.start()

    async def poll_lag() -> None:
        while not stop.is_set():
            text = await asyncio.to_thread(worker_metrics, worker_port)
            lag = list(metric_samples(text, "adpulse_event_time_lag_seconds"))
            if lag:
                lag_samples.append(lag[0][1])
            await asyncio.sleep(1.0)

    lagger = asyncio.create_task(poll_lag())
    text0 = await asyncio.to_thread(worker_metrics, worker_port)
    events0, t_start, cpu0 = (
        metric_sum(text0, "adpulse_events_total"),
        time.time(),
        cpu_seconds(worker_pid) or 0.0,
    )
    window_stop = asyncio.Event()
    window_task = (
        asyncio.create_task(
            window_traffic(producer, settings.topic("clicks"), args, settings.grace_s, windows, window_stop)
        )
        if args.window_minutes
        else None
    )
    rng = random.Random(args.seed)
    run_tag = uuid.uuid4().hex[:6]
    try:
        for i, channel in enumerate(channels):
            t_send, t_ack = await send_spend(
                producer, settings.topic("spend"), channel, args.amount * args.share, f"lat-{run_tag}-{i}"
            )
            samples.append(BudgetSample(channel, t_send, t_ack))
            await asyncio.sleep(
                max(0.0, t_send + rng.uniform(args.spacing_min, args.spacing_max) - time.time())
            )
        if window_task is not None:
            await window_task
        last_due = max([s.complete_s for s in windows], default=time.time()) + args.alert_timeout
        due = max(time.time() + args.alert_timeout, last_due if windows else 0.0)
        wanted_budget = {s.channel for s in samples}
        wanted_window = {s.channel for s in windows}
        while time.time() < due:
            got_budget = {a["channel"] for _, _, a in entries if is_budget_warning(a)}
            got_window = {a["channel"] for _, _, a in entries if is_window_alert(a)}
            if wanted_budget <= got_budget and wanted_window <= got_window:
                break
            await asyncio.sleep(0.5)
    finally:
        window_stop.set()
        if window_task is not None and not window_task.done():
            window_task.cancel()
        text1 = await asyncio.to_thread(worker_metrics, worker_port)
        events1, t_end, cpu1 = (
            metric_sum(text1, "adpulse_events_total"),
            time.time(),
            cpu_seconds(worker_pid) or 0.0,
        )
        stop.set()
        await reader
        await lagger
        await producer.stop()
        await client.aclose()
    for xadd_s, seen_s, alert in entries:
        if is_budget_warning(alert):
            for s in samples:
                if s.channel == alert["channel"] and s.xadd_s is None:
                    s.xadd_s, s.seen_s = xadd_s, seen_s
        elif is_window_alert(alert):
            for w in windows:
                if w.channel == alert["channel"] and w.xadd_s is None:
                    end = datetime.fromisoformat(alert["window_end"]).timestamp()
                    if abs(end - w.window_end_s) > 0.5:
                        print(
                            f"  note: {w.channel} fired for the window ending {alert['window_end']}, "
                            f"not {datetime.fromtimestamp(w.window_end_s, UTC).isoformat()}"
                        )
                        w.window_end_s, w.complete_s = end, end + settings.grace_s
                    w.xadd_s, w.seen_s = xadd_s, seen_s
    since_ms = int(min(s.t_send for s in samples) * 1000) - 1
    partial, changelog = await first_stamps(settings, channels, since_ms)
    for s in samples:
        s.partial_s, s.changelog_s = partial.get(s.channel), changelog.get(s.channel)
    tick_sum = metric_sum(text1, "adpulse_snapshot_seconds_sum")
    tick_n = int(metric_sum(text1, "adpulse_snapshot_seconds_count"))
    wall = t_end - t_start
    return (events1 - events0) / wall, (cpu1 - cpu0) / wall, (tick_sum / tick_n if tick_n else None), tick_n


async def fetch_probe(settings: Settings, wait_ms: int, n: int, seed: int) -> list[float]:
    """Seconds from a produce's ack to a waiting consumer's receipt, on an otherwise idle partition."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench-fetch-probe-{wait_ms}"  # a topic of its own: nothing in the worker reads it
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=wait_ms
    )
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(), acks="all", enable_idempotence=False, linger_ms=0
    )
    await consumer.start()
    await producer.start()
    got: dict[int, float] = {}
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)

        async def read() -> None:
            while len(got) < n:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        got[int(record.value)] = time.time()

        reader = asyncio.create_task(read())
        await asyncio.sleep(2.0)
        rng = random.Random(seed)
        acked: dict[int, float] = {}
        for i in range(n):
            await asyncio.sleep(rng.uniform(0.3, 1.7))
            await producer.send_and_wait(topic, str(i).encode(), key=b"probe", partition=0)
            acked[i] = time.time()
        await asyncio.wait_for(reader, 10)
    finally:
        await producer.stop()
        await consumer.stop()
    return [got[i] - acked[i] for i in range(n)]


def is_budget_warning(alert: dict) -> bool:
    return (
        alert.get("kind") == "budget"
        and alert.get("metric") == "spend"
        and alert.get("status") == "firing"
        and alert.get("change") != "repeat"
        and str(alert.get("channel", "")).startswith("bench")
    )


def is_window_alert(alert: dict) -> bool:
    return (
        alert.get("kind") == "threshold"
        and alert.get("metric") == "ctr"
        and alert.get("status") == "firing"
        and alert.get("window") == "1m"
        and alert.get("change") != "repeat"
        and str(alert.get("channel", "")).startswith("win")
    )


def one_run(
    args: argparse.Namespace,
    config: RunConfig,
    workdir: Path,
    started: Started,
    rate: int | None = None,
    load: float | None = None,
) -> RunResult:
    """A fresh embedded stack, one worker, live traffic (``rate`` records/s, default ``--rate``); the
    measurements; everything stopped again."""
    from adpulse.stack import EmbeddedStack

    traffic_rate = rate or args.rate
    kafka_port, redis_port, worker_port = free_ports(3)
    run_dir = workdir / (
        f"tick{config.tick_s:g}-flush{config.flush_s:g}"
        + (f"-fetchwait{config.fetch_wait_ms}" if config.fetch_wait_ms else "")
        + (f"-rate{traffic_rate}" if load is not None else "")
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if args.window_minutes:
        extra["rules_file"] = rules_file(run_dir / "rules.yaml", window_channels(args))
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        web_port=worker_port,
        home=run_dir / "home",
        partitions=args.partitions,
        tick_s=config.tick_s,
        flush_interval_s=config.flush_s,
        **({"fetch_wait_ms": config.fetch_wait_ms} if config.fetch_wait_ms else {}),
        **extra,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADPULSE_")}
    env.update(settings.to_env())
    env.update(broker_env(args.broker))
    env["ADPULSE_ENV_FILE"] = str(run_dir / "no.env")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    shown = {
        k: env[k]
        for k in (
            "ADPULSE_TICK_S",
            "ADPULSE_FLUSH_INTERVAL_S",
            "ADPULSE_FETCH_WAIT_MS",
            "ADPULSE_GRACE_S",
            "ADPULSE_PARTITIONS",
            "ADPULSE_BLOCK_RECORDS",
            "ADPULSE_IDLE_PARTITION_S",
            "ADPULSE_CHANGELOG_BATCH_BYTES",
        )
    }
    embedded = EmbeddedStack(settings, broker=args.broker)
    status = embedded.up(timeout_s=120.0 if args.broker == "kafka" else 30.0)
    try:
        print(
            f"[{config.label}] broker {redacted_url(settings.kafka_bootstrap)} (pid {status.broker.pid}), "
            f"redis {redacted_url(settings.redis_url)}, work dir {run_dir}"
        )
        probes: dict[int, list[float]] = {}
        for wait_ms in args.probe_wait_ms if args.fetch_probe else ():
            probes[wait_ms] = asyncio.run(fetch_probe(settings, wait_ms, args.fetch_probe, args.seed))
            p = stats(probes[wait_ms])
            print(
                f"[{config.label}] fetch probe, fetch_max_wait_ms={wait_ms}: produce ack → consumer has it "
                f"p50 {ms(p['p50'])} p95 {ms(p['p95'])} max {ms(p['max'])}"
            )
        spawned = time.monotonic()
        worker = started.add(
            subprocess.Popen(
                [sys.executable, "-m", "adpulse", "worker"],
                cwd=run_dir,
                env=env,
                stdout=(run_dir / "worker.log").open("wb"),
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        while worker_metrics(worker_port) is None:
            if worker.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with {worker.returncode}; see {run_dir / 'worker.log'}"
                )
            if time.monotonic() - spawned > 120:
                raise RuntimeError(
                    f"the worker's /metrics did not answer in 120 s; see {run_dir / 'worker.log'}"
                )
            time.sleep(0.2)
        traffic = started.add(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "adpulse",
                    "simulate",
                    "--rate",
                    str(traffic_rate),
                    "--flat",
                    "--seed",
                    str(args.seed),
                ],
                cwd=run_dir,
                env=env,
                stdout=(run_dir / "simulate.log").open("wb"),
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        # The worker is useful once it has joined its groups and counts the live traffic.
        while metric_sum(worker_metrics(worker_port), "adpulse_events_total") <= 0:
            for proc, name in ((worker, "worker"), (traffic, "simulate")):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {run_dir}/{name}.log")
            if time.monotonic() - spawned > 180:
                raise RuntimeError(f"the worker counted no events in 180 s; see {run_dir / 'worker.log'}")
            time.sleep(0.2)
        startup_s = time.monotonic() - spawned
        print(f"[{config.label}] worker counting after {startup_s:.1f} s; setting {args.channels} budgets")
        samples: list[BudgetSample] = []
        windows: list[WindowSample] = []
        lags: list[float] = []
        rate, cores, tick_mean, tick_n = asyncio.run(
            measure(args, config, settings, worker_port, worker.pid, samples, windows, lags)
        )
        problems = []
        for proc, name in ((worker, "worker"), (traffic, "simulate")):
            if proc.poll() is not None:
                problems.append(f"{name} exited early with {proc.returncode}")
        started.stop(traffic, signal.SIGTERM)
        started.stop(worker, signal.SIGTERM)
        sent = simulate_sent(run_dir / "simulate.log")
        missing = [s.channel for s in samples if s.xadd_s is None] + [
            w.channel for w in windows if w.xadd_s is None
        ]
        if missing:
            problems.append(f"no alert within the timeout for {', '.join(missing)}")
        return RunResult(
            config,
            shown,
            samples,
            windows,
            rate,
            cores,
            lags,
            tick_mean,
            tick_n,
            startup_s,
            problems,
            probes,
            rate_asked=traffic_rate,
            rate_sent=sent,
            load=load,
        )
    finally:
        for proc in list(started.procs):
            started.stop(proc)
        embedded.down(components=status.started)


# --------------------------------------------------------------------------------------------- report


def simulate_sent(log: Path) -> float | None:
    """Records per second ``adpulse simulate`` says it sent (its summary line), or None."""
    found = re.search(
        r"sent (\d+) records in ([\d.]+)s", log.read_text(errors="replace") if log.exists() else ""
    )
    return int(found[1]) / float(found[2]) if found and float(found[2]) > 0 else None


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values, default=float("nan")),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": max(values, default=float("nan")),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:,.0f} ms"


def components(r: RunResult) -> list[tuple[str, dict[str, float]]]:
    full = [s for s in r.budget if None not in (s.xadd_s, s.partial_s, s.changelog_s)]
    return [
        ("ack: send → broker ack (t0; not in the latency)", stats([s.t_ack - s.t_send for s in r.budget])),
        (
            "fold stage: t0 → partial produced (fetch, fold, wait for the flush)",
            stats([s.partial_s - s.t_ack for s in full]),
        ),
        (
            "Faust agent: partial produced → bucket changelog record (partials topic, Faust fetch, merge)",
            stats([s.changelog_s - s.partial_s for s in full]),
        ),
        (
            "tick: merged → alert XADD (wait for the snapshot tick, snapshot, judge, publish)",
            stats([s.xadd_s - s.changelog_s for s in full]),
        ),
        ("total: t0 → alert XADD", stats([s.latency for s in full])),
        ("reader: XADD → XREAD BLOCK returned", stats([s.seen_s - s.xadd_s for s in r.budget if s.seen_s])),
    ]


def print_run(r: RunResult) -> None:
    b = stats(r.budget_latencies())
    print(
        f"[{r.config.label}] budget 80 % warning: n={b['n']} p50 {ms(b['p50'])} p95 {ms(b['p95'])} "
        f"max {ms(b['max'])} (min {ms(b['min'])}, mean {ms(b['mean'])})"
    )
    for name, s in components(r):
        print(f"    {name}: p50 {ms(s['p50'])} p95 {ms(s['p95'])} max {ms(s['max'])}")
    if r.window:
        w = stats(r.window_latencies())
        print(
            f"[{r.config.label}] 1-minute window close: n={w['n']} p50 {ms(w['p50'])} p95 {ms(w['p95'])} "
            f"max {ms(w['max'])}"
        )
    lag = stats(r.event_time_lag_s)
    print(
        f"    traffic {r.traffic_events_per_s:,.0f} events/s, worker CPU {r.worker_cpu_cores:.2f} cores, "
        f"event-time lag p50 {lag['p50']:.2f} s max {lag['max']:.2f} s, mean tick "
        f"{ms(r.tick_mean_s or float('nan'))}" + (f"; PROBLEMS: {r.problems}" if r.problems else "")
    )


def markdown(runs: list[RunResult], info: dict[str, str], command: str, args: argparse.Namespace) -> str:
    lines = [
        *section_head(
            markers(args.broker)[0],
            "Alert latency" + (" on Apache Kafka" if args.broker == "kafka" else ""),
            command,
            info,
        ),
        (
            f"Per run: a fresh stack ({BROKER_NAMES[args.broker]} + valkey on loopback), ONE "
            "`python -m adpulse worker`, "
            f"and live background traffic from `python -m adpulse simulate --rate {args.rate} --flat` (10 "
            f"channels, in its own process). {args.channels} day budgets of {args.amount:g} (`bench00`…) "
            "are set with `adpulse.budget_cli.produce_setting`; once the worker judges all of them "
            f"(`adpulse_budget_used_ratio`) and after {args.warmup:g} s more, one spend event of "
            f"{args.amount * args.share:g} ({args.share:.0%}) per channel goes to `adpulse.spend` with "
            f"`send_and_wait` (acks=all), a random {args.spacing_min:g}–{args.spacing_max:g} s apart. "
            "**Latency = the Redis server time of the `adpulse:alerts` stream entry (XADD id) of that "
            "channel's 80 % warning (`kind` budget, `metric` spend, `status` firing) − t0, the wall time "
            "the broker acked the spend event.** Same machine, same clock. Percentiles interpolate linearly "
            "between ranks."
        ),
        "",
        "| settings | budget alerts | p50 | p95 | max | min | target p95 ≤ 1 s | traffic (events/s) | "
        "worker CPU (cores) | mean tick (snapshot + judge) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b = stats(r.budget_latencies())
        lines.append(
            f"| `ADPULSE_TICK_S={r.settings['ADPULSE_TICK_S']}` "
            f"`ADPULSE_FLUSH_INTERVAL_S={r.settings['ADPULSE_FLUSH_INTERVAL_S']}` "
            f"`ADPULSE_FETCH_WAIT_MS={r.settings['ADPULSE_FETCH_WAIT_MS']}`"
            + f" | {b['n']} of {len(r.budget)} | {ms(b['p50'])} | "
            f"**{ms(b['p95'])}** | {ms(b['max'])} | {ms(b['min'])} | "
            f"{'met' if b['p95'] <= TARGET_P95_S else 'missed'} | {r.traffic_events_per_s:,.0f} | "
            f"{r.worker_cpu_cores:.2f} | {ms(r.tick_mean_s or float('nan'))} |"
        )
    lines += [
        "",
        "Other settings as defaulted: "
        + ", ".join(
            f"`{k}={v}`"
            for k, v in runs[0].settings.items()
            if k not in ("ADPULSE_TICK_S", "ADPULSE_FLUSH_INTERVAL_S", "ADPULSE_FETCH_WAIT_MS")
        )
        + ".",
        "",
        (
            "Where the time goes (per event, from the timestamps the pipeline leaves behind: the CreateTime "
            "of the channel's first record on `adpulse.partials`, and of its first record on the `buckets` "
            "table's changelog, written by Faust when the agent stores the merged bucket):"
        ),
        "",
    ]
    for r in runs:
        lines += [f"*{r.config.label}*", "", "| stage | p50 | p95 | max |", "|---|---|---|---|"]
        for name, s in components(r):
            lines.append(f"| {name} | {ms(s['p50'])} | {ms(s['p95'])} | {ms(s['max'])} |")
        lines.append("")
    if any(r.window for r in runs):
        lines += [
            "### Window-close evidence",
            "",
            (
                "Same runs: a rules file with the seed targets plus one rule firing on every closed "
                "1-minute window of channels `win00`… (CTR below 200 %, ≥ 1 impression); each minute, at "
                f"+{args.window_offset:g} s, 5 impressions of {args.window_per_minute} new such channels. "
                "The evidence is complete when the window's end + `ADPULSE_GRACE_S` has passed on the wall "
                "clock; latency = XADD time of the threshold alert − that. Alerts of the same minute land "
                "in the same tick, so the independent samples are the minutes."
            ),
            "",
            "| settings | window alerts | p50 | p95 | max | min | event-time lag of the worker (p50 / max) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            if not r.window:
                continue
            w = stats(r.window_latencies())
            lag = stats(r.event_time_lag_s)
            lines.append(
                f"| {r.config.label} | {w['n']} of {len(r.window)} | {ms(w['p50'])} | {ms(w['p95'])} | "
                f"{ms(w['max'])} | {ms(w['min'])} | {lag['p50']:.2f} s / {lag['max']:.2f} s |"
            )
        lines.append("")
    probed = [r for r in runs if r.fetch_probe]
    if probed:
        lines += [
            "### Fetch wake-up of " + ("the embedded broker" if args.broker == "tansu" else "Kafka"),
            "",
            (
                "Before the first worker started, on the same (idle) broker: single records produced "
                "(acks=all) to a 1-partition topic of its own, a random 0.3–1.7 s apart, read by a bare "
                "`AIOKafkaConsumer` (`fetch_min_bytes=1`) that is always waiting in a fetch; time from the "
                "produce's ack to the record in the consumer. On Kafka a waiting fetch returns as soon as a "
                "record arrives."
            ),
            "",
            "| consumer `fetch_max_wait_ms` | records | p50 | p95 | max |",
            "|---|---|---|---|---|",
        ]
        for wait_ms, values in probed[0].fetch_probe.items():
            p = stats(values)
            who = {
                1500: " (Faust's consumer, hard-coded)",
                500: " (aiokafka default: the fold stage, budget feed)",
            }
            lines.append(
                f"| {wait_ms}{who.get(wait_ms, '')} | {p['n']} | {ms(p['p50'])} | {ms(p['p95'])} | "
                f"{ms(p['max'])} |"
            )
        lines.append("")
    problems = [f"{r.config.label}: {p}" for r in runs for p in r.problems]
    if problems:
        lines += ["Problems: " + "; ".join(problems) + ".", ""]
    lines.append(markers(args.broker)[1])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the latency from complete evidence (a budget-crossing spend event; optionally a "
        "closed 1-minute window) to the alert in Redis, with one adpulse worker on an embedded stack.",
        epilog="Example: python benchmarks/alert_latency.py --channels 40 --window-minutes 4",
    )
    parser.add_argument(
        "--run",
        dest="runs",
        type=parse_config,
        action="append",
        metavar="TICK_S:FLUSH_S[:FETCH_WAIT_MS]",
        help="worker settings of a run (repeatable; default 0.5:0.25, the defaults); a third field "
        "is ADPULSE_FETCH_WAIT_MS (default: the setting's default)",
    )
    parser.add_argument(
        "--fallback",
        type=parse_config,
        default=RunConfig(0.25, 0.1),
        metavar="TICK_S:FLUSH_S",
        help="extra run when a run's budget p95 exceeds 1 s (default 0.25:0.1)",
    )
    parser.add_argument("--no-fallback", action="store_true", help="never add the fallback run")
    parser.add_argument("--channels", type=int, default=40, help="budget channels bench00.. (default 40)")
    parser.add_argument("--amount", type=float, default=1000.0, help="day budget per channel (default 1000)")
    parser.add_argument(
        "--share",
        type=float,
        default=0.85,
        help="spend event cost as a share of the budget (default 0.85: past 80 %%, below 100 %%)",
    )
    parser.add_argument(
        "--spacing-min", type=float, default=1.0, help="seconds between spend events, lower bound"
    )
    parser.add_argument(
        "--spacing-max", type=float, default=2.0, help="seconds between spend events, upper bound"
    )
    parser.add_argument("--rate", type=int, default=500, help="background traffic, records/s (default 500)")
    parser.add_argument(
        "--partitions", type=int, default=4, help="partitions of the adpulse topics (default 4)"
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds after the budgets are judged (default 5)"
    )
    parser.add_argument(
        "--window-minutes",
        type=int,
        default=4,
        help="minutes with window-close probes (0 = skip that measurement; default 4)",
    )
    parser.add_argument(
        "--window-per-minute", type=int, default=2, help="new win channels per minute (default 2)"
    )
    parser.add_argument(
        "--window-offset",
        type=float,
        default=20.0,
        help="second of the minute the window probes are sent at (default 20)",
    )
    parser.add_argument(
        "--alert-timeout",
        type=float,
        default=20.0,
        help="seconds to wait for an alert after its evidence is complete (default 20)",
    )
    parser.add_argument(
        "--fetch-probe",
        type=int,
        default=20,
        help="before the first run's worker starts: time N single records from produce ack to a "
        "waiting consumer on the idle broker, per --probe-wait-ms (0 = skip; default 20)",
    )
    parser.add_argument(
        "--probe-wait-ms",
        type=int,
        nargs="+",
        default=[1500, 500],
        help="fetch_max_wait_ms values of the probe (default 1500 = Faust's, 500 = aiokafka's)",
    )
    parser.add_argument(
        "--load",
        dest="loads",
        type=float,
        action="append",
        metavar="FRACTION",
        help="instead of the plain runs: background traffic at this fraction of the sustained one-worker "
        "throughput (repeatable, e.g. --load 0.1 --load 0.5 --load 0.9); writes its own section",
    )
    parser.add_argument(
        "--sustained",
        type=float,
        help="the sustained one-worker throughput (events/s) the loads are fractions of; default: measured "
        "first, as throughput.py does, on --sustained-events preloaded records",
    )
    parser.add_argument(
        "--sustained-events",
        type=int,
        default=300_000,
        help="records of the sustained-throughput measurement (default 300000)",
    )
    parser.add_argument("--seed", type=int, default=11, help="seed of the spacing and of the traffic")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "BENCHMARKS.md",
        help="markdown file whose alert-latency section is rewritten (default BENCHMARKS.md)",
    )
    parser.add_argument(
        "--broker",
        choices=tuple(BROKER_NAMES),
        default="tansu",
        help="broker to start: the embedded Tansu (default) or Apache Kafka (needs Java 17 and Maven)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave the markdown file alone")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs in the temp dir")
    args = parser.parse_args(argv)
    args.runs = args.runs or [RunConfig(0.5, 0.25)]
    if args.loads and not all(0 < load <= 2 for load in args.loads):
        parser.error("--load takes fractions in (0, 2]")
    if args.channels < 1 or not 0.8 < args.share < 1.0 or args.spacing_min > args.spacing_max:
        parser.error("--channels ≥ 1, 0.8 < --share < 1, --spacing-min ≤ --spacing-max")
    return args


@dataclass
class Sustained:
    """The one-worker throughput the background loads are fractions of."""

    events_per_s: float
    #: How it was had: measured in this run (throughput.py's method) or given with --sustained.
    measured: bool
    events: int = 0
    exact: bool = True
    ceiling_per_s: float | None = None


def measure_sustained(args: argparse.Namespace, workdir: Path, started: Started) -> Sustained:
    """One worker's events/s on preloaded records, as ``throughput.py`` measures it, on a stack of its own."""
    import throughput
    from workload import generate

    options = argparse.Namespace(
        bootstrap=None,
        redis_url=None,
        broker_pid=None,
        broker=args.broker,
        partitions=args.partitions,
        timeout=600.0,
        poll=0.1,
    )
    records, expected = generate(args.sustained_events, int(time.time() * 1000), seed=args.seed)
    with throughput.stack(options, workdir / "sustained", started) as st:
        prefix = f"bench-{uuid.uuid4().hex[:6]}."
        asyncio.run(throughput.create_topics(st.bootstrap, prefix, args.partitions))
        asyncio.run(throughput.preload(st.bootstrap, prefix, records, args.partitions))
        ceiling = throughput.run_ceiling(st, prefix, len(records), 600.0)
        run = throughput.run_worker(
            options, st, started, prefix, workdir, expected, len(records), "sustained-" + prefix[6:12]
        )
    print(
        f"sustained: one worker {run.events_per_s:,.0f} events/s on {len(records):,} preloaded records "
        f"(ceiling {ceiling['events_per_s']:,.0f}), exact={run.exact}"
    )
    return Sustained(run.events_per_s, True, len(records), run.exact, ceiling["events_per_s"])


def load_markers(broker: str) -> tuple[str, str]:
    """The markers of the section the --load runs write (one per broker), beside the plain section."""
    return section_markers("alert_latency.py", broker, "--load")


def load_markdown(
    runs: list[RunResult], info: dict[str, str], command: str, args: argparse.Namespace, sustained: Sustained
) -> str:
    """The section of the runs under a background load at fractions of the sustained throughput."""
    how = (
        f"measured first in this run as `benchmarks/throughput.py` does (one worker on {sustained.events:,} "
        f"preloaded records, a stack of its own, exact: {'yes' if sustained.exact else 'NO'}; the raw "
        f"ceiling {sustained.ceiling_per_s or float('nan'):,.0f} events/s)"
        if sustained.measured
        else "given with `--sustained`"
    )
    lines = [
        *section_head(
            load_markers(args.broker)[0],
            "Alert latency under load" + (" on Apache Kafka" if args.broker == "kafka" else ""),
            command,
            info,
        ),
        f"Sustained one-worker throughput: **{sustained.events_per_s:,.0f} events/s**, {how}. Each run is "
        "the budget-crossing measurement of the section above (fresh stack, one worker, "
        f"{args.channels} budgets, one spend event of {args.share:.0%} per channel {args.spacing_min:g}–"
        f"{args.spacing_max:g} s apart; latency = XADD time of the 80 % warning − broker ack of the spend "
        "event) with the background traffic of `adpulse simulate --flat` (6 channels, in its own process) "
        "at the given fraction of that throughput. Percentiles interpolate linearly between ranks; with "
        f"{args.channels} alerts a run's p99 is close to its maximum.",
        "",
        "| load | traffic asked (records/s) | simulate sent (records/s) | worker counted (events/s) | worker "
        "CPU (cores) | event-time lag p50 / max | budget alerts | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b = stats(r.budget_latencies())
        lag = stats(r.event_time_lag_s)
        lines.append(
            f"| {r.load or 0:.0%} ({r.config.label}) | {r.rate_asked:,} | "
            + ("n/a" if r.rate_sent is None else f"{r.rate_sent:,.0f}")
            + f" | {r.traffic_events_per_s:,.0f} | {r.worker_cpu_cores:.2f} | {lag['p50']:.1f} s / "
            f"{lag['max']:.1f} s | {b['n']} of {len(r.budget)} | {ms(b['p50'])} | **{ms(b['p95'])}** | "
            f"{ms(b['p99'])} | {ms(b['max'])} |"
        )
    at_half = [r for r in runs if r.load is not None and abs(r.load - 0.5) < 1e-9]
    if at_half:
        p95 = percentile(at_half[0].budget_latencies(), 0.95)
        verdict = "met" if p95 <= TARGET_P95_S else f"missed by {ms(p95 - TARGET_P95_S)}"
        lines += ["", f"Target p95 ≤ 1 s at 50 % of the sustained throughput: **{verdict}** ({ms(p95)})."]
    problems = [f"{r.load or 0:.0%}: {p}" for r in runs for p in r.problems]
    if problems:
        lines += ["", "Problems: " + "; ".join(problems) + "."]
    lines.append(load_markers(args.broker)[1])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command, info = command_and_machine("alert_latency.py", argv)
    workdir = Path(tempfile.mkdtemp(prefix="adpulse-latency-"))
    started = Started()
    runs: list[RunResult] = []
    sustained: Sustained | None = None
    try:
        if args.loads:
            sustained = (
                Sustained(args.sustained, False)
                if args.sustained
                else measure_sustained(args, workdir, started)
            )
            args.fetch_probe = 0  # measured by the plain runs; the load does not change the broker's wake-up
            for load in args.loads:
                for config in args.runs:
                    rate = max(1, round(load * sustained.events_per_s))
                    print(f"[{config.label}] load {load:.0%}: {rate:,} records/s of background traffic")
                    result = one_run(args, config, workdir, started, rate=rate, load=load)
                    runs.append(result)
                    print_run(result)
        plan = [] if args.loads else list(args.runs)
        while plan:
            config = plan.pop(0)
            result = one_run(args, config, workdir, started)
            args.fetch_probe = 0  # the broker's fetch behaviour does not depend on the worker's settings
            runs.append(result)
            print_run(result)
            p95 = percentile(result.budget_latencies(), 0.95)
            if (
                not args.no_fallback
                and not plan
                and p95 > TARGET_P95_S
                and all(
                    (c.tick_s, c.flush_s) != (args.fallback.tick_s, args.fallback.flush_s)
                    for c in [r.config for r in runs]
                )
            ):
                print(f"p95 {ms(p95)} > 1 s: adding a run with {args.fallback.label}")
                plan.append(args.fallback)
    finally:
        started.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work dir kept: {workdir}")
    if not args.no_write and runs:
        if sustained is not None:
            text = load_markdown(runs, info, command, args, sustained)
            write_markdown(args.output, text, *load_markers(args.broker))
        else:
            write_markdown(args.output, markdown(runs, info, command, args), *markers(args.broker))
        print(f"wrote {args.output}")
    elif sustained is not None and runs:
        print(load_markdown(runs, info, command, args, sustained))
    return 0 if runs and all(not r.problems for r in runs) and (sustained is None or sustained.exact) else 1


if __name__ == "__main__":
    sys.exit(main())
