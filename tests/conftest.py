"""Integration fixtures: one real embedded stack (Tansu + Valkey) per test session, isolation per test.

- ``stack_settings``: settings of the shared stack, up for the whole session.
- ``fresh_prefix`` / ``make_settings``: a unique topic prefix, consumer-group id and Redis database per test,
  with the topics created, so tests share one broker and one Redis without seeing each other.
- ``new_stack_settings``: settings for a stack of your own (fresh ports, a home you choose), for tests that
  stop or restart servers. Bring it up with ``running_stack`` so it is torn down again.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis

from adpulse.settings import Settings
from adpulse.stack import EmbeddedStack, StackError, ensure_topics, free_port, running_stack

# Redis databases handed out to tests in turn; 0 stays with the shared stack itself.
_REDIS_DBS = itertools.cycle(range(1, 16))


def _stack_settings(home: Path, **overrides: object) -> Settings:
    kafka_port = free_port()
    # free_port releases the port it found, so the next call may find the same one.
    redis_port = next(port for port in iter(free_port, None) if port != kafka_port)
    fields: dict[str, Any] = {
        "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        "home": home,
        "web_port": 0,
    }
    return Settings(**{**fields, **overrides})


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of the session's embedded stack (free loopback ports, a temporary ADPULSE_HOME), up."""
    with own_stack(tmp_path_factory.mktemp("adpulse-home")) as (settings, _stack):
        yield settings


@pytest.fixture
def new_stack_settings() -> Callable[..., Settings]:
    """Factory ``(home, **overrides) -> Settings`` for a separate stack on fresh loopback ports (not up)."""
    return _stack_settings


@contextlib.contextmanager
def own_stack(home: Path, attempts: int = 3, **overrides: object) -> Iterator[tuple[Settings, EmbeddedStack]]:
    """A stack of your own on fresh loopback ports, up for the ``with`` block.

    A free port can be taken by another process between the probe and the server's bind (the broker then
    exits at once): that start is retried on other ports, up to ``attempts`` times.
    """
    for attempt in range(attempts):
        settings = _stack_settings(home, **overrides)
        with contextlib.ExitStack() as cleanup:
            try:
                stack = cleanup.enter_context(running_stack(settings))
            except StackError as exc:
                if "exited during startup" not in str(exc) or attempt == attempts - 1:
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
