"""The part of ``redis.asyncio.Redis`` that the worker's and the alerts' code use, as a Protocol. Pure.

Code that talks to Redis takes an :class:`AsyncRedis` rather than ``Any``: production passes the real client,
a unit test may pass a fake, and mypy checks every call against the command's signature. The parameter types
are redis-py's own (``redis.typing``), spelled out here so that this module imports no client library, except
for ``hset``'s ``mapping`` keys: redis-py types them as its whole field union, and a mapping's key type is
invariant, so a ``dict[str, bytes]`` would not pass; ``Any`` lets it through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

#: What redis-py encodes as a command argument (``redis.typing.EncodableT``).
Encodable = bytes | bytearray | memoryview | str | int | float
#: A key (``redis.typing.KeyT``).
Key = bytes | str | memoryview
#: One stream entry as ``XRANGE`` returns it: the id and the fields.
StreamEntry = tuple[bytes | str | None, dict[bytes | str, bytes | str] | None]


def as_text(reply: bytes | str) -> str:
    """A key or field from a reply as text, whether or not the client decodes responses."""
    return reply.decode() if isinstance(reply, bytes) else reply


class RedisPipeline(Protocol):
    """Commands queued on ``pipeline(transaction=False)`` and sent together by ``execute``."""

    def hset(
        self,
        name: Key,
        key: Encodable | None = None,
        value: Encodable | None = None,
        mapping: Mapping[Any, Encodable] | None = None,
    ) -> object: ...

    def hdel(self, name: Key, *keys: Encodable) -> object: ...

    def hincrby(self, name: Key, key: Encodable, amount: int = 1) -> object: ...

    def hgetall(self, name: Key) -> object: ...

    def expire(self, name: Key, time: int) -> object: ...

    def delete(self, *names: Key) -> object: ...

    def zadd(self, name: Key, mapping: Mapping[Any, Encodable]) -> object: ...

    def zremrangebyscore(self, name: Key, min: float | str, max: float | str) -> object: ...

    async def execute(self) -> list[Any]: ...


class LuaScript(Protocol):
    """A script registered with ``register_script``: called with its keys and arguments."""

    def __call__(
        self, keys: Sequence[Key] | None = None, args: Iterable[Encodable] | None = None
    ) -> Awaitable[Any]: ...


@runtime_checkable
class AsyncRedis(Protocol):
    """The commands adpulse's domain code sends; ``redis.asyncio.Redis`` has them all."""

    def hget(self, name: Key, key: Encodable) -> Awaitable[bytes | str | None]: ...

    def hgetall(self, name: Key) -> Awaitable[dict[bytes | str, bytes | str]]: ...

    def hset(
        self,
        name: Key,
        key: Encodable | None = None,
        value: Encodable | None = None,
        mapping: Mapping[Any, Encodable] | None = None,
    ) -> Awaitable[int]: ...

    def hsetnx(self, name: Key, key: Encodable, value: Encodable) -> Awaitable[int]: ...

    def hkeys(self, name: Key) -> Awaitable[list[bytes | str]]: ...

    def hdel(self, name: Key, *keys: Encodable) -> Awaitable[int]: ...

    def delete(self, *names: Key) -> Awaitable[int]: ...

    def zrangebyscore(self, name: Key, min: float | str, max: float | str) -> Awaitable[list[Any]]: ...

    def xrevrange(
        self, name: Key, max: Key | int = "+", min: Key | int = "-", count: int | None = None
    ) -> Awaitable[list[StreamEntry] | None]: ...

    def register_script(self, script: Key) -> LuaScript: ...

    def pipeline(self, transaction: bool = True) -> RedisPipeline: ...
