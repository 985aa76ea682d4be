"""Digests: the router posts the daily sheet (and the weekly review) at the times the routes file names.

``digests:`` in the routes file lists them (``report``, ``at`` in ``ADPULSE_TZ``, ``on`` for a weekly one,
``targets``). Every router runs a :class:`DigestScheduler`; a digest is due from its time on that day for
``CATCH_UP_S`` (a router down at 09:00 posts when it is back, not the next evening), and goes to each target
once: the router that takes the lease (``SET NX EX``) posts it, and a target's "sent" mark keeps it from being
posted twice, also across restarts. The daily digest covers the day before, the weekly one the ISO week
holding the day before (a Friday's review covers Monday to Thursday).

The card links to the full report and its chart, served by the router's HTTP endpoint (:func:`report_routes`)
at links signed with the router's token key (:mod:`alerts.router.digest_cards`).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from alerts.budgets import Budget
from alerts.report.charts import daily_charts, daily_kpi_chart, weekly_charts, weekly_kpi_chart
from alerts.report.daily import DailySheet
from alerts.report.render import daily_html, weekly_html
from alerts.report.store import load_daily, load_weekly
from alerts.report.weekly import WeeklyReview, monday_of
from alerts.router.config import Digest, RoutesConfig
from alerts.router.delivery import Deliverer, Delivery
from alerts.router.digest_cards import (
    DigestContent,
    ReportLinks,
    build_digest_request,
    daily_content,
    digest_text,
    verify_report,
    weekly_content,
)
from alerts.router.tokens import TokenError
from streams.keys import Keys

log = logging.getLogger("adpulse.router")

#: A digest missed at its time (the router was down) is still posted this long after it.
CATCH_UP_S = 6 * 3600.0
#: How long a router holds a digest while it posts it.
LEASE_S = 300
#: How long a "sent" mark is kept: longer than any catch-up window.
SENT_TTL_S = 40 * 86400
BudgetSource = Callable[[], Awaitable[Sequence[Budget]]]


async def no_budgets() -> Sequence[Budget]:
    """The budget source when none is given: reports without budget lines."""
    return ()


@dataclass(frozen=True, slots=True)
class ReportSource:
    """Where reports come from: Redis, its prefix, the zone and currency, and the budgets."""

    redis: Any
    prefix: str
    zone: ZoneInfo
    currency: str
    budgets: BudgetSource = no_budgets

    async def daily(self, day: date) -> DailySheet:
        return await load_daily(self.redis, self.prefix, day, self.zone, self.currency, await self.budgets())

    async def weekly(self, monday: date, today: date) -> WeeklyReview:
        return await load_weekly(
            self.redis, self.prefix, monday, today, self.zone, self.currency, await self.budgets()
        )


def period_of(digest: Digest, today: date) -> str:
    """The period a digest posted on ``today`` covers: the day before, or the ISO week holding it."""
    yesterday = today - timedelta(days=1)
    if digest.report == "daily":
        return yesterday.isoformat()
    iso = yesterday.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def due(digest: Digest, now_s: float, zone: ZoneInfo) -> bool:
    """Whether ``digest`` is to be posted at ``now_s``: on its day, from its time, for ``CATCH_UP_S``."""
    local = datetime.fromtimestamp(now_s, zone)
    at = datetime.combine(local.date(), digest.at, tzinfo=zone)
    return digest.due_on(local.weekday()) and 0 <= now_s - at.timestamp() < CATCH_UP_S


class DigestScheduler:
    """Posts the due digests of a routes file; :meth:`tick` does one round at a time (tests inject it)."""

    def __init__(
        self,
        config: RoutesConfig,
        source: ReportSource,
        deliverer: Deliverer,
        links: ReportLinks | None,
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = 30.0,
    ) -> None:
        self.config = config
        self.source = source
        self.deliverer = deliverer
        self.links = links
        self.clock = clock
        self.interval_s = interval_s
        self.keys = Keys(source.prefix)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``interval_s`` until ``stop`` is set; an error is logged and tried again next time."""
        while not stop.is_set():
            try:
                await self.tick(self.clock())
            except Exception:
                log.exception("router: digests failed this round; trying again in %.0f s", self.interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def tick(self, now_s: float) -> list[tuple[str, str, str, Delivery]]:
        """Post every digest due at ``now_s`` to each target that does not have it yet; returns
        ``(report, period, target, delivery)`` of each attempt."""
        done: list[tuple[str, str, str, Delivery]] = []
        redis = self.source.redis
        for digest in self.config.digests:
            if not due(digest, now_s, self.source.zone):
                continue
            today = datetime.fromtimestamp(now_s, self.source.zone).date()
            period = period_of(digest, today)
            marks = [self.keys.digest_sent(digest.report, period, t) for t in digest.targets]
            todo = [
                t for t, seen in zip(digest.targets, await redis.mget(marks), strict=True) if seen is None
            ]
            if not todo:
                continue
            lease = self.keys.digest_lease(digest.report, period)
            if not await redis.set(lease, b"1", nx=True, ex=LEASE_S):
                continue  # another router is posting it
            try:
                contents = await self._contents(digest, today, period, now_s, {self._locale(t) for t in todo})
                for target in todo:
                    delivery = await self._post(target, contents[self._locale(target)], now_s)
                    done.append((digest.report, period, target, delivery))
                    if delivery.outcome == "sent":
                        await redis.set(
                            self.keys.digest_sent(digest.report, period, target), b"1", ex=SENT_TTL_S
                        )
                        log.info("router: %s digest of %s sent to %s", digest.report, period, target)
                    else:
                        log.error(
                            "router: %s digest of %s to %s failed: %s",
                            digest.report,
                            period,
                            target,
                            delivery.error,
                        )
            finally:
                await redis.delete(lease)
        return done

    def _locale(self, target: str) -> str:
        return self.config.targets[target].locale

    async def _contents(
        self, digest: Digest, today: date, period: str, now_s: float, locales: set[str]
    ) -> dict[str, DigestContent]:
        report_url = self.links.page(digest.report, period, now_s) if self.links else None
        chart_url = self.links.chart(digest.report, period, now_s) if self.links else None
        if digest.report == "daily":
            sheet = await self.source.daily(date.fromisoformat(period))
            return {loc: daily_content(sheet, loc, report_url, chart_url) for loc in locales}
        review = await self.source.weekly(monday_of(today - timedelta(days=1)), today)
        return {loc: weekly_content(review, loc, report_url, chart_url) for loc in locales}

    async def _post(self, target: str, content: DigestContent, now_s: float) -> Delivery:
        spec = self.config.spec(target)
        if spec.type in ("console", "apprise"):
            title, text = digest_text(content)
            return await self.deliverer.deliver_text(spec, title, text)
        return await self.deliverer.deliver_request(spec, lambda at: build_digest_request(spec, content, at))


def report_routes(
    source: ReportSource, token_key: bytes | None, clock: Callable[[], float] = time.time
) -> list[web.RouteDef]:
    """``GET /r/<token>`` (the full report as HTML, charts inside) and ``GET /r/<token>/chart.png``."""

    def ref_of(request: web.Request) -> Any:
        if token_key is None:
            raise web.HTTPNotFound(text="report links are off: set ADPULSE_ROUTER_TOKEN_KEY on the router")
        try:
            return verify_report(request.match_info["token"], token_key, clock())
        except TokenError as exc:
            raise web.HTTPForbidden(text=str(exc)) from None

    async def build(ref: Any) -> DailySheet | WeeklyReview:
        today = datetime.fromtimestamp(clock(), source.zone).date()
        if ref.report == "daily":
            return await source.daily(date.fromisoformat(ref.period))
        year, _, week = ref.period.partition("-W")
        return await source.weekly(date.fromisocalendar(int(year), int(week), 1), today)

    async def page(request: web.Request) -> web.Response:
        report = await build(ref_of(request))
        charts = await asyncio.to_thread(_charts, report)
        text = daily_html(report, charts) if isinstance(report, DailySheet) else weekly_html(report, charts)
        return web.Response(
            text=text, content_type="text/html", headers={"Cache-Control": "private, max-age=300"}
        )

    async def chart(request: web.Request) -> web.Response:
        report = await build(ref_of(request))
        try:
            png = await asyncio.to_thread(_kpi_png, report)
        except RuntimeError as exc:  # matplotlib missing
            raise web.HTTPNotFound(text=html.escape(str(exc))) from None
        return web.Response(
            body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=300"}
        )

    return [web.get("/r/{token}", page), web.get("/r/{token}/chart.png", chart)]


def _kpi_png(report: DailySheet | WeeklyReview) -> bytes:
    return daily_kpi_chart(report) if isinstance(report, DailySheet) else weekly_kpi_chart(report)


def _charts(report: DailySheet | WeeklyReview) -> dict[str, tuple[bytes, str]]:
    try:
        return daily_charts(report) if isinstance(report, DailySheet) else weekly_charts(report)
    except RuntimeError:
        log.warning("router: report pages without charts: install adpulse[report] (matplotlib)")
        return {}
