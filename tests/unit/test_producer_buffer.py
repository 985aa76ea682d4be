"""The Faust producer buffer's flush, which runs before every source-offset commit, must drain it.

Faust's own flush returns once 0.1 s pass without a message going out; then the commit can run ahead of
the changelog writes it covers, and a kill -9 loses table updates. Here the sending is slow on purpose
(0.25 s a message, as on a loaded broker) and no broker is needed: the topic the messages go to is the
only fake; the buffers, their sending task and their flush are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.producer import ProducerBuffer

from streams.app import DrainingBuffer, make_app

SEND_S = 0.25


class SlowChannel:
    """Where buffered messages go: a topic whose broker answers slowly. Counts what went out."""

    def __init__(self) -> None:
        self.sent = 0

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(SEND_S)
        self.sent += 1


def _buffer(buffer_type: type[ProducerBuffer]) -> ProducerBuffer:
    buffer = buffer_type()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    return buffer


def _message(channel: SlowChannel) -> Any:
    return SimpleNamespace(message=SimpleNamespace(channel=channel))


async def _flush_with_buffered(buffer_type: type[ProducerBuffer], messages: int) -> tuple[int, int]:
    """Buffer ``messages``, flush; how many had gone out when flush returned, and how many were buffered."""
    buffer, channel = _buffer(buffer_type), SlowChannel()
    await buffer.start()
    try:
        for _ in range(messages):
            buffer.put(_message(channel))
        await buffer.flush()
        sent_when_flushed = channel.sent
        while (
            channel.sent < messages
        ):  # let the rest go out: stopping with messages buffered is an error in Faust
            await asyncio.sleep(SEND_S)
        return sent_when_flushed, messages
    finally:
        await buffer.stop()


def test_flush_waits_for_every_message_buffered_before_it() -> None:
    started = time.monotonic()
    sent, buffered = asyncio.run(_flush_with_buffered(DrainingBuffer, 4))
    assert sent == buffered == 4
    assert time.monotonic() - started >= 4 * SEND_S * 0.9  # it did wait for the slow sends (no upper bound)


def test_faust_s_own_flush_returns_with_messages_unsent() -> None:
    """Why DrainingBuffer exists. If a Faust release fixes this, this test says so and the subclass can go."""
    sent, buffered = asyncio.run(_flush_with_buffered(ProducerBuffer, 4))
    assert sent < buffered


def test_flush_on_a_stopped_buffer_with_messages_unsent_is_an_error() -> None:
    async def main() -> None:
        buffer = _buffer(DrainingBuffer)
        buffer.put(_message(SlowChannel()))
        with pytest.raises(RuntimeError, match="messages unsent"):
            await buffer.flush()  # never started: nothing will ever send it

    asyncio.run(main())


def test_the_worker_s_faust_app_uses_the_draining_buffer(tmp_path: Any) -> None:
    app = make_app(
        "adpulse-test",
        "127.0.0.1:9",
        partitions=4,
        web_host="127.0.0.1",
        web_port=6066,
        datadir=str(tmp_path),
    )
    assert isinstance(app.producer.buffer, DrainingBuffer)
