"""Integration fixtures: one real stack (a broker + Valkey) per broker and test session, isolation per test.

- ``stack_settings``: settings of the shared stack, up for the whole session. Its broker is the embedded
  Tansu; a test marked ``@pytest.mark.kafka`` runs twice, on Tansu and on a real Apache Kafka
  (``adpulse.kafka_server``, one node shared by the session). Without Java or Maven the Kafka runs are
  skipped with the reason, except under CI (``CI=true``), where that is a failure.
- ``fresh_prefix`` / ``make_settings``: a unique topic prefix, consumer-group id and Redis database per test,
  with the topics created, so tests share one broker and one Redis without seeing each other.
- ``new_stack_settings``: settings for a stack of your own (fresh ports, a home you choose), for tests that
  stop or restart servers. Bring it up with ``running_stack`` so it is torn down again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis

from adpulse.kafka_server import KafkaUnavailableError, free_ports, java_binary, kafka_jars
from adpulse.settings import Settings
from adpulse.stack import KAFKA, TANSU, EmbeddedStack, StackError, ensure_topics, free_port, running_stack

# Redis databases handed out to tests in turn; 0 stays with the shared stack itself.
_REDIS_DBS = itertools.cycle(range(1, 16))


def _stack_settings(home: Path, broker: str = TANSU, **overrides: object) -> Settings:
    # Kafka's ports come from below the ephemeral range: a killed node must get its port back on restart.
    kafka_port = free_ports(1, set())[0] if broker == KAFKA else free_port()
    # free_port releases the port it found, so the next call may find the same one.
    redis_port = next(port for port in iter(free_port, None) if port != kafka_port)
    fields: dict[str, Any] = {
        "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        "home": home,
        "web_port": 0,
    }
    if broker == TANSU:
        # Tansu holds every group join for half a session: 3 s instead of 5 at each of the suite's many
        # worker and fold-stage starts (6 s is also the shortest session Kafka accepts by default).
        fields["group_session_timeout_s"] = 6.0
    return Settings(**{**fields, **overrides})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on the shared stack gets its broker as a parameter: Tansu, and Kafka when marked ``kafka``
    (only Kafka when marked ``kafka_only``: a feature the embedded broker does not support).

    All of them are parametrized (not only the marked ones), so that pytest sees exactly two instances of
    the session's stack and runs the tests of each together, starting each broker once.
    """
    if "stack_settings" in metafunc.fixturenames:
        brokers = [TANSU, KAFKA] if metafunc.definition.get_closest_marker("kafka") else [TANSU]
        if metafunc.definition.get_closest_marker("kafka_only"):
            brokers = [KAFKA]
        metafunc.parametrize("stack_settings", brokers, indirect=True, scope="session")


def require_kafka() -> None:
    """Skip the test when this machine cannot run Kafka (no Java or Maven); under CI fail instead."""
    try:
        java_binary()
        kafka_jars()
    except KafkaUnavailableError as exc:
        reason = f"Kafka tier: {str(exc).splitlines()[0]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: CI must run the Kafka tier)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def stack_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Settings of the session's stack on ``request.param``'s broker (free loopback ports, a temporary
    ADPULSE_HOME), up."""
    broker = getattr(request, "param", TANSU)
    if broker == KAFKA:
        require_kafka()
    with own_stack(tmp_path_factory.mktemp(f"adpulse-home-{broker}"), broker=broker) as (settings, _stack):
        yield settings


@pytest.fixture
def new_stack_settings() -> Callable[..., Settings]:
    """Factory ``(home, broker="tansu", **overrides) -> Settings`` for a separate stack on fresh loopback
    ports (not up); pass the broker it will run, as Kafka's ports come from another range."""
    return _stack_settings


@contextlib.contextmanager
def own_stack(
    home: Path, attempts: int = 3, broker: str = TANSU, nodes: int = 1, **overrides: object
) -> Iterator[tuple[Settings, EmbeddedStack]]:
    """A stack of your own on fresh loopback ports, up for the ``with`` block (``nodes`` Kafka nodes when
    ``broker`` is ``kafka``).

    A free port can be taken by another process between the probe and the server's bind (the broker then
    exits at once): that start is retried on other ports, up to ``attempts`` times.
    """
    for attempt in range(attempts):
        settings = _stack_settings(home, broker, **overrides)
        with contextlib.ExitStack() as cleanup:
            try:
                # A JVM starts slower than Tansu, more so on a machine busy with other tests.
                timeout_s = 120.0 if broker == KAFKA else 20.0
                stack = cleanup.enter_context(running_stack(settings, timeout_s, broker=broker, nodes=nodes))
            except StackError as exc:
                retry = "exited during startup" in str(exc) or "already in use" in str(exc)
                if not retry or attempt == attempts - 1:
                    raise
                continue
            yield settings, stack
            return


@pytest.fixture
def fresh_prefix() -> str:
    """A topic prefix no other test uses, e.g. ``t1a2b3c4d.``."""
    return f"t{uuid4().hex[:8]}."


@pytest.fixture
def make_settings(stack_settings: Settings, fresh_prefix: str) -> Callable[..., Settings]:
    """Factory ``(**overrides) -> Settings`` on the shared stack, isolated from other tests, topics created.

    Every call in one test shares the test's topic prefix, consumer-group id (``app_id``) and Redis
    database (emptied when the test starts); ``overrides`` win over all of them.
    """
    db = next(_REDIS_DBS)
    redis_url = stack_settings.redis_url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    isolated = {
        "topic_prefix": fresh_prefix,
        "app_id": f"adpulse-{fresh_prefix.rstrip('.')}",
        "redis_url": redis_url,
    }

    def make(**overrides: object) -> Settings:
        settings = stack_settings.model_copy(update={**isolated, **overrides})
        ensure_topics(settings)
        return settings

    return make
