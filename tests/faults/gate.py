"""A broker that can go down and come back with its data: the embedded broker (Tansu) behind a TCP gate.

The embedded broker keeps everything in memory, so stopping it would lose the topics, which a real Kafka
broker restarting from its disks does not. Instead the broker advertises the gate's port and every client
reaches it through the gate; ``shut()`` cuts every connection and closes the port (clients see what they
see of a broker that went down: reset connections, then refused ones), ``open()`` serves again.

``gated_redis`` puts the same gate in front of a running Redis: an outage in a second, without restarting
the server (the long scenarios stop and start the real one).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from adpulse.settings import Settings
from adpulse.stack import ensure_topics, free_port, tansu_binary
from tests.support.processes import wait_for

# Tansu reads these from the environment; the test's own command line must be what configures it.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")


class Gate:
    """A loopback TCP relay from ``port`` to ``upstream`` that can be shut (connections cut, port closed)."""

    def __init__(self, upstream: int, port: int) -> None:
        self.upstream = upstream
        self.port = port
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def open(self) -> None:
        """Listen on the port and relay every connection."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def shut(self) -> None:
        """Close the port and cut every relayed connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            listener.close()
        for sock in sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # shut
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _close(client)
                    _close(server)
                    return
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                _close(sock)
                with self._lock:
                    self._sockets.discard(sock)


def _close(sock: socket.socket) -> None:
    # shutdown wakes a thread blocked in recv on it; close alone does not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextlib.contextmanager
def gated_broker(settings: Settings, home: Path) -> Iterator[tuple[Settings, Gate]]:
    """A broker of its own behind a gate, for ``settings`` (Redis and the rest stay as they are), with the
    adpulse topics created; yields the settings pointing at the gate, and the gate."""
    inner = free_port()
    outer = next(port for port in iter(free_port, None) if port != inner)
    home.mkdir(parents=True, exist_ok=True)
    command = [
        str(tansu_binary(home / "bin")),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{inner}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{outer}",
        "--storage-engine",
        "memory://tansu/",
    ]
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    with open(home / "broker.log", "ab") as log:
        broker = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    gate = Gate(inner, outer)
    gated = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{outer}"})
    try:
        gate.open()

        def topics_created() -> bool:
            assert broker.poll() is None, (home / "broker.log").read_text()[-2000:]
            try:
                ensure_topics(gated, timeout_s=3.0)
            except Exception:  # noqa: BLE001 - not up yet: any failure means "try again"
                return False
            return True

        wait_for(topics_created, 30, "the gated broker and its topics")
        yield gated, gate
    finally:
        gate.shut()
        broker.terminate()
        try:
            broker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(timeout=10)


@contextlib.contextmanager
def gated_redis(settings: Settings) -> Iterator[tuple[Settings, Gate]]:
    """A gate in front of the Redis of ``settings``; yields the settings pointing at the gate (same database),
    and the gate, open."""
    upstream = urlsplit(settings.redis_url)
    assert upstream.port is not None, settings.redis_url
    gate = Gate(upstream.port, free_port())
    userinfo = upstream.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{gate.port}" if userinfo else f"127.0.0.1:{gate.port}"
    gated = settings.model_copy(update={"redis_url": urlunsplit(upstream._replace(netloc=netloc))})
    gate.open()
    try:
        yield gated, gate
    finally:
        gate.shut()
