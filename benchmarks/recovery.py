"""Recovery of a worker after ``kill -9``: from the kill to processing again, with a large bucket table.

Setup (not timed): fresh topics are preloaded with records of ``--channels`` channels whose event times
run over enough minutes that the table holds about ``--rows`` buckets (keys: channel × window × start; a
1-minute bucket for nearly every channel-minute, plus the hours, days and all-time totals), and ONE worker
folds them all. The run goes on once the worker counted every record, every channel's all-time KPI row in
Redis equals what the records must produce, and the table's changelog has stopped growing; the changelog
is then read to count its records and the keys it holds (what a restart recovers).

Each kill: the worker is killed with SIGKILL and started again after ``--down-s`` (as a supervisor would);
from the kill on, a probe channel of its own gets one impression every ``--probe-interval`` s. Times from
the kill: the new process's /metrics answers; it counts events again; the first partial it publishes and
the first changelog record it writes after its start (its table is recovered and the agent merges); and
**the probe channel's all-time row in Redis** (the headline: the whole pipeline processes new events
again). After each kill the preloaded channels' totals must still be exact. Results go to stdout and to a
section of BENCHMARKS.md.

    python benchmarks/recovery.py --rows 1000000 --kills 2
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (
    KAFKA_CHANGELOG_BATCH_BYTES,
    Started,
    add_report_args,
    command_and_machine,
    free_port,
    publish,
    section_head,
    section_markers,
)
from procstat import status_kb
from throughput import (
    Stack,
    broker_name,
    create_topics,
    outcomes_counted,
    preload,
    redis_totals,
    stack,
    start_worker,
    totals_mismatch,
    worker_env,
)
from workload import Expected, Mix, generate, numbered_channels

from adpulse.settings import redacted_url
from streams.keys import Keys

TARGET_S = 30.0
#: Records of the workload that fold into buckets (the rest are malformed or duplicates).
VALID_SHARE = 0.98


def markers(broker: str) -> tuple[str, str]:
    """The generated section's markers: one section per broker."""
    return section_markers("recovery.py", broker)


def workload_size(rows: int, channels: int, per_minute: float) -> tuple[int, int]:
    """``(minutes, records)`` for about ``rows`` 1-minute buckets over ``channels`` channels, with
    ``per_minute`` records per channel-minute on average: a channel-minute gets at least one record with
    probability 1 − e^−per_minute (Poisson), so the span is stretched to make up for the empty ones."""
    if rows < 1 or channels < 1 or per_minute <= 0:
        raise ValueError("rows, channels and per_minute must be positive")
    covered = 1.0 - math.exp(-per_minute)
    minutes = math.ceil(rows / channels / covered)
    records = math.ceil(per_minute * channels * minutes / VALID_SHARE)
    return minutes, records


# --------------------------------------------------------------------------------------------- kafka


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> end offset of ``topic``."""
    from aiokafka import AIOKafkaConsumer

    from streams.metadata import topic_partitions

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions({"bootstrap_servers": bootstrap}, topic)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def changelog_census(bootstrap: str, topic: str) -> tuple[int, int, int]:
    """``(records, live keys, bytes of the live values)`` of a table's changelog, read from its start."""
    from aiokafka import AIOKafkaConsumer

    from streams.metadata import topic_partitions

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    live: dict[bytes, int] = {}
    records = 0
    try:
        tps = await topic_partitions({"bootstrap_servers": bootstrap}, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for batch in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                for record in batch:
                    records += 1
                    if record.key is None:
                        continue
                    if record.value is None:
                        live.pop(record.key, None)
                    else:
                        live[record.key] = len(record.value)
    finally:
        await consumer.stop()
    return records, len(live), sum(live.values())


async def first_after(bootstrap: str, topic: str, start: dict[int, int], since_s: float) -> float | None:
    """CreateTime (s) of the earliest record of ``topic`` after offsets ``start`` stamped at or after
    ``since_s``, or None."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    first: float | None = None
    try:
        tps = [TopicPartition(topic, p) for p in start]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for batch in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                for record in batch:
                    stamp = record.timestamp / 1000
                    if stamp >= since_s and (first is None or stamp < first):
                        first = stamp
    finally:
        await consumer.stop()
    return first


class Probe:
    """One impression of a channel of its own every ``interval_s``, from a thread, until stopped."""

    def __init__(self, bootstrap: str, topic: str, channel: str, interval_s: float) -> None:
        self.bootstrap, self.topic, self.channel, self.interval_s = bootstrap, topic, channel, interval_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)
        await producer.start()
        try:
            while not self._stop.is_set():
                event = {
                    "event_id": f"{self.channel}-{self.sent}",
                    "ts": int(time.time() * 1000),
                    "channel": self.channel,
                    "campaign": "probe",
                    "type": "impression",
                }
                await producer.send_and_wait(self.topic, orjson.dumps(event), key=self.channel.encode())
                self.sent += 1
                await asyncio.sleep(self.interval_s)
        finally:
            await producer.stop()


# --------------------------------------------------------------------------------------------- one kill


def log_milestones(text: str, app_id: str) -> dict[str, float]:
    """When (epoch s) the worker's log first says that its Faust consumer group synced, that its table was
    recovered from the changelog, and that the fold stage's group synced (the log stamps local time)."""
    patterns = {
        "faust_synced": re.compile(rf"Successfully synced group {re.escape(app_id)} with"),
        "recovered": re.compile(r"\[\^---Recovery\]: Recovery complete"),
        "fold_synced": re.compile(rf"Successfully synced group {re.escape(app_id)}-fold with"),
    }
    found: dict[str, float] = {}
    for line in text.splitlines():
        stamp = STAMP.match(line)
        if stamp is None:
            continue
        for name, pattern in patterns.items():
            if name not in found and pattern.search(line):
                found[name] = time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) + int(stamp[2]) / 1000
    return found


STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]")


@dataclass
class Kill:
    """Seconds from the kill to each sign of life of the restarted worker (None: not seen)."""

    index: int
    down_s: float
    metrics_s: float | None = None
    faust_synced_s: float | None = None
    recovered_s: float | None = None
    fold_synced_s: float | None = None
    counting_s: float | None = None
    partial_s: float | None = None
    changelog_s: float | None = None
    redis_s: float | None = None
    exact_after: bool = False
    problems: list[str] = field(default_factory=list)


def counted(port: int) -> float | None:
    """Events the worker on ``port`` counted, or None while its /metrics does not answer."""
    got = outcomes_counted(port)
    return None if got is None else sum(got.values())


def wait_loaded(
    proc: subprocess.Popen[bytes],
    port: int,
    n: int,
    st: Stack,
    redis_prefix: str,
    expected: Expected,
    args: argparse.Namespace,
    changelog: str,
) -> float:
    """Wait until the worker counted ``n`` events, Redis holds the exact totals and the changelog stopped
    growing; return the seconds it took."""
    began = time.perf_counter()
    deadline = began + args.timeout
    last_print = 0.0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} while folding the preload")
        seen = counted(port) or 0.0
        if seen >= n and not exact_problems(st, redis_prefix, expected):
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the worker counted {seen:.0f} of {n} events in {args.timeout:.0f} s")
        if time.perf_counter() - last_print > 10:
            last_print = time.perf_counter()
            print(f"  folded {seen:,.0f} of {n:,} records ({last_print - began:.0f} s)")
        time.sleep(1.0)
    ends = asyncio.run(end_offsets(st.bootstrap, changelog))
    while True:
        time.sleep(3.0)
        now = asyncio.run(end_offsets(st.bootstrap, changelog))
        if now == ends:
            return time.perf_counter() - began
        ends = now


def exact_problems(st: Stack, redis_prefix: str, expected: Expected) -> list[str]:
    """Differences between the preloaded channels' all-time rows in Redis and what they must be."""
    got = {k: v for k, v in redis_totals(st.redis_url, redis_prefix).items() if k in expected.totals}
    return totals_mismatch(expected, got)


def kill_once(
    index: int,
    args: argparse.Namespace,
    st: Stack,
    started: Started,
    proc: subprocess.Popen[bytes],
    env: dict[str, str],
    run_dir: Path,
    port: int,
    topics: tuple[str, str, str],
    expected: Expected,
    redis_prefix: str,
) -> tuple[Kill, subprocess.Popen[bytes]]:
    """Kill the worker, start it again, time its recovery; returns the new process."""
    import redis

    clicks, partials, changelog = topics
    marks = {t: asyncio.run(end_offsets(st.bootstrap, t)) for t in (partials, changelog)}
    client = redis.Redis.from_url(st.redis_url)
    probe_field = f"probe{index}|-|total|total"
    result = Kill(index, args.down_s)
    try:
        t_kill = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        started.procs.remove(proc)
        log_path = run_dir / "worker.log"
        log_from = log_path.stat().st_size
        with Probe(st.bootstrap, clicks, f"probe{index}", args.probe_interval):
            time.sleep(args.down_s)
            proc = start_worker(started, env, run_dir, "worker")
            t_start = time.time()
            deadline = time.monotonic() + args.timeout
            while result.redis_s is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"the restarted worker exited with {proc.returncode}; see {run_dir}")
                if time.monotonic() > deadline:
                    result.problems.append(f"no probe row in Redis {args.timeout:.0f} s after the kill")
                    break
                now = time.time()
                seen = counted(port)
                if seen is not None and result.metrics_s is None:
                    result.metrics_s = now - t_kill
                if seen and result.counting_s is None:
                    result.counting_s = now - t_kill
                if client.hexists(Keys(redis_prefix).kpis, probe_field):
                    result.redis_s = time.time() - t_kill
                time.sleep(0.05)
        partial = asyncio.run(first_after(st.bootstrap, partials, marks[partials], t_start))
        merged = asyncio.run(first_after(st.bootstrap, changelog, marks[changelog], t_start))
        with log_path.open("rb") as log:
            log.seek(log_from)
            stamps = log_milestones(log.read().decode(errors="replace"), env["ADPULSE_APP_ID"])
        result.faust_synced_s, result.recovered_s, result.fold_synced_s = (
            stamps[name] - t_kill if name in stamps else None
            for name in ("faust_synced", "recovered", "fold_synced")
        )
        result.partial_s = None if partial is None else partial - t_kill
        result.changelog_s = None if merged is None else merged - t_kill
        settle = time.monotonic() + 120
        while True:
            problems = exact_problems(st, redis_prefix, expected)
            if not problems or time.monotonic() > settle:
                break
            time.sleep(1.0)
        result.exact_after = not problems
        result.problems += problems[:5]
    finally:
        client.close()
    return result, proc


# --------------------------------------------------------------------------------------------- report


def secs(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.1f} s"


def median(values: list[float | None]) -> float | None:
    seen = [v for v in values if v is not None]
    return statistics.median(seen) if seen else None


def markdown(
    kills: list[Kill],
    info: dict[str, str],
    command: str,
    args: argparse.Namespace,
    setup: dict[str, float],
    expected: Expected,
) -> str:
    headline = median([k.redis_s for k in kills])
    met = headline is not None and headline <= TARGET_S and all(k.exact_after for k in kills)
    lines = [
        *section_head(markers(args.broker)[0], "Recovery after kill -9", command, info),
        f"Setup (not timed): {setup['records']:,.0f} records preloaded into fresh topics ({args.partitions} "
        f"partitions each) on {broker_name(args.broker)}: {args.channels:,} channels × 5 campaigns, event "
        f"times over the last {setup['minutes'] / 60:,.1f} hours "
        f"(`ADPULSE_RETENTION_1M_S={setup['retention_1m_s']:.0f}` so that the 1-minute buckets of the whole "
        f"span are kept, `ADPULSE_ALERT_LOOKBACK_S={args.lookback_s:g}` so that the history is not judged); "
        f"{expected.outcomes['accepted']:,} valid. ONE worker folded them in {setup['load_s']:.0f} s. "
        f"**The bucket table then held {setup['keys']:,.0f} keys ({setup['bytes'] / 2**20:,.0f} MiB of "
        f"values), from {setup['changelog']:,.0f} changelog records** (what a restart reads back; this "
        f"script's bare consumer read them at {setup['read_per_s']:,.0f} records/s); worker peak RSS "
        f"{setup['rss_mb']:.0f} MiB. "
        + (
            "The worker is a new member of its consumer group at each start (`--dynamic-member`)"
            if args.dynamic_member
            else "The worker is a static member of its Faust consumer group (`ADPULSE_INSTANCE_ID`, the same "
            "name at each start)"
        )
        + (
            f"; `ADPULSE_CHANGELOG_BATCH_BYTES={args.changelog_batch_bytes}`."
            if args.broker == "kafka"
            else "; `ADPULSE_CHANGELOG_BATCH_BYTES=1` (Tansu)."
        ),
        "",
        "| kill | down | /metrics answers | Faust group synced | table recovered | fold group synced | "
        "counting again | first partial published | first changelog record | **probe row in Redis** | "
        "preloaded totals exact after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in kills:
        lines.append(
            f"| {k.index} | {k.down_s:g} s | {secs(k.metrics_s)} | {secs(k.faust_synced_s)} | "
            f"{secs(k.recovered_s)} | {secs(k.fold_synced_s)} | {secs(k.counting_s)} | "
            f"{secs(k.partial_s)} | {secs(k.changelog_s)} | **{secs(k.redis_s)}** | "
            f"{'yes' if k.exact_after else 'NO'} |"
        )
    lines += [
        "",
        f"**Recovery (kill → new events in Redis), median: {secs(headline)}**; target ≤ {TARGET_S:.0f} s — "
        f"**{'met' if met else 'missed'}**"
        + ("" if met or headline is None else f" by {headline - TARGET_S:.1f} s")
        + ".",
        "",
        "How it is measured: every time is from the `kill -9` (SIGKILL) of the worker; the same worker "
        f"command starts again after the down time. From the kill on, a probe channel gets one impression "
        f"every {args.probe_interval:g} s (`send_and_wait`, acks=all). */metrics answers* and *counting "
        "again* are the first polls (every 50 ms) where the new process serves /metrics and counts events "
        "(the fold stage runs again). *Faust group synced*, *table recovered* and *fold group synced* are "
        "the first lines of the new process's log saying so (`Successfully synced group <app id>`, Faust's "
        "`Recovery complete`, `Successfully synced group <app id>-fold`): the fold stage joins its group "
        "as the worker starts, beside Faust's (before 8832b2e: once Faust was ready). *First partial* and "
        "*first changelog record* are the CreateTime of the first record on `adpulse.partials` and on the "
        "`buckets` table's changelog stamped after the new process started (Faust has read the changelog "
        "back and the agent merges). *Probe row in Redis*: the probe channel's all-time row appears in "
        "`<redis_prefix>:kpis`. *Exact after*: every preloaded channel's all-time row still equals its "
        "expected totals.",
        *(f"\nProblems in kill {k.index}: " + "; ".join(k.problems) + "." for k in kills if k.problems),
        markers(args.broker)[1],
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a worker's recovery from kill -9 to processing again, with a large bucket table.",
        epilog="Example: python benchmarks/recovery.py --rows 1000000 --kills 2",
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="bucket table keys to build (default 1000000)"
    )
    parser.add_argument("--channels", type=int, default=200, help="channels (default 200)")
    parser.add_argument(
        "--per-minute", type=float, default=3.0, help="records per channel-minute on average (default 3)"
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic (default 4)")
    parser.add_argument("--kills", type=int, default=2, help="kill -9 and restarts (default 2)")
    parser.add_argument("--down-s", type=float, default=0.0, help="seconds between kill and restart")
    parser.add_argument(
        "--probe-interval", type=float, default=0.1, help="seconds between probe events (default 0.1)"
    )
    parser.add_argument(
        "--lookback-s", type=float, default=300.0, help="ADPULSE_ALERT_LOOKBACK_S of the worker (default 300)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated workload")
    parser.add_argument(
        "--changelog-batch-bytes",
        type=int,
        default=KAFKA_CHANGELOG_BATCH_BYTES,
        help=f"ADPULSE_CHANGELOG_BATCH_BYTES of the worker on Kafka (default {KAFKA_CHANGELOG_BATCH_BYTES}; "
        "Tansu keeps 1)",
    )
    parser.add_argument(
        "--dynamic-member",
        action="store_true",
        help="run the worker without ADPULSE_INSTANCE_ID (a new member of its group after each restart); "
        "always on Tansu, where static membership is not supported (docs/operations.md)",
    )
    add_report_args(parser)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a step after this")
    parser.add_argument("--keep-workdir", action="store_true", help="keep worker logs in the temp dir")
    args = parser.parse_args(argv)
    args.dynamic_member = args.dynamic_member or args.broker == "tansu"
    if args.rows < 100 or args.channels < 1 or args.kills < 1:
        parser.error("--rows ≥ 100, --channels ≥ 1, --kills ≥ 1")
    # What throughput.stack and worker_env read.
    args.bootstrap = args.redis_url = args.broker_pid = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM stops the run like Ctrl-C: the processes it started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command, info = command_and_machine("recovery.py", argv)
    minutes, n = workload_size(args.rows, args.channels, args.per_minute)
    channels = numbered_channels(args.channels)
    began = time.perf_counter()
    records, expected = generate(
        n,
        int(time.time() * 1000),
        seed=args.seed,
        mix=Mix(span_s=minutes * 60.0),
        channels=channels,
        weights=[1.0] * len(channels),
    )
    print(f"generated {n:,} records over {minutes:,} minutes in {time.perf_counter() - began:.0f} s")
    workdir = Path(tempfile.mkdtemp(prefix="adpulse-recovery-"))
    started = Started()
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-{tag}."
    retention_1m_s = minutes * 60.0 + 86400.0
    kills: list[Kill] = []
    try:
        with stack(args, workdir, started) as st:
            print(
                f"broker {redacted_url(st.bootstrap)} (pid {st.broker_pid}), "
                f"redis {redacted_url(st.redis_url)}"
            )
            asyncio.run(create_topics(st.bootstrap, prefix, args.partitions))
            print(
                f"preloaded in {asyncio.run(preload(st.bootstrap, prefix, records, args.partitions)):.1f} s"
            )
            del records
            port = free_port()
            env = worker_env(args, st, prefix, tag, port, workdir)
            env.update(
                ADPULSE_RETENTION_1M_S=str(retention_1m_s), ADPULSE_ALERT_LOOKBACK_S=str(args.lookback_s)
            )
            if args.broker == "kafka":
                env["ADPULSE_CHANGELOG_BATCH_BYTES"] = str(args.changelog_batch_bytes)
            if not args.dynamic_member:
                # As a supervisor restarts it: under the same name, a static member of its group.
                env["ADPULSE_INSTANCE_ID"] = f"bench-{tag}-worker-1"
            run_dir = workdir / tag
            changelog = f"bench-{tag}-buckets-changelog"
            proc = start_worker(started, env, run_dir, "worker")
            load_s = wait_loaded(proc, port, n, st, f"bench-{tag}", expected, args, changelog)
            read_from = time.perf_counter()
            census = asyncio.run(changelog_census(st.bootstrap, changelog))
            read_s = time.perf_counter() - read_from
            setup = {
                "records": float(n),
                "minutes": float(minutes),
                "retention_1m_s": retention_1m_s,
                "load_s": load_s,
                "changelog": float(census[0]),
                "keys": float(census[1]),
                "bytes": float(census[2]),
                "rss_mb": (status_kb(proc.pid, "VmHWM") or 0) / 1024,
                "read_per_s": census[0] / read_s if read_s > 0 else float("nan"),
            }
            print(
                f"folded in {load_s:.0f} s: the table holds {census[1]:,} keys from {census[0]:,} changelog "
                f"records ({census[2] / 2**20:,.0f} MiB of values), read back at {census[0] / read_s:,.0f} "
                "records/s"
            )
            topics = (prefix + "clicks", prefix + "partials", changelog)
            for index in range(1, args.kills + 1):
                kill, proc = kill_once(
                    index, args, st, started, proc, env, run_dir, port, topics, expected, f"bench-{tag}"
                )
                kills.append(kill)
                print(
                    f"kill {index}: /metrics {secs(kill.metrics_s)}, "
                    f"Faust synced {secs(kill.faust_synced_s)}, recovered {secs(kill.recovered_s)}, "
                    f"fold synced {secs(kill.fold_synced_s)}, counting {secs(kill.counting_s)}, "
                    f"partial {secs(kill.partial_s)}, changelog {secs(kill.changelog_s)}, probe in Redis "
                    f"{secs(kill.redis_s)}, exact after: {kill.exact_after}"
                    + (f" {kill.problems}" if kill.problems else "")
                )
    finally:
        started.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work dir kept: {workdir}")
    publish(markdown(kills, info, command, args, setup, expected), args, markers(args.broker))
    return 0 if kills and all(k.exact_after and k.redis_s is not None for k in kills) else 1


if __name__ == "__main__":
    sys.exit(main())
