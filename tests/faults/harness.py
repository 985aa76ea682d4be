"""Running adpulse as a user would (workers, a router, a chat target) while faults happen, and judging what
came out against the ground truth: every window in Redis, every DLQ record, every alert the chat target got.

- ``fault_traffic``: tracker records with exact ground truth (unit counts, and spend costs that carry a one
  micro-unit mark, so that the events behind any counter can be counted back: lost and double-counted are in
  events, not in sums).
- ``Pipeline``: a stack's workers and routers, started and supervised as ``restart: unless-stopped`` does (a
  process that dies unasked is counted as a crash and started again), a webhook receiver, the threshold rule
  ``CTR below 10^300`` on 1-minute windows (so every channel and campaign with impressions fires exactly once,
  which makes the alerts expected exact), and ``settle()`` to wait for the end and judge it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from adpulse.settings import Settings
from adpulse.stack import free_port
from streams.topics import SOURCE_TOPICS
from tests.faults.hostile import (
    OK,
    SLOTS,
    Cell,
    Counted,
    Hostile,
    Judgement,
    Placed,
    Pos,
    compare,
    judge,
    partition_for,
    summarize,
    tally,
)
from tests.faults.table import FaultRow
from tests.support.processes import WorkerProcess, wait_for

SECRET = "adpulse-faults-hook-secret-7f3a"
_COUNT_SLOTS = ("impressions", "clicks", "visits", "carts", "orders")
#: Spend costs end in one micro-unit, so a cell's spend modulo this is the number of spend events in it.
_SPEND_MARK = 10_000


# -- traffic ------------------------------------------------------------------------------------------------


def fault_traffic(
    n: int,
    start_ms: int,
    span_ms: int,
    *,
    seed: int = 11,
    channels: int = 10,
    campaigns: int = 5,
    duplicates: float = 0.01,
    late: float = 0.02,
    malformed: float = 0.005,
) -> list[Hostile]:
    """``n`` tracker records over ``[start_ms, start_ms + span_ms)``: honest ones, and the given shares of
    exact copies, late arrivals (within the grace period and far beyond) and malformed records."""
    rng = random.Random(seed)
    names = [f"ch{c:02d}" for c in range(channels)]
    records: list[Hostile] = []
    for i in range(n):
        channel = rng.choice(names)
        ts = start_ms + span_ms * i // n + rng.randint(-2000, 2000)
        roll = rng.random()
        if roll < malformed:
            value = rng.choice([b"not json", b'{"event_id": "x", "ts": 1', b'{"event_id": "y", "ts": 1}'])
            allowed = frozenset({"not_json"}) if b"}" not in value else frozenset({"invalid"})
            records.append(Hostile("malformed", "clicks", channel.encode(), value, ts, allowed))
            continue
        if roll < malformed + duplicates and records:
            original = rng.choice(records[-200:])
            records.append(
                Hostile(
                    "duplicate",
                    original.topic,
                    original.key,
                    original.value,
                    ts,
                    original.allowed,
                    original.event,
                )
            )
            continue
        if roll < malformed + duplicates + late:
            ts -= rng.choice((rng.randint(5_000, 50_000), rng.randint(3 * 60_000, 10 * 60_000)))
        campaign = f"{channel}-camp{rng.randrange(campaigns)}"
        event_id = f"ev-{seed}-{i}"
        doc: dict[str, Any] = {"event_id": event_id, "ts": ts, "channel": channel, "campaign": campaign}
        topic = rng.choices(("clicks", "orders", "spend"), weights=(85, 7.5, 7.5))[0]
        if topic == "clicks":
            kind = rng.choices(["impression", "click", "visit", "cart"], weights=[60, 25, 10, 5])[0]
            doc["type"] = kind
            amounts: tuple[tuple[str, int], ...] = ((kind + "s", 1),)
        elif topic == "orders":
            cents = rng.randint(5_000, 90_000)
            doc.update(order_id=f"o-{i}", amount=cents / 100)
            amounts = (("orders", 1), ("gmv", cents * 10_000))
        else:
            cents = rng.randint(0, 6_000)
            doc["cost"] = float(f"{cents / 100:.2f}0001")
            amounts = (("spend", cents * 10_000 + 1),)
        counted = Counted(event_id, ts, channel, campaign, amounts)
        records.append(
            Hostile(
                "good", topic, channel.encode(), orjson.dumps(doc), ts + rng.randint(0, 3000), OK, counted
            )
        )
    return records


def two_hours_ago_ms() -> int:
    """Minutes 10 onwards of the hour two hours ago: old enough that every window can close."""
    hour = int(time.time()) // 3600 * 3600 - 2 * 3600
    return (hour + 600) * 1000


async def produce(
    settings: Settings,
    records: Sequence[Hostile] | Callable[[int], list[Hostile]],
    *,
    rounds: int = 0,
    chunk: int = 0,
    pause_s: float = 0.0,
    on_chunk: Callable[[int], None] | None = None,
) -> list[Placed]:
    """Send records as trackers would (each with its key and CreateTime, on the partition its key picks) and
    return where each one landed and when it was sent.

    ``records`` is a list, sent ``chunk`` at a time with a pause and ``on_chunk(sent)`` in between; or a
    function called for each of ``rounds`` rounds (``pause_s`` apart) that makes that round's records then,
    for traffic stamped with the moment it is sent.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=10, acks="all", enable_idempotence=False
    )
    await producer.start()
    pending: list[tuple[Hostile, int, asyncio.Future[Any]]] = []

    async def send(record: Hostile) -> None:
        future = await producer.send(
            settings.topic(record.topic),
            record.value,
            key=record.key,
            partition=partition_for(record.key, settings.partitions),
            timestamp_ms=record.create_ms,
        )
        pending.append((record, _now_ms(), future))

    try:
        if callable(records):
            for n in range(rounds):
                for record in records(n):
                    await send(record)
                await asyncio.sleep(pause_s)
        else:
            for i, record in enumerate(records, 1):
                await send(record)
                if chunk and i % chunk == 0 and i < len(records):
                    await producer.flush()
                    if on_chunk is not None:
                        await asyncio.get_running_loop().run_in_executor(None, on_chunk, i)
                    await asyncio.sleep(pause_s)
        await producer.flush()
        placed = []
        for record, sent_ms, future in pending:
            meta = await future
            placed.append(Placed(record, meta.topic, meta.partition, meta.offset, sent_ms))
        return placed
    finally:
        await producer.stop()


# -- what came out ------------------------------------------------------------------------------------------


@dataclass
class Dlq:
    """The DLQ topic read back: the reason per source record, and records that break the DLQ's contract."""

    reasons: dict[Pos, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    records: int = 0


async def read_dlq(settings: Settings) -> Dlq:
    """Every DLQ record so far (read until the topic stays quiet for two seconds)."""
    consumer = AIOKafkaConsumer(
        settings.topic("dlq"),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    dlq = Dlq()
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                quiet_since = time.monotonic()
                for record in records:
                    dlq.records += 1
                    try:
                        body = orjson.loads(record.value)
                        pos = (body["topic"], body["partition"], body["offset"])
                        reason, detail = body["reason"], body["detail"]
                    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                        dlq.problems.append(f"DLQ record unreadable: offset {record.offset} ({exc})")
                        continue
                    if not reason or not detail:
                        dlq.problems.append(f"DLQ record without reason or detail: {pos}")
                    earlier = dlq.reasons.setdefault(pos, reason)
                    if earlier != reason:
                        dlq.problems.append(f"verdict changed on replay: {pos} {earlier!r}, then {reason!r}")
    finally:
        await consumer.stop()
    return dlq


def counted_windows(settings: Settings, windows: Sequence[str] = ("1m", "1h")) -> dict[Cell, list[int]]:
    """The closed windows in Redis, read from each row's JSON (names may hold any separator)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        cells: dict[Cell, list[int]] = {}
        for window in windows:
            for key in client.scan_iter(f"{settings.redis_prefix}:windows:{window}:*"):
                for raw in client.hgetall(key).values():
                    row = orjson.loads(raw)
                    start = int(datetime.fromisoformat(row["window_start"]).timestamp())
                    cells[(row["channel"], row["campaign"], window, start)] = _vector(row)
        return cells
    finally:
        client.close()


def counted_totals(settings: Settings) -> dict[Cell, list[int]]:
    """The all-time totals per channel and campaign, from the KPI rows the workers keep in Redis."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        cells: dict[Cell, list[int]] = {}
        for raw in client.hgetall(f"{settings.redis_prefix}:kpis").values():
            row = orjson.loads(raw)
            if row["window"] == "total":
                cells[(row["channel"], row["campaign"], "total", 0)] = _vector(row)
        return cells
    finally:
        client.close()


def _vector(row: Mapping[str, Any]) -> list[int]:
    return [round(row[name] * 1_000_000) if name in ("gmv", "spend") else int(row[name]) for name in SLOTS]


def redis_view(
    truth: Mapping[Cell, list[int]], windows: Sequence[str] = ("1m", "1h")
) -> dict[Cell, list[int]]:
    """The ground truth as Redis shows it: a row per campaign (not for "-", events without one) and a
    channel row (campaign "-") summing them all."""
    view: dict[Cell, list[int]] = defaultdict(lambda: [0] * len(SLOTS))
    for (channel, campaign, window, start), vector in truth.items():
        if window not in windows:
            continue
        targets = [(channel, "-", window, start)] + (
            [(channel, campaign, window, start)] if campaign != "-" else []
        )
        for cell in targets:
            view[cell] = [a + b for a, b in zip(view[cell], vector, strict=True)]
    return {cell: _as_shown(vector) for cell, vector in view.items()}


def _as_shown(vector: list[int]) -> list[int]:
    """Money as Redis shows it: micro-units divided into a double, read back (``_vector``). Above 2**53
    micro-units (about 9 billion currency units) a double cannot hold every micro-unit of a sum."""
    money = (SLOTS.index("gmv"), SLOTS.index("spend"))
    return [round(v / 1_000_000 * 1_000_000) if i in money else v for i, v in enumerate(vector)]


def events_in(vector: Sequence[int]) -> list[int]:
    """Events behind a cell of ``fault_traffic``: its count slots, and its spend events (the one micro-unit
    marks)."""
    return [vector[SLOTS.index(name)] for name in _COUNT_SLOTS] + [vector[SLOTS.index("spend")] % _SPEND_MARK]


def events_tally(view: Mapping[Cell, list[int]], got: Mapping[Cell, list[int]]) -> tuple[int, int, int]:
    """(counted, lost, double-counted) events, cell by cell over the 1-minute campaign rows."""
    counted = lost = doubled = 0
    for cell in view.keys() | got.keys():
        if cell[2] != "1m" or cell[1] == "-":
            continue
        expected = events_in(view.get(cell, [0] * len(SLOTS)))
        seen = events_in(got.get(cell, [0] * len(SLOTS)))
        counted += sum(seen)
        lost += sum(max(0, e - s) for e, s in zip(expected, seen, strict=True))
        doubled += sum(max(0, s - e) for e, s in zip(expected, seen, strict=True))
    return counted, lost, doubled


def alert_fingerprints(view: Mapping[Cell, list[int]], since_s: float, level: str) -> set[str]:
    """What the rule ``CTR below 10^300`` on 1-minute windows fires: once for every channel (and campaign, at
    ``level`` both) with impressions in a minute that ended after ``since_s`` (older ones are history)."""
    impressions = SLOTS.index("impressions")
    return {
        f"threshold:ctr:{channel}:{campaign}:1m"
        for (channel, campaign, window, start), vector in view.items()
        if window == "1m"
        and vector[impressions] > 0
        and start + 60 >= since_s
        and (campaign == "-" or level == "both")
    }


def recent(cells: Mapping[Cell, list[int]], since_s: float) -> dict[Cell, list[int]]:
    """The totals, and the windows that start after ``since_s`` (older buckets leave the table after their
    retention, so whether their windows were recorded as closed is a race)."""
    return {cell: vector for cell, vector in cells.items() if cell[2] == "total" or cell[3] >= since_s}


# -- the chat side ------------------------------------------------------------------------------------------


class Receiver:
    """A webhook target on loopback: checks the HMAC signature, takes every alert, answers 200 (after
    ``delay_s``: a slow chat service keeps deliveries in flight)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.alerts: list[tuple[dict[str, Any], str]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                time.sleep(delay_s)
                with receiver.lock:
                    if hmac.compare_digest(self.headers.get("X-Adpulse-Signature", ""), expected):
                        receiver.alerts.append((orjson.loads(body), self.headers.get("Idempotency-Key", "")))
                    else:
                        receiver.bad_signatures += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fired(self) -> Counter[str]:
        """Deliveries per fingerprint of the alerts that fired."""
        with self.lock:
            return Counter(str(a["fingerprint"]) for a, _ in self.alerts if a.get("change") == "fired")

    def keys(self) -> dict[str, set[str]]:
        """The idempotency keys each fingerprint was delivered with."""
        with self.lock:
            keys: dict[str, set[str]] = defaultdict(set)
            for alert, key in self.alerts:
                keys[str(alert["fingerprint"])].add(key)
            return dict(keys)


class RouterProcess:
    """``adpulse router`` in a subprocess, with its log in a file and its own port."""

    def __init__(self, settings: Settings, routes: Path, log_path: Path, name: str, **env: str) -> None:
        self.settings, self.routes, self.log_path, self.name, self.env = settings, routes, log_path, name, env
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RouterProcess:
        env = {
            **os.environ,
            **self.settings.to_env(),
            "ROUTE_SECRET": SECRET,
            "ADPULSE_ROUTER_NAME": self.name,
            "ADPULSE_ROUTER_PORT": str(self.port),
            **self.env,
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "adpulse", "router", "--config", str(self.routes)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"router exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(ready, timeout_s, f"router {self.name}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def write_routes(path: Path, receiver: Receiver) -> Path:
    """Threshold alerts to the webhook receiver, everything else to the router's log."""
    path.write_text(
        "targets:\n"
        f"  hook: {{type: webhook, url: '{receiver.url}', secret: '${{ROUTE_SECRET}}', timeout_s: 5}}\n"
        "  log: {type: console, locale: en}\n"
        "routes:\n"
        "  - match: {kind: [threshold]}\n"
        "    targets: [hook]\n"
        "default_targets: [log]\n"
    )
    return path


def write_rules(path: Path, level: str) -> Path:
    """One rule every 1-minute window with impressions breaks: each series of ``level`` (``channel`` or
    ``both``: channels and campaigns) fires once and stays firing."""
    # Far above any CTR: a hostile click count of 10^9 over one impression must not look like a recovery.
    path.write_text(f"rules:\n  - metric: ctr\n    below: 1.0e300\n    windows: [1m]\n    level: {level}\n")
    return path


# -- a pipeline under faults --------------------------------------------------------------------------------


Process = WorkerProcess | RouterProcess


@dataclass
class Outcome:
    """A scenario's row of the fault table and everything that broke a promise."""

    row: FaultRow
    problems: list[str]

    def check(self) -> None:
        """Fail with the problems, grouped by kind, if there are any."""
        if self.problems:
            pytest.fail(summarize(self.problems), pytrace=False)


class Pipeline:
    """Workers and routers on one stack, a webhook receiver, supervision, and the judgement at the end."""

    def __init__(
        self, settings: Settings, tmp: Path, *, workers: int = 1, routers: int = 1, alert_level: str = "both"
    ) -> None:
        """``alert_level``: who the rule judges, ``both`` (channels and campaigns) or ``channel``."""
        self.tmp = tmp
        self.alert_level = alert_level
        self.receiver = Receiver()
        self.settings = settings.model_copy(
            update={"rules_file": write_rules(tmp / "rules.yml", alert_level)}
        )
        routes = write_routes(tmp / "routes.yml", self.receiver)
        self.workers = [
            WorkerProcess(self.settings.model_copy(update={"web_port": free_port()}), tmp / f"worker-{i}.log")
            for i in range(workers)
        ]
        self.routers = [
            RouterProcess(self.settings, routes, tmp / f"router-{i}.log", f"router-{i}")
            for i in range(routers)
        ]
        self.placed: list[Placed] = []
        self.crashes = 0
        self.expected_down: set[int] = set()
        self._supervising = threading.Event()
        self._lock = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    @property
    def processes(self) -> list[Process]:
        """Every worker and router."""
        return [*self.workers, *self.routers]

    def __enter__(self) -> Pipeline:
        self.receiver.__enter__()
        for process in self.processes:
            process.start()
        for worker in self.workers:
            worker.wait_ready()
        for router in self.routers:
            router.wait_ready()
        if self.workers:
            wait_for(self._folding, 60, "the fold stages to take every source partition")
        self._supervising.set()
        self._supervisor.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._supervising.clear()
        for process in self.processes:
            process.stop()
        self.receiver.__exit__()

    # -- faults ----------------------------------------------------------------------------------------

    def kill9(self, process: Process, down_s: float = 0.0) -> None:
        """``kill -9`` a process and start it again after ``down_s`` (its supervisor would)."""
        with self._lock:
            self.expected_down.add(id(process))
            process.kill9()
        time.sleep(down_s)
        with self._lock:
            process.start()
            self.expected_down.discard(id(process))

    @contextlib.contextmanager
    def stopped(self, process: Process) -> Iterator[None]:
        """A process stopped on purpose (SIGTERM) for the ``with`` block, started again after it."""
        with self._lock:
            self.expected_down.add(id(process))
        process.stop()
        try:
            yield
        finally:
            with self._lock:
                process.start()
                self.expected_down.discard(id(process))

    def _folding(self) -> bool:
        """Whether the fold stages took every source partition (each logs where it resumes one)."""
        logs = "".join(w.log_path.read_text(errors="replace") for w in self.workers if w.log_path.exists())
        taken = set(re.findall(r"fold: (\S+) resumes at offset", logs))
        return len(taken) >= len(SOURCE_TOPICS) * self.settings.partitions

    def join(self) -> WorkerProcess:
        """Start one more worker (it joins the consumer groups; partitions move to it)."""
        worker = WorkerProcess(
            self.settings.model_copy(update={"web_port": free_port()}),
            self.tmp / f"worker-{len(self.workers)}.log",
        )
        with self._lock:
            self.expected_down.add(id(worker))
            self.workers.append(worker)
            worker.start()
        worker.wait_ready()
        with self._lock:
            self.expected_down.discard(id(worker))
        return worker

    def leave(self, worker: WorkerProcess) -> None:
        """Stop a worker for good (SIGTERM, as a scale-down does; its partitions move to the others)."""
        with self._lock:
            self.expected_down.add(id(worker))
        worker.stop()

    def _supervise(self) -> None:
        while self._supervising.is_set():
            with self._lock:
                for process in self.processes:
                    if (
                        id(process) not in self.expected_down
                        and not process.alive()
                        and self._supervising.is_set()
                    ):
                        self.crashes += 1
                        process.start()
            time.sleep(0.5)

    # -- traffic and judgement -------------------------------------------------------------------------

    def send(self, records: Sequence[Hostile] | Callable[[int], list[Hostile]], **options: Any) -> None:
        """Produce ``records`` (options as for ``produce``) and remember where they landed."""
        self.placed += asyncio.run(produce(self.settings, records, **options))

    def settle(
        self,
        fault: str,
        timeout_s: float = 180.0,
        *,
        windows: tuple[str, ...] = ("1m", "1h"),
        recent_only: bool = False,
        choices: bool = False,
        tally_by: str = "events",
    ) -> Outcome:
        """Wait until the ``windows`` equal the ground truth and every alert reached the receiver (or the
        time is up), then judge: windows, DLQ, alerts, crashes.

        ``recent_only``: compare only windows of the last five hours (and the totals); older buckets leave
        the table after their retention, so whether their windows were recorded is a race. ``choices``: the
        traffic has records whose verdict the contract leaves to the pipeline (read from the DLQ while
        waiting). ``tally_by``: lost and double-counted in events (``fault_traffic``), or in records of the
        1-minute or all-time cells that differ (``1m``, ``total``).
        """
        grace_ms = int(self.settings.grace_s * 1000)
        since_s = time.time() - 5 * 3600 if recent_only else 0.0

        def got() -> dict[Cell, list[int]]:
            cells = counted_windows(self.settings, [w for w in windows if w != "total"])
            if "total" in windows:
                cells.update(counted_totals(self.settings))
            return recent(cells, since_s)

        def expected(reasons: Mapping[Pos, str]) -> tuple[Judgement, dict[Cell, list[int]]]:
            verdict = judge(self.placed, reasons, grace_ms, _now_ms())
            return verdict, recent(redis_view(verdict.truth, windows), since_s)

        verdict, view = expected({})
        lookback_s = time.time() - self.settings.alert_lookback_s

        def done() -> bool:
            nonlocal verdict, view
            if choices:
                verdict, view = expected(asyncio.run(read_dlq(self.settings)).reasons)
            fingerprints = alert_fingerprints(view, lookback_s, self.alert_level) if self.routers else set()
            return not compare(view, got(), windows) and set(self.receiver.fired()) >= fingerprints

        with contextlib.suppress(AssertionError):
            wait_for(done, timeout_s, "every window exact and every alert delivered", interval_s=3.0)
        time.sleep(1.0)  # a resend would arrive by now
        self._supervising.clear()
        dlq = asyncio.run(read_dlq(self.settings))
        verdict, view = expected(dlq.reasons)
        counted_cells = got()
        differences = compare(view, counted_cells, windows)
        problems = verdict.problems + dlq.problems + differences
        if tally_by == "events":
            counted, lost, doubled = events_tally(view, counted_cells)
        else:
            lost, doubled = (
                tally(verdict, counted_cells, truth=view, window=tally_by, named_only=True)
                if differences
                else (0, 0)
            )
            counted = verdict.counted - lost + doubled
        fingerprints = alert_fingerprints(view, lookback_s, self.alert_level) if self.routers else set()
        fired = self.receiver.fired()
        delivered = len(set(fired) & fingerprints)
        duplicated = sum(n - 1 for n in fired.values())
        if set(fired) != fingerprints:
            missing, extra = sorted(fingerprints - set(fired)), sorted(set(fired) - fingerprints)
            problems.append(
                f"alerts differ: {len(missing)} missing (e.g. {missing[:3]}), unexpected {extra[:3]}"
            )
        if duplicated:
            twice = {fp for fp, n in fired.items() if n > 1}
            shown = [
                (a["fingerprint"], a.get("id"), a.get("fired_at"), a.get("window_start"), key)
                for a, key in self.receiver.alerts
                if a.get("fingerprint") in twice
            ]
            problems.append(f"alerts delivered twice: {len(twice)}, deliveries: {shown[:6]}")
        if self.receiver.bad_signatures:
            problems.append(f"alerts with a bad signature: {self.receiver.bad_signatures}")
        if self.crashes:
            why = "\n---\n".join(last_error(p.log_path) for p in self.processes)
            problems.append(
                f"processes died unasked ({self.crashes} times): the last error in each log:\n{why}"
            )
        if not self.routers:
            return Outcome(
                FaultRow(fault, len(self.placed), counted, lost, doubled, crashes=self.crashes), problems
            )
        row = FaultRow(
            fault,
            len(self.placed),
            counted,
            lost,
            doubled,
            len(fingerprints),
            delivered,
            duplicated,
            self.crashes,
        )
        return Outcome(row, problems)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b")


def last_error(log: Path, lines: int = 8) -> str:
    """The last exception in a process log, with the lines before it (its tail if there is none)."""
    text = log.read_text(errors="replace").splitlines()
    marks = [i for i, line in enumerate(text) if _EXCEPTION_LINE.match(line)]
    end = marks[-1] + 1 if marks else len(text)
    return f"{log.name}:\n" + "\n".join(text[max(0, end - lines) : end])


def fault_seed() -> int:
    """Seed of a scenario's random points: ``ADPULSE_FAULT_SEED``, else a fresh one (the table shows it)."""
    return int(os.environ.get("ADPULSE_FAULT_SEED") or random.randrange(1_000_000))


def write_alerts(settings: Settings, alerts: Sequence[Mapping[str, Any]]) -> None:
    """Put alerts on the stream the router reads, as the workers' sink does."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for alert in alerts:
            pipe.xadd(f"{settings.redis_prefix}:alerts", {"alert": orjson.dumps(alert)})
        pipe.execute()
    finally:
        client.close()


def _now_ms() -> int:
    return int(time.time() * 1000)
