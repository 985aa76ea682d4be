"""Delivery against real local HTTP servers (aiohttp on 127.0.0.1): servers that check Feishu's and
DingTalk's signatures the way those services document them, the generic webhook's HMAC, and injected faults
(500s, 429 with Retry-After, 400s, hangs). Waits go through a recording ``sleep`` instead of the clock,
except the real request timeouts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from alerts.router.delivery import Deliverer, Delivery, RetryPolicy
from alerts.router.messages import Notification
from alerts.router.targets import TargetSpec, build_request
from tests.support.alerts import ALERT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SECRET = "SEC0a1b2c3d4e5f"
CANARY = "adpulse-canary-7f3a"
NOTE = Notification((ALERT,), owners=("@zhang.wei", "13800000000"))
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    """A local stand-in for a chat service: its URL and every request it received."""

    url: str
    requests: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serve(handler: Handler, path: str = "/hook") -> AsyncIterator[Server]:
    """An aiohttp server on a free loopback port calling ``handler``; hanging handlers end at teardown."""
    release = asyncio.Event()
    server = Server(url="")

    async def recording(request: web.Request) -> web.StreamResponse:
        server.requests.append((str(request.rel_url), await request.read(), dict(request.headers)))
        handled = asyncio.ensure_future(handler(request))
        released = asyncio.ensure_future(release.wait())
        await asyncio.wait({handled, released}, return_when=asyncio.FIRST_COMPLETED)
        released.cancel()
        if not handled.done():
            handled.cancel()
            return web.Response(status=503)
        return handled.result()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recording)
    # No access log: it would print the secret-bearing paths this test checks our own logs for.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}{path}"
    try:
        yield server
    finally:
        release.set()
        await runner.cleanup()


class Sleeps:
    """A ``sleep`` that records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def deliver(
    target: TargetSpec,
    n: Notification,
    handler: Handler,
    *,
    policy: RetryPolicy | None = None,
    clock: Callable[[], float] = time.time,
    url: Callable[[str], str] | None = None,
) -> tuple[Delivery, Server, Sleeps]:
    """Deliver ``n`` to ``target`` aimed at a fresh server (``url`` maps its URL); returns the waits."""
    sleeps = Sleeps()

    async def main() -> tuple[Delivery, Server]:
        async with serve(handler) as server, aiohttp.ClientSession() as session:
            spec = TargetSpec(**{**_fields(target), "url": url(server.url) if url else server.url})
            deliverer = Deliverer(
                session, policy or RetryPolicy(), clock=clock, sleep=sleeps, rng=lambda: 1.0
            )
            return await deliverer.deliver(spec, n), server

    delivery, server = asyncio.run(main())
    return delivery, server, sleeps


def _fields(spec: TargetSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in TargetSpec.__dataclass_fields__}


def answers(*responses: Callable[[], web.Response]) -> Handler:
    """A handler giving the responses in turn, the last one from then on."""
    remaining = list(responses)

    async def handler(request: web.Request) -> web.Response:
        return (remaining.pop(0) if len(remaining) > 1 else remaining[0])()

    return handler


def ok() -> web.Response:
    return web.Response(status=200, text="ok")


# -- servers that check signatures like the real services -----------------------------------------------


def feishu_service(secret: str) -> Handler:
    """Feishu's custom bot: sign = base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b"")), the
    timestamp (seconds) within an hour of the server's clock; else HTTP 200 with code 19021."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        timestamp, sign = body.get("timestamp"), body.get("sign")
        expected = base64.b64encode(
            hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
        ).decode()
        if (
            not isinstance(timestamp, str)
            or not isinstance(sign, str)
            or abs(time.time() - int(timestamp)) > 3600
            or not hmac.compare_digest(sign, expected)
        ):
            return web.json_response(
                {
                    "code": 19021,
                    "msg": "sign match fail or timestamp is not within one hour from current time",
                }
            )
        if body.get("msg_type") != "interactive" or "header" not in body.get("card", {}):
            return web.json_response({"code": 9499, "msg": "Bad Request"}, status=400)
        return web.json_response(
            {"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}
        )

    return handler


def dingtalk_service(secret: str, token: str) -> Handler:
    """DingTalk's custom robot: ``timestamp`` (ms, within an hour) and ``sign`` in the query, where the
    URL-decoded sign is base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")); else errcode
    310000."""

    async def handler(request: web.Request) -> web.Response:
        query = request.query  # URL-decoded, as the service reads it
        if query.get("access_token") != token:
            return web.json_response({"errcode": 300001, "errmsg": "token is not exist"})
        timestamp, sign = query.get("timestamp", ""), query.get("sign", "")
        digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
        if (
            not timestamp.isdigit()
            or abs(time.time() * 1000 - int(timestamp)) > 3600_000
            or not hmac.compare_digest(sign, base64.b64encode(digest).decode())
        ):
            return web.json_response({"errcode": 310000, "errmsg": "sign not match"})
        body = await request.json()
        text = body["markdown"]["text"]
        if any(f"@{mobile}" not in text for mobile in body["at"]["atMobiles"]):
            return web.json_response({"errcode": 400, "errmsg": "mention missing from the text"})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    return handler


def webhook_service(secret: str) -> Handler:
    """The generic webhook's receiver: X-Adpulse-Signature must be sha256=<hex HMAC-SHA256(secret, body)>."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Adpulse-Signature", ""), expected):
            return web.Response(status=401, text="bad signature")
        return web.Response(status=204)

    return handler


def test_feishu_signed_card_is_accepted() -> None:
    target = TargetSpec("douyin-team", "feishu", secret=SECRET)
    delivery, server, sleeps = deliver(target, NOTE, feishu_service(SECRET))
    assert delivery == Delivery("sent", 1, 0, 200, None)
    body = orjson.loads(server.requests[0][1])
    assert body["card"]["header"]["template"] == "red" and body["timestamp"].isdigit()
    assert sleeps.waits == []


@pytest.mark.parametrize(
    ("secret", "clock"),
    [("SECwrong", time.time), (SECRET, lambda: time.time() - 7200)],
    ids=["wrong-secret", "stale-timestamp"],
)
def test_feishu_rejects_a_bad_signature_without_retries(secret: str, clock: Callable[[], float]) -> None:
    target = TargetSpec("douyin-team", "feishu", secret=secret)
    delivery, server, sleeps = deliver(target, NOTE, feishu_service(SECRET), clock=clock)
    assert (delivery.outcome, delivery.attempts, delivery.retries, delivery.status) == ("failed", 1, 0, 200)
    assert delivery.error is not None and "code 19021: sign match fail" in delivery.error
    assert len(server.requests) == 1 and sleeps.waits == []


def test_dingtalk_signed_url_is_accepted_and_mentions_ring() -> None:
    target = TargetSpec("tmall-team", "dingtalk", secret=SECRET)
    delivery, server, _ = deliver(
        target,
        NOTE,
        dingtalk_service(SECRET, "tok123"),
        url=lambda u: u.replace("/hook", "/robot/send?access_token=tok123"),
    )
    assert delivery == Delivery("sent", 1, 0, 200, None)
    assert server.requests[0][0].startswith("/robot/send?access_token=tok123&timestamp=")


def test_dingtalk_wrong_secret_fails_at_once() -> None:
    target = TargetSpec("tmall-team", "dingtalk", secret="SECwrong")
    delivery, server, _ = deliver(
        target, NOTE, dingtalk_service(SECRET, "tok123"), url=lambda u: f"{u}?access_token=tok123"
    )
    assert (delivery.outcome, delivery.attempts, delivery.retries) == ("failed", 1, 0)
    assert delivery.error == "HTTP 200: code 310000: sign not match"
    assert len(server.requests) == 1


def test_webhook_hmac_is_accepted_per_alert_of_a_burst() -> None:
    second = {**ALERT, "id": "d4e5f6", "severity": "warning"}
    target = TargetSpec("ops-hook", "webhook", secret=SECRET)
    delivery, server, _ = deliver(target, Notification((ALERT, second)), webhook_service(SECRET))
    assert delivery == Delivery("sent", 2, 0, 204, None)
    assert [orjson.loads(body)["id"] for _, body, _ in server.requests] == ["a1b2c3", "d4e5f6"]
    assert [headers["Idempotency-Key"] for _, _, headers in server.requests] == [
        "a1b2c3:ops-hook",
        "d4e5f6:ops-hook",
    ]


def test_webhook_wrong_secret_fails_without_retries() -> None:
    target = TargetSpec("ops-hook", "webhook", secret="wrong")
    delivery, server, sleeps = deliver(target, NOTE, webhook_service(SECRET))
    assert delivery == Delivery("failed", 1, 0, 401, "HTTP 401: bad signature")
    assert len(server.requests) == 1 and sleeps.waits == []


# -- injected faults ---------------------------------------------------------------------------------------

HOOK = TargetSpec("ops-hook", "webhook", secret=SECRET)


def test_500_then_200_is_sent_after_a_retry() -> None:
    delivery, _, sleeps = deliver(HOOK, NOTE, answers(lambda: web.Response(status=500), ok))
    assert delivery == Delivery("sent", 2, 1, 200, None)
    assert sleeps.waits == [0.5], "one backoff step (rng=1: the full base)"


def test_every_attempt_is_signed_afresh() -> None:
    ticks = iter(range(1_800_000_000, 1_800_000_100, 7))
    target = TargetSpec("douyin-team", "feishu", secret=SECRET, rate_per_minute=1e6)
    handler = answers(
        lambda: web.Response(status=502),
        lambda: web.Response(status=503),
        lambda: web.json_response({"code": 0, "msg": "success"}),
    )
    delivery, server, _ = deliver(target, NOTE, handler, clock=lambda: float(next(ticks)))
    assert delivery.outcome == "sent" and delivery.attempts == 3
    stamps = [orjson.loads(body)["timestamp"] for _, body, _ in server.requests]
    signs = {orjson.loads(body)["sign"] for _, body, _ in server.requests}
    assert stamps == ["1800000000", "1800000007", "1800000014"] and len(signs) == 3


def test_429_waits_retry_after_then_sends() -> None:
    limited = answers(lambda: web.Response(status=429, headers={"Retry-After": "1"}), ok)
    delivery, _, sleeps = deliver(HOOK, NOTE, limited)
    assert delivery == Delivery("sent", 2, 1, 200, None)
    assert sleeps.waits == [1.0]


def test_429_waits_really_about_a_second_with_the_real_sleep() -> None:
    async def main() -> tuple[Delivery, float]:
        limited = answers(lambda: web.Response(status=429, headers={"Retry-After": "1"}), ok)
        async with serve(limited) as server, aiohttp.ClientSession() as session:
            spec = TargetSpec("ops-hook", "webhook", url=server.url)
            started = time.monotonic()
            delivery = await Deliverer(session).deliver(spec, NOTE)
            return delivery, time.monotonic() - started

    delivery, elapsed = asyncio.run(main())
    assert delivery.outcome == "sent" and 0.9 <= elapsed < 3.0


@pytest.mark.parametrize(
    ("kind", "url", "answer"),
    [
        ("dingtalk", "", lambda: web.json_response({"errcode": 130101, "errmsg": "send too fast"})),
        ("feishu", "", lambda: web.json_response({"code": 9499, "msg": "too many request"}, status=400)),
        ("wecom", "", lambda: web.json_response({"errcode": 45009, "errmsg": "api freq out of limit"})),
    ],
)
def test_a_rate_limit_code_backs_off_and_retries(
    kind: str, url: str, answer: Callable[[], web.Response]
) -> None:
    success = {"dingtalk": {"errcode": 0}, "feishu": {"code": 0}, "wecom": {"errcode": 0}}[kind]
    target = TargetSpec(f"{kind}-team", kind, rate_per_minute=1e6)
    delivery, _, sleeps = deliver(target, NOTE, answers(answer, lambda: web.json_response(success)))
    assert (delivery.outcome, delivery.attempts, delivery.retries) == ("sent", 2, 1)
    assert sleeps.waits[-1] == 0.5


def test_400_fails_after_exactly_one_attempt() -> None:
    delivery, server, sleeps = deliver(
        HOOK, NOTE, answers(lambda: web.Response(status=400, text="no such hook"))
    )
    assert delivery == Delivery("failed", 1, 0, 400, "HTTP 400: no such hook")
    assert len(server.requests) == 1 and sleeps.waits == []


def test_a_hanging_server_is_retried_then_fails_with_a_timeout() -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return ok()

    target = TargetSpec("ops-hook", "webhook", timeout_s=0.2)
    started = time.monotonic()
    delivery, server, sleeps = deliver(target, NOTE, hang, policy=RetryPolicy(attempts=3))
    assert delivery == Delivery("failed", 3, 2, None, "timed out after 0.2 s (3 attempts)")
    assert len(server.requests) == 3 and sleeps.waits == [0.5, 1.0]
    assert time.monotonic() - started < 5.0


def test_retry_after_beyond_the_limit_fails_at_once() -> None:
    limited = answers(lambda: web.Response(status=429, headers={"Retry-After": "600"}))
    delivery, _, sleeps = deliver(HOOK, NOTE, limited, policy=RetryPolicy(max_retry_after_s=300))
    assert (delivery.outcome, delivery.attempts, delivery.status) == ("failed", 1, 429)
    assert delivery.error is not None and "Retry-After 600 s is beyond the 300 s" in delivery.error
    assert sleeps.waits == []


def test_5xx_forever_gives_up_after_the_policy_attempts() -> None:
    delivery, _, sleeps = deliver(HOOK, NOTE, answers(lambda: web.Response(status=503)))
    assert (delivery.outcome, delivery.attempts, delivery.retries) == ("failed", 5, 4)
    assert delivery.error == "HTTP 503: Service Unavailable (5 attempts)"
    assert sleeps.waits == [0.5, 1.0, 2.0, 4.0]


def test_a_burst_is_sent_only_when_every_alert_is() -> None:
    async def second_fails(request: web.Request) -> web.Response:
        body = await request.json()
        return ok() if body["id"] == "a1b2c3" else web.Response(status=400, text="rejected")

    burst = Notification((ALERT, {**ALERT, "id": "zz9"}))
    delivery, _, _ = deliver(HOOK, burst, second_fails)
    assert (delivery.outcome, delivery.attempts, delivery.status) == ("failed", 2, 400)
    assert delivery.error == "1 of 2 alerts failed; alert zz9: HTTP 400: rejected"


def test_the_type_default_rate_limit_spaces_sends_to_a_target() -> None:
    sleeps = Sleeps()

    async def main() -> list[Delivery]:
        ok_answer = answers(lambda: web.json_response({"errcode": 0}))
        async with serve(ok_answer) as server, aiohttp.ClientSession() as session:
            deliverer = Deliverer(session, sleep=sleeps)
            spec = TargetSpec("tmall-team", "dingtalk", url=server.url)  # DingTalk: 20 a minute
            return [await deliverer.deliver(spec, NOTE) for _ in range(3)]

    assert [d.outcome for d in asyncio.run(main())] == ["sent"] * 3
    # The sleep is fake, so the second reservation still waits its 3 s and the third 6 s.
    assert sleeps.waits == pytest.approx([3.0, 6.0], abs=0.5)


def test_a_target_without_url_fails_without_sending() -> None:
    async def main() -> Delivery:
        async with aiohttp.ClientSession() as session:
            return await Deliverer(session).deliver(TargetSpec("x", "slack"), NOTE)

    delivery = asyncio.run(main())
    assert (delivery.outcome, delivery.attempts, delivery.status) == ("failed", 0, None)
    assert delivery.error is not None and "no url" in delivery.error


# -- secrets never leak ------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_canary_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.DEBUG):
        yield
    leaked = [r.getMessage() for r in caplog.records if CANARY in r.getMessage()]
    assert not leaked
    assert any(r.name == "adpulse.router" for r in caplog.records), "the router does log"


def canary_spec(kind: str, url: str) -> TargetSpec:
    return TargetSpec(f"{kind}-team", kind, url=url, secret=CANARY, timeout_s=0.5)


def test_a_server_echoing_the_url_and_secret_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=400, text=f"bad request to {request.url} with {body[:300]!r} key={CANARY}")

    with no_canary_in_logs(caplog):
        for kind in ("feishu", "dingtalk", "webhook", "slack", "wecom"):
            target = canary_spec(kind, "")
            delivery, server, _ = deliver(target, NOTE, echo, url=lambda u: f"{u}/{CANARY}?key={CANARY}")
            assert delivery.outcome == "failed" and delivery.error is not None
            assert CANARY not in delivery.error and "bad request to" in delivery.error
            assert CANARY in server.requests[0][0], "the canary really was in the URL"


def test_connection_failures_leak_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    urls = [
        f"http://127.0.0.1:{closed_port}/{CANARY}?access_token={CANARY}",
        f"http://127.0.0.1:99999/{CANARY}",
        f"http://user:{CANARY}@127.0.0.1:{closed_port}/hook",
        f"http://[{CANARY}]/hook",
    ]

    async def main() -> list[tuple[TargetSpec, Delivery]]:
        sleeps = Sleeps()
        async with aiohttp.ClientSession() as session:
            deliverer = Deliverer(session, RetryPolicy(attempts=2), sleep=sleeps)
            return [(s, await deliverer.deliver(s, NOTE)) for s in (canary_spec("webhook", u) for u in urls)]

    with no_canary_in_logs(caplog):
        results = asyncio.run(main())
    for target, delivery in results:
        assert delivery.outcome == "failed" and delivery.error
        assert CANARY not in delivery.error
        assert CANARY not in repr(target) and CANARY not in repr(build_request(target, NOTE, time.time()))
    assert "connection failed" in (results[0][1].error or "") and results[0][1].attempts == 2


def test_timeouts_leak_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return ok()

    with no_canary_in_logs(caplog):
        delivery, _, _ = deliver(
            TargetSpec("x", "feishu", secret=CANARY, timeout_s=0.1, rate_per_minute=1e6),
            NOTE,
            hang,
            policy=RetryPolicy(attempts=2),
            url=lambda u: f"{u}/{CANARY}",
        )
    assert delivery.error == "timed out after 0.1 s (2 attempts)"


# -- console and apprise -----------------------------------------------------------------------------------


def test_console_prints_title_and_text() -> None:
    out = io.StringIO()

    async def main() -> Delivery:
        async with aiohttp.ClientSession() as session:
            return await Deliverer(session, console=out).deliver(
                TargetSpec("console", "console", locale="en"), NOTE
            )

    assert asyncio.run(main()) == Delivery("sent", 1, 0, None, None)
    printed = out.getvalue()
    assert printed.startswith("🔴 [critical] douyin CTR fell 52 %\n") and ALERT["summary"] in printed


def test_apprise_posts_through_its_json_plugin(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("apprise")
    got: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.json())
        return ok()

    with no_canary_in_logs(caplog):
        delivery, _, _ = deliver(
            TargetSpec("many", "apprise", locale="en"),
            NOTE,
            receive,
            url=lambda u: u.replace("http://", "json://") + f"/{CANARY}",
        )
    assert delivery == Delivery("sent", 1, 0, None, None)
    assert got[0]["title"] == "🔴 [critical] douyin CTR fell 52 %" and ALERT["summary"] in got[0]["message"]


def test_apprise_failure_is_retried_per_policy_then_failed() -> None:
    pytest.importorskip("apprise")
    delivery, server, sleeps = deliver(
        TargetSpec("many", "apprise"),
        NOTE,
        answers(lambda: web.Response(status=500)),
        policy=RetryPolicy(attempts=2),
        url=lambda u: u.replace("http://", "json://"),
    )
    assert (delivery.outcome, delivery.attempts, delivery.retries) == ("failed", 2, 1)
    assert len(server.requests) == 2 and sleeps.waits == [0.5]


def test_an_invalid_apprise_url_fails_without_echoing_it() -> None:
    pytest.importorskip("apprise")
    delivery, server, _ = deliver(
        TargetSpec("many", "apprise"), NOTE, answers(ok), url=lambda u: f"nosuchscheme://{CANARY}"
    )
    assert delivery.outcome == "failed" and delivery.attempts == 0
    assert delivery.error == "apprise URL #1 is not valid: check its scheme"
    assert server.requests == []
