"""A real Apache Kafka (KRaft) on loopback, from Maven Central's jars: one node or a cluster of several.

For users who have Java 17 and Maven (``adpulse stack up --broker kafka [--nodes 3]``) and for the test
suite's Kafka tier. The server jars are fetched once by Maven (:func:`kafka_jars`, the pom is
:data:`POM`) into ``~/.cache/adpulse/kafka-<version>/libs`` (``$XDG_CACHE_HOME`` is honoured), reused by
every later run; ``ADPULSE_KAFKA_JARS`` names a directory of jars to use instead (a Kafka distribution's
``libs/``, or an offline copy).

Each node runs as broker and controller in one JVM (``kafka.Kafka``), formatted with
``kafka.tools.StorageTool`` on first start, listening on ``127.0.0.1`` only. A cluster of three or more keeps
every topic's data on three brokers (``default.replication.factor``) and accepts a write once two of them
have it (``min.insync.replicas=2``), as docs/operations.md recommends for production. Data lives on disk
under the cluster's directory, so it survives a restart; pid files there let another process stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from aiokafka.client import AIOKafkaClient
from aiokafka.structs import TopicPartition

from adpulse.processes import spawn_detached, start_ticks

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The Kafka version adpulse is tested against; docker-compose.yml runs the same one.
KAFKA_VERSION: Final = "4.1.1"
#: The jars log through SLF4J 1.7; Kafka's own distribution binds it to this log4j 2.
_LOG4J_VERSION: Final = "2.24.3"

POM: Final = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by adpulse (adpulse/kafka_server.py): the Kafka server's jars and a log backend. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.adpulse</groupId>
  <artifactId>adpulse-kafka-server</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{_LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2: Final = """\
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
# One line per partition and state change: thousands per test session, and nothing adpulse needs.
logger.state.name = state.change.logger
logger.state.level = WARN
"""

# Kafka's own launch script's choices (kafka-run-class.sh), with a heap that fits beside the tests.
_JVM_OPTIONS: Final = (
    "-Xms128m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)


class KafkaUnavailableError(RuntimeError):
    """Java or Maven is missing, or the jars could not be fetched; the message says what to install."""


class KafkaServerError(RuntimeError):
    """A node did not start or answer; the message has the end of its log."""


# --- the jars ---------------------------------------------------------------------------------------------


def java_binary() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on PATH; :class:`KafkaUnavailableError` if there is neither."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaUnavailableError(
            "no java on PATH (Kafka needs Java 17 or newer: e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    return found


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of ``version`` are kept between runs."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "adpulse" / f"kafka-{version}"


def kafka_jars(version: str = KAFKA_VERSION, timeout_s: float = 600.0) -> Path:
    """The directory of the Kafka server's jars: ``ADPULSE_KAFKA_JARS``, else the cache, filled by Maven once.

    Concurrent callers (two test sessions) wait for each other on a lock file; the directory appears only
    complete (Maven writes into a scratch directory that is then renamed).
    """
    override = os.environ.get("ADPULSE_KAFKA_JARS")
    if override:
        path = Path(override)
        if not any(path.glob("kafka_2.13-*.jar")):
            raise KafkaUnavailableError(f"ADPULSE_KAFKA_JARS={override} holds no kafka_2.13 jar")
        return path
    cache = cache_dir(version)
    libs = cache / "libs"
    if libs.is_dir():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailableError(
            "no mvn on PATH to fetch the Kafka jars (`apt-get install maven`), or set ADPULSE_KAFKA_JARS to "
            "a directory of Kafka's jars"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        if libs.is_dir():
            return libs  # fetched by whoever held the lock
        pom = cache / "pom.xml"
        pom.write_text(POM)
        scratch = cache / f"libs.partial-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("fetching the Kafka %s jars with Maven into %s (once)", version, libs)
        command = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={scratch}",
            "-DincludeScope=runtime",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise KafkaUnavailableError(
                f"Maven did not fetch the Kafka jars within {timeout_s:.0f} s"
            ) from None
        if done.returncode != 0 or not any(scratch.glob("kafka_2.13-*.jar")):
            shutil.rmtree(scratch, ignore_errors=True)
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise KafkaUnavailableError(f"Maven could not fetch the Kafka {version} jars:\n{tail}")
        scratch.rename(libs)
    return libs


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the nodes --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node's id and loopback ports: clients talk to ``port``, the controllers to ``controller_port``."""

    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True, slots=True)
class _Layout:
    cluster_id: str
    version: str
    nodes: tuple[NodeSpec, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"cluster_id": self.cluster_id, "version": self.version, "nodes": [asdict(n) for n in self.nodes]}
        )

    @classmethod
    def from_json(cls, text: str) -> _Layout:
        data = json.loads(text)
        nodes = tuple(NodeSpec(**node) for node in data["nodes"])
        return cls(str(data["cluster_id"]), str(data["version"]), nodes)


class KafkaCluster:
    """``nodes`` Kafka nodes (broker + controller each) on 127.0.0.1, with their data under ``root``.

    The layout (cluster id, node ports) is chosen on the first :meth:`up` and kept in ``root/cluster.json``:
    later calls, from this or another process, run the same cluster on the same ports with the same data.
    ``ports`` fixes the client ports of the first nodes (those a user's ``ADPULSE_KAFKA_BOOTSTRAP`` names);
    the other ports are free ones. ``properties`` are extra broker settings for every node's
    ``server.properties``.
    """

    def __init__(
        self,
        root: Path,
        *,
        nodes: int = 1,
        ports: Sequence[int] = (),
        properties: Mapping[str, str] | None = None,
        version: str = KAFKA_VERSION,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        self.root = root.absolute()
        self.size = nodes
        self.version = version
        self.properties = dict(properties or {})
        if len(ports) > nodes:
            raise ValueError(f"{len(ports)} client ports for {nodes} node(s)")
        self._ports = tuple(ports)
        self._layout: _Layout | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- layout ---------------------------------------------------------------------------------------------

    @property
    def layout_path(self) -> Path:
        return self.root / "cluster.json"

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        """The nodes' ids and ports (chosen now if this cluster was never started)."""
        return self._load_layout().nodes

    @property
    def bootstrap(self) -> str:
        """Every node's client address, ``127.0.0.1:p1,127.0.0.1:p2,...``."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def formatted(self) -> bool:
        """Whether this cluster's storage exists (it was started before, so it has its data)."""
        return self.layout_path.is_file() and all(self._meta(n).is_file() for n in self._load_layout().nodes)

    def _load_layout(self) -> _Layout:
        if self._layout is not None:
            return self._layout
        if self.layout_path.is_file():
            layout = _Layout.from_json(self.layout_path.read_text())
            if len(layout.nodes) != self.size:
                raise KafkaServerError(
                    f"the Kafka in {self.root} was formatted with {len(layout.nodes)} node(s), not "
                    f"{self.size}; use --nodes {len(layout.nodes)}, or stop it and remove {self.root} "
                    "to start afresh"
                )
            # Client ports may change between runs (they are only listeners); controller ports stay.
            nodes = tuple(
                NodeSpec(
                    node.node_id, self._ports[i] if i < len(self._ports) else node.port, node.controller_port
                )
                for i, node in enumerate(layout.nodes)
            )
            layout = _Layout(layout.cluster_id, layout.version, nodes)
        else:
            free = iter(free_ports(2 * self.size - len(self._ports), taken=set(self._ports)))
            nodes = tuple(
                NodeSpec(i + 1, self._ports[i] if i < len(self._ports) else next(free), next(free))
                for i in range(self.size)
            )
            layout = _Layout(uuid.uuid4().hex[:22], self.version, nodes)
        self._layout = layout
        return layout

    def node(self, node_id: int) -> NodeSpec:
        """The node with ``node_id`` (1-based)."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    # -- files ----------------------------------------------------------------------------------------------

    def _dir(self, node: NodeSpec) -> Path:
        return self.root / f"node-{node.node_id}"

    def _meta(self, node: NodeSpec) -> Path:
        return self._dir(node) / "data" / "meta.properties"

    def log_path(self, node_id: int) -> Path:
        """Where node ``node_id`` logs."""
        return self.root / f"node-{node_id}.log"

    def _pid_path(self, node: NodeSpec) -> Path:
        return self.root / f"node-{node.node_id}.pid"

    def _properties(self, node: NodeSpec) -> Path:
        return self._dir(node) / "server.properties"

    def _write_config(self, node: NodeSpec) -> None:
        layout = self._load_layout()
        replicas = min(3, self.size)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in layout.nodes)
        config = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self._dir(node) / "data"),
            "auto.create.topics.enable": "false",
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min(2, replicas)),
            "offsets.topic.replication.factor": str(replicas),
            # Kafka's 50 partitions of __consumer_offsets are 150 logs on 3 nodes; a few suffice here.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min(2, replicas)),
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "unclean.leader.election.enable": "false",
            **self.properties,
        }
        path = self._properties(node)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{key}={value}\n" for key, value in config.items()))
        (self.root / "log4j2.properties").write_text(_LOG4J2)

    def _java(self, jars: Path, main: str, *args: str) -> list[str]:
        return [
            java_binary(),
            *_JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
            "-cp",
            f"{jars}/*",
            main,
            *args,
        ]

    # -- lifecycle ------------------------------------------------------------------------------------------

    def up(self, timeout_s: float = 90.0) -> bool:
        """Start every node not running yet and wait until all of them are brokers of the cluster.

        Formats the storage on the first start (returns True then: the cluster is new and empty). Idempotent.
        A node that exits during startup raises :class:`KafkaServerError` with its log's last lines; nodes
        started by this call are stopped again when a later step fails, and a first start leaves no storage
        behind (a retry lays the cluster out on other ports).
        """
        jars = kafka_jars(self.version)
        layout = self._load_layout()
        self.root.mkdir(parents=True, exist_ok=True)
        fresh = not self.formatted()
        started: list[NodeSpec] = []
        try:
            for node in layout.nodes:
                self._write_config(node)
                if fresh:
                    self._format(jars, layout, node)
            self.layout_path.write_text(layout.to_json())
            for node in layout.nodes:
                if self.pid(node.node_id) is None:
                    self._start(jars, node)
                    started.append(node)
            self.wait_ready(timeout_s)
        except BaseException:
            for node in started:
                self.stop_node(node.node_id, timeout_s=10.0)
            if fresh:
                self._forget_layout()
            raise
        return fresh

    def _forget_layout(self) -> None:
        """Remove the storage a failed first start formatted, so that the next try picks other ports."""
        for node in self._load_layout().nodes:
            shutil.rmtree(self._dir(node), ignore_errors=True)
        self.layout_path.unlink(missing_ok=True)
        self._layout = None

    def _format(self, jars: Path, layout: _Layout, node: NodeSpec) -> None:
        if self._meta(node).is_file():
            return
        command = self._java(
            jars,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "--cluster-id",
            layout.cluster_id,
            "--config",
            str(self._properties(node)),
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
            raise KafkaServerError(f"formatting Kafka node {node.node_id} failed:\n{tail}")

    def _start(self, jars: Path, node: NodeSpec) -> None:
        _require_free(node.port)
        _require_free(node.controller_port)
        command = self._java(jars, "kafka.Kafka", str(self._properties(node)))
        process = spawn_detached(
            command, self.log_path(node.node_id), f"starting node {node.node_id}", self.root
        )
        self._children[node.node_id] = process
        ticks = start_ticks(process.pid)
        if ticks is None:
            raise KafkaServerError(f"Kafka node {node.node_id} exited at once:\n{self._tail(node.node_id)}")
        partial = self._pid_path(node).with_suffix(".partial")
        partial.write_text(json.dumps({"pid": process.pid, "start_ticks": ticks}))
        partial.replace(self._pid_path(node))
        log.info("started Kafka node %d on 127.0.0.1:%d (pid %d)", node.node_id, node.port, process.pid)

    def wait_ready(
        self, timeout_s: float = 90.0, nodes: int | None = None, answering: int | None = None
    ) -> None:
        """Wait until the cluster's metadata lists ``nodes`` brokers (default: all of them, all running); with
        ``answering``, until that node itself answers and lists itself."""
        want = self.size if nodes is None else nodes
        deadline = time.monotonic() + timeout_s
        failure = "no answer yet"
        while True:
            for node in self.nodes:
                if nodes is None and not self._alive(node.node_id):
                    raise KafkaServerError(
                        f"Kafka node {node.node_id} exited during startup; last lines of "
                        f"{self.log_path(node.node_id)}:\n{self._tail(node.node_id)}"
                    )
            try:
                brokers = _run(self._brokers(timeout_s=3.0, only=answering))
            except Exception as exc:  # noqa: BLE001 - anything short of an answer means "not yet"
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if (answering in brokers) if answering is not None else len(brokers) >= want:
                    return
                failure = f"{len(brokers)} of {want} brokers registered"
            if time.monotonic() >= deadline:
                raise KafkaServerError(f"the Kafka cluster in {self.root} was not ready in time ({failure})")
            time.sleep(0.25)

    async def _brokers(self, timeout_s: float, only: int | None = None) -> list[int]:
        """The brokers the cluster's metadata lists, asked of the nodes listening (or of node ``only``)."""
        live = [
            n
            for n in self.nodes
            if (only is None or n.node_id == only) and self.pid(n.node_id) is not None and _listening(n.port)
        ]
        if not live:
            raise ConnectionError("no node listens yet")
        client = AIOKafkaClient(
            bootstrap_servers=",".join(f"127.0.0.1:{n.port}" for n in live),
            request_timeout_ms=int(timeout_s * 1000),
        )
        try:
            await client.bootstrap()  # a metadata request to a bootstrap node: node ``only``'s own answer
            metadata = client.cluster if only is not None else await client.fetch_all_metadata()
        finally:
            await client.close()
        return sorted(broker.nodeId for broker in metadata.brokers())

    def pid(self, node_id: int) -> int | None:
        """The pid of node ``node_id`` while it is the process this cluster started, else None."""
        node = self.node(node_id)
        try:
            record = json.loads(self._pid_path(node).read_text())
        except (OSError, ValueError):
            return None
        pid, ticks = int(record["pid"]), int(record["start_ticks"])
        if start_ticks(pid) != ticks:
            return None  # gone, or the pid was recycled for another program
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if os.fsencode(str(self._properties(node))) in cmdline else None

    def _own_pid(self, node_id: int) -> int | None:
        """The node's pid: from its pid file, or the child this process started (ours, whatever the file)."""
        child = self._children.get(node_id)
        if child is not None and child.poll() is None:
            return child.pid
        return self.pid(node_id)

    def _alive(self, node_id: int) -> bool:
        child = self._children.get(node_id)
        if child is not None:
            return child.poll() is None
        return self.pid(node_id) is not None

    def running(self) -> list[int]:
        """Ids of the nodes running now."""
        return [n.node_id for n in self.nodes if self.pid(n.node_id) is not None]

    def start_node(self, node_id: int, timeout_s: float = 90.0) -> None:
        """Start one stopped (or killed) node again and wait until the whole cluster is back: the node itself
        answers and lists itself. (The others keep listing a killed node for its broker session, some 9 s: a
        node down for less seemed back at once.)"""
        if self.pid(node_id) is None:
            self._start(kafka_jars(self.version), self.node(node_id))
        deadline = time.monotonic() + timeout_s
        self.wait_ready(timeout_s, answering=node_id)
        self.wait_ready(max(1.0, deadline - time.monotonic()))

    def kill9(self, node_id: int) -> int:
        """``kill -9`` node ``node_id`` (no controlled shutdown) and return the pid it had."""
        pid = self.pid(node_id)
        if pid is None:
            raise KafkaServerError(f"Kafka node {node_id} is not running")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)
        self._reap(node_id)
        return pid

    def stop_node(self, node_id: int, timeout_s: float = 30.0) -> int | None:
        """Stop one node: SIGTERM (a controlled shutdown), SIGKILL after ``timeout_s``; returns its pid."""
        pid = self._own_pid(node_id)
        if pid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if _wait_gone(pid, timeout_s):
                    break
                log.warning("Kafka node %d (pid %d) ignored %s for %.0f s", node_id, pid, sig.name, timeout_s)
        self._reap(node_id)
        self._pid_path(self.node(node_id)).unlink(missing_ok=True)
        return pid

    def down(self, timeout_s: float = 30.0) -> dict[int, int]:
        """Stop every node this cluster runs (only those: checked by pid, start time and command line).

        All nodes get SIGTERM at once, so that none waits for a quorum the others already left.
        """
        pids = {n.node_id: pid for n in self.nodes if (pid := self._own_pid(n.node_id)) is not None}
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for node_id in pids:
            self.stop_node(node_id, timeout_s)
        for node in self.nodes:
            self._pid_path(node).unlink(missing_ok=True)
        return pids

    def _reap(self, node_id: int) -> None:
        child = self._children.pop(node_id, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)

    def _tail(self, node_id: int, lines: int = 20) -> str:
        try:
            text = self.log_path(node_id).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- what the cluster says ------------------------------------------------------------------------------

    def leader(self, topic: str, partition: int, timeout_s: float = 10.0) -> int:
        """The node id that leads ``topic``'s ``partition`` now."""

        async def ask() -> int:
            client = AIOKafkaClient(
                bootstrap_servers=self.live_bootstrap(), request_timeout_ms=int(timeout_s * 1000)
            )
            try:
                await client.bootstrap()
                metadata = await client.fetch_all_metadata()
            finally:
                await client.close()
            leader = metadata.leader_for_partition(TopicPartition(topic, partition))
            if leader is None or leader < 0:
                raise KafkaServerError(f"{topic}[{partition}] has no leader now")
            return int(leader)

        return _run(ask())

    def live_bootstrap(self) -> str:
        """The client addresses of the nodes running now."""
        return ",".join(f"127.0.0.1:{self.node(i).port}" for i in self.running())


def formatted_size(root: Path) -> int | None:
    """How many nodes the cluster under ``root`` was formatted with, or None when there is none."""
    try:
        return len(_Layout.from_json((root / "cluster.json").read_text()).nodes)
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def running_cluster(
    root: Path, nodes: int = 1, timeout_s: float = 120.0, **options: object
) -> Iterator[KafkaCluster]:
    """A :class:`KafkaCluster` up for the ``with`` block and stopped (every node) after it."""
    cluster = KafkaCluster(root, nodes=nodes, **options)  # type: ignore[arg-type]
    try:
        cluster.up(timeout_s=timeout_s)
        yield cluster
    finally:
        cluster.down()


# --- processes and ports ----------------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` from sync code, also when called inside a running event loop (in a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while start_ticks(pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct ports nothing listens on, below the kernel's range for outgoing connections.

    A port from that range (what binding port 0 gives) can be taken by any client's outgoing connection
    between now and the node binding it, or while a killed node is down; below it only servers compete.
    """
    low = _ephemeral_low()
    candidates = random.sample(range(max(1024, low - 12_000), low), k=min(2000, max(0, low - 1024)))
    ports: list[int] = []
    for port in candidates:
        if len(ports) == count:
            break
        if port not in taken and _bindable(port):
            ports.append(port)
    while len(ports) < count:  # no room below the range: take what the kernel gives
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _require_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise KafkaServerError(
                f"port {port} on 127.0.0.1 is already in use by another program ({exc.strerror}), so Kafka "
                "cannot start there"
            ) from None
