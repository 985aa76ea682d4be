"""Sending a notification to a target: HTTP with retries and rate limits, apprise, or the console.

Retry rules: 5xx, connection errors and timeouts are retried with exponential backoff and full jitter; HTTP
429 (or a service's "too many messages" code) waits ``Retry-After`` when given, else backs off; any other
4xx, and a chat service's own error code (a bad signature, a bad body), fails at once, since sending the
same request again cannot help. Every attempt is signed afresh: Feishu and DingTalk reject timestamps more
than an hour old, and a long Retry-After can get there.

Nothing that leaves this module (``Delivery.error``, log records) contains a target's URL or secret: every
value of ``TargetSpec.secrets()`` is replaced by ``***``, in its plain and URL-encoded forms.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus

import aiohttp
from yarl import URL

from alerts.router.messages import Notification, render
from alerts.router.targets import (
    HttpRequest,
    TargetSpec,
    apprise_urls,
    build_request,
    is_rate_limited_body,
    rate_per_minute,
    response_error,
    split_for,
)

log = logging.getLogger("adpulse.router")

Verdict = Literal["sent", "retry", "rate_limited", "fail"]
MAX_ANSWER_BYTES = 64 * 1024  # enough for any chat service's answer; a larger one is cut
REDACTED = "***"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a failed send."""

    attempts: int = 5  # total attempts
    base_s: float = 0.5
    max_s: float = 30.0
    max_retry_after_s: float = 300.0  # a Retry-After longer than this: give up (failed, reason says so)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")

    def backoff_s(self, attempt: int, rng: Callable[[], float]) -> float:
        """The wait after failed attempt ``attempt`` (0 = the first): full jitter, rng() * the capped step."""
        # The exponent is capped so a large attempt number cannot overflow a float.
        step: float = self.base_s * 2 ** min(attempt, 64)
        return rng() * min(self.max_s, step)


@dataclass(frozen=True, slots=True)
class Delivery:
    """How sending one notification to one target ended."""

    outcome: str  # "sent" | "failed"
    attempts: int
    retries: int  # attempts that were retries (for adpulse_notifications_total{outcome="retried"})
    status: int | None  # last HTTP status (None for timeouts / non-HTTP)
    error: str | None  # redacted reason, e.g. "HTTP 400: code 19021: sign match fail ..."


class RateLimiter:
    """A token bucket per target: ``rate_per_minute`` sends a minute, ``burst`` at once; None = unlimited.

    ``acquire`` reserves the next free slot and sleeps until it, so concurrent callers queue up in order
    and a fake ``sleep`` in tests never makes it spin. The default burst of 1 spaces sends evenly: the
    services count per minute and DingTalk throttles a bot for ten minutes once it is over.
    """

    def __init__(
        self,
        rate_per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        *,
        burst: float = 1.0,
    ) -> None:
        if rate_per_minute is not None and not rate_per_minute > 0:
            raise ValueError(f"rate_per_minute must be > 0 or None, got {rate_per_minute}")
        self._per_s = None if rate_per_minute is None else rate_per_minute / 60.0
        self._clock = clock
        self._sleep = sleep
        self._burst = burst
        self._tokens = burst
        self._last = clock()

    async def acquire(self) -> None:
        """Wait until the target may be sent to again."""
        if self._per_s is None:
            return
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._last) * self._per_s)
        self._last = now
        self._tokens -= 1.0
        if self._tokens < 0:
            await self._sleep(-self._tokens / self._per_s)


def classify(spec: TargetSpec, status: int, body: bytes) -> Verdict:
    """What an HTTP answer means: ``sent``, ``retry`` (5xx), ``rate_limited`` (429 or a rate-limit code)
    or ``fail`` (any other 4xx or error code: sending it again cannot help)."""
    if status == 429 or is_rate_limited_body(spec, body):
        return "rate_limited"
    if status >= 500:
        return "retry"
    return "sent" if response_error(spec, status, body) is None else "fail"


def retry_after_s(headers: Mapping[str, str], now_s: float) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP-date), or Feishu's
    ``x-ogw-ratelimit-reset``; ``None`` when neither is there or readable."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in ("retry-after", "x-ogw-ratelimit-reset"):
        value = lowered.get(name, "").strip()
        if not value:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        if when.tzinfo is None:  # "-0000" in an HTTP-date means UTC too
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now_s)
    return None


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret, plain or URL-encoded, replaced by ``***``."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        forms.update({secret, quote(secret, safe=""), quote(secret), quote_plus(secret)})
        try:
            url = URL(secret)
            forms.update({str(url), url.human_repr()})
        except (TypeError, ValueError):
            pass
    for form in sorted(forms, key=len, reverse=True):
        if form:
            text = text.replace(form, REDACTED)
    return text


def require_apprise() -> ModuleType:
    """The apprise module, or a RuntimeError saying how to install it."""
    try:
        import apprise
    except ImportError as exc:
        raise RuntimeError(
            "the apprise target needs the apprise package: pip install 'adpulse[chat]'"
        ) from exc
    return apprise


@dataclass(frozen=True, slots=True)
class _Attempt:
    verdict: Verdict
    status: int | None
    reason: str | None
    wait_s: float | None = None


class Deliverer:
    """Sends notifications to targets, one rate limiter per target name; never raises for a failed send."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        policy: RetryPolicy = RetryPolicy(),
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        console: TextIO | None = None,
    ) -> None:
        self._session = session
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._console = console
        self._limiters: dict[str, RateLimiter] = {}

    async def deliver(self, spec: TargetSpec, n: Notification) -> Delivery:
        """Send ``n`` to ``spec``, retrying per the policy; a webhook gets one request per alert and is
        "sent" only when all of them are."""
        if not n.alerts:
            return Delivery("failed", 0, 0, None, "nothing to send: the notification has no alerts")
        if spec.type == "console":
            return self._print(spec, n)
        if spec.type == "apprise":
            return await self._apprise(spec, n)
        parts = split_for(spec, n)
        results = [await self._send(spec, _builder(spec, part)) for part in parts]
        failed = [(part, r) for part, r in zip(parts, results, strict=True) if r.outcome == "failed"]
        attempts, retries = sum(r.attempts for r in results), sum(r.retries for r in results)
        if not failed:
            return Delivery("sent", attempts, retries, results[-1].status, None)
        part, first = failed[0]
        error = first.error
        if len(parts) > 1:
            error = f"{len(failed)} of {len(parts)} alerts failed; alert {part.alerts[0].get('id')}: {error}"
        return Delivery("failed", attempts, retries, first.status, error)

    def _limiter(self, spec: TargetSpec) -> RateLimiter:
        if spec.name not in self._limiters:
            self._limiters[spec.name] = RateLimiter(rate_per_minute(spec), sleep=self._sleep)
        return self._limiters[spec.name]

    async def deliver_text(self, spec: TargetSpec, title: str, text: str) -> Delivery:
        """Print ``title`` and ``text`` (console), or send them through apprise: the targets without a
        request of their own (a digest uses it; HTTP targets take :meth:`deliver_request`)."""
        if spec.type == "console":
            print(f"{title}\n{text}\n", file=self._console or sys.stdout, flush=True)
            return Delivery("sent", 1, 0, None, None)
        return await self._apprise_text(spec, title, text)

    async def deliver_request(self, spec: TargetSpec, build: Callable[[float], HttpRequest]) -> Delivery:
        """Send the request ``build(now_s)`` makes (built, so signed, afresh for every attempt), with the same
        retries, rate limit and redaction as an alert's."""
        return await self._send(spec, build)

    async def _send(self, spec: TargetSpec, build: Callable[[float], HttpRequest]) -> Delivery:
        secrets = spec.secrets()
        attempts = 0
        while True:
            await self._limiter(spec).acquire()
            try:
                # Built after the rate limiter's wait, so the signed timestamp is as fresh as can be.
                request = build(self._clock())
            except (ValueError, TypeError) as exc:  # no url, or an alert orjson cannot write
                return self._failed(spec, attempts, None, f"cannot build the request: {exc}")
            attempts += 1
            log.debug("target %s: attempt %d of %d", spec.name, attempts, self._policy.attempts)
            result = await self._attempt(spec, request.url, request.body, request.headers)
            if result.verdict == "sent":
                log.info("target %s: sent (%d attempts)", spec.name, attempts)
                return Delivery("sent", attempts, attempts - 1, result.status, None)
            reason = result.reason or "failed"
            if result.verdict == "fail":
                return self._failed(spec, attempts, result.status, reason)
            if result.wait_s is not None and result.wait_s > self._policy.max_retry_after_s:
                reason += (
                    f"; Retry-After {result.wait_s:g} s is beyond the {self._policy.max_retry_after_s:g} s "
                    "this router waits"
                )
                return self._failed(spec, attempts, result.status, reason)
            if attempts >= self._policy.attempts:
                return self._failed(spec, attempts, result.status, f"{reason} ({attempts} attempts)")
            delay = result.wait_s
            if delay is None:
                delay = self._policy.backoff_s(attempts - 1, self._rng)
            log.warning(
                "target %s: %s; retrying in %.1f s (attempt %d of %d)",
                spec.name,
                redact(reason, secrets),
                delay,
                attempts,
                self._policy.attempts,
            )
            await self._sleep(delay)

    async def _attempt(self, spec: TargetSpec, url: str, body: bytes, headers: Mapping[str, str]) -> _Attempt:
        timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
        try:
            # encoded=True: the URL is sent as written; requoting would alter DingTalk's encoded sign.
            async with self._session.post(
                URL(url, encoded=True),
                data=body,
                headers=dict(headers),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                answer = await _read_capped(response.content, MAX_ANSWER_BYTES)
                status, answer_headers = response.status, response.headers
        except TimeoutError:
            return _Attempt("retry", None, f"timed out after {float(spec.timeout_s)} s")
        except (aiohttp.InvalidURL, ValueError):
            return _Attempt("fail", None, "invalid URL: check the target's url")
        except (aiohttp.ClientError, OSError) as exc:
            return _Attempt("retry", None, f"connection failed: {type(exc).__name__}: {exc}")
        verdict = classify(spec, status, answer)
        if verdict == "sent":
            return _Attempt("sent", status, None)
        reason = f"HTTP {status}: {response_error(spec, status, answer) or 'rate limited'}"
        wait_s = retry_after_s(answer_headers, self._clock()) if verdict == "rate_limited" else None
        return _Attempt(verdict, status, reason, wait_s)

    def _failed(self, spec: TargetSpec, attempts: int, status: int | None, reason: str) -> Delivery:
        error = redact(reason, spec.secrets())
        log.error("target %s: not delivered: %s", spec.name, error)
        return Delivery("failed", attempts, max(0, attempts - 1), status, error)

    def _print(self, spec: TargetSpec, n: Notification) -> Delivery:
        rendered = render(replace(n, locale=spec.locale))
        print(f"{rendered.title}\n{rendered.text}\n", file=self._console or sys.stdout, flush=True)
        return Delivery("sent", 1, 0, None, None)

    async def _apprise(self, spec: TargetSpec, n: Notification) -> Delivery:
        rendered = render(replace(n, locale=spec.locale))
        return await self._apprise_text(spec, rendered.title, rendered.text)

    async def _apprise_text(self, spec: TargetSpec, title: str, text: str) -> Delivery:
        try:
            apprise = require_apprise()
        except RuntimeError as exc:
            return self._failed(spec, 0, None, str(exc))
        _redact_apprise_log(spec.secrets())
        urls = apprise_urls(spec)
        if not urls:
            return self._failed(spec, 0, None, "no apprise URLs: set the target's url")
        notifier = apprise.Apprise()
        for i, url in enumerate(urls, 1):
            if not notifier.add(url):
                return self._failed(spec, 0, None, f"apprise URL #{i} is not valid: check its scheme")
        attempts = 0
        while True:
            attempts += 1
            try:
                ok = await asyncio.to_thread(notifier.notify, body=text, title=title)
            except Exception as exc:  # noqa: BLE001 - any apprise plugin may raise anything: a failed send
                ok, reason = False, f"apprise raised {type(exc).__name__}: {exc}"
            else:
                reason = "apprise could not notify every URL (its log says which)"
            if ok:
                log.info("target %s: sent via apprise (%d attempts)", spec.name, attempts)
                return Delivery("sent", attempts, attempts - 1, None, None)
            if attempts >= self._policy.attempts:
                return self._failed(spec, attempts, None, f"{reason} ({attempts} attempts)")
            delay = self._policy.backoff_s(attempts - 1, self._rng)
            log.warning("target %s: %s; retrying in %.1f s", spec.name, redact(reason, spec.secrets()), delay)
            await self._sleep(delay)


def _builder(spec: TargetSpec, part: Notification) -> Callable[[float], HttpRequest]:
    return lambda now_s: build_request(spec, part, now_s)


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < limit and (chunk := await stream.read(limit - len(chunks))):
        chunks += chunk
    return bytes(chunks)


class _RedactingFilter(logging.Filter):
    """Redacts records of the libraries apprise sends with: at DEBUG they log URLs and request lines."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = redact(record.getMessage(), self.secrets), None
        return True


_APPRISE_LOG_FILTER = _RedactingFilter()
# A logger's filters see only the records it creates itself, so each logger that writes them is named.
_APPRISE_LOGGERS = ("apprise", "urllib3.connectionpool")


def _redact_apprise_log(secrets: Iterable[str]) -> None:
    _APPRISE_LOG_FILTER.secrets.update(secrets)
    for name in _APPRISE_LOGGERS:
        logger = logging.getLogger(name)
        if _APPRISE_LOG_FILTER not in logger.filters:
            logger.addFilter(_APPRISE_LOG_FILTER)
