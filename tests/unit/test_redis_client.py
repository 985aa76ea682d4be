"""The Redis client Protocol against the real client (mypy checks the signatures in ``make lint``)."""

from __future__ import annotations

import redis.asyncio

from streams.redis_client import AsyncRedis, as_text


def test_the_real_client_has_every_command_the_protocol_names() -> None:
    client = redis.asyncio.Redis()  # connects on the first command only: none is sent
    typed: AsyncRedis = client  # the static half: mypy fails here when a signature stops matching
    assert isinstance(typed, AsyncRedis)


def test_replies_read_as_text_with_or_without_decoded_responses() -> None:
    assert as_text(b"douyin") == "douyin"
    assert as_text("douyin") == "douyin"
