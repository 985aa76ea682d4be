"""Digests on real Redis and real HTTP: at the configured time (injected, not waited for) the router posts
yesterday's sheet to a signed webhook, a Slack and a Feishu endpoint on loopback, and on Friday the weekly
review too; each once. The card links the chart and the full report, which the router's endpoint serves."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from adpulse.settings import Settings
from agents.snapshot import KpiRow
from alerts.report.daily import DayData
from alerts.report.model import MICROS, to_money, total
from alerts.router.config import parse_routes
from alerts.router.delivery import Deliverer, RetryPolicy
from alerts.router.digest import DigestScheduler, ReportSource, report_routes
from alerts.router.digest_cards import ReportLinks
from alerts.router.targets import feishu_sign
from alerts.router.web import make_app
from streams.keys import Keys
from tests.support import reports

pytestmark = pytest.mark.integration

KEY = b"k3y-for-digest-tests-0123456789abcdefXYZ"
SECRET = "hook-secret"
FRIDAY_9AM = datetime(2026, 11, 27, 9, 0, tzinfo=reports.ZONE).timestamp()
ROUTES = """
targets:
  hook: {type: webhook, url: "http://127.0.0.1:%(port)d/hook", secret: "%(secret)s", locale: en}
  slack: {type: slack, url: "http://127.0.0.1:%(port)d/slack", locale: en}
  feishu: {type: feishu, url: "http://127.0.0.1:%(port)d/feishu", secret: "%(secret)s", locale: zh-CN}
default_targets: [hook]
digests:
  - {report: daily, at: "09:00", targets: [hook, slack, feishu]}
  - {report: weekly, at: 09:00, day: friday, targets: [hook]}
"""


async def _store(client: Any, prefix: str, data: DayData) -> None:
    """A day's closed 1-day and 1-hour windows, written as the worker writes them."""
    keys = Keys(prefix)
    for channel, counts in data.channels.items():
        start = int(datetime(data.day.year, data.day.month, data.day.day, tzinfo=reports.ZONE).timestamp())
        rows = [("1d", start, start + 86400, counts)]
        rows += [("1h", int(t.timestamp()), int(t.timestamp()) + 3600, c) for t, c in data.hours[channel]]
        for window, lo, hi, c in rows:
            named = {
                "impressions": c.impressions,
                "clicks": c.clicks,
                "visits": c.visits,
                "carts": c.carts,
                "orders": c.orders,
                "gmv": c.gmv_micros / MICROS,
                "spend": c.spend_micros / MICROS,
                "new_customers": c.new_customers,
            }
            row = KpiRow(channel, "-", window, "closed", lo, hi, True, named)
            await client.hset(
                keys.closed_windows(window, data.day.isoformat()),
                f"{channel}|-|{lo}",
                orjson.dumps(row.to_json(reports.ZONE)),
            )


@asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _chat_server(received: dict[str, list[web.Request | Any]]) -> web.Application:
    async def take(request: web.Request) -> web.Response:
        body = await request.read()
        received.setdefault(request.path, []).append((dict(request.headers), body, request.query))
        if request.path == "/feishu":
            return web.json_response({"code": 0, "msg": "success"})
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes([web.post("/hook", take), web.post("/slack", take), web.post("/feishu", take)])
    return app


def test_digests_reach_their_targets_at_the_configured_time_with_the_chart_linked(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    asyncio.run(_run(settings))


async def _run(settings: Settings) -> None:
    prefix = settings.redis_prefix
    client = aioredis.from_url(settings.redis_url)
    received: dict[str, list[Any]] = {}
    clock = lambda: FRIDAY_9AM  # noqa: E731 - the injected time
    monday = reports.MONDAY
    week = [monday + timedelta(days=i) for i in range(4)] + [monday - timedelta(days=7 - i) for i in range(4)]
    stored = {d: reports.day_data(d, drop=d == reports.DAY) for d in week}
    for data in stored.values():
        await _store(client, prefix, data)
    for alert in reports.alerts():
        await client.xadd(Keys(prefix).alerts, {"alert": orjson.dumps(alert)})
    source = ReportSource(client, prefix, reports.ZONE, "CNY")
    router_app = make_app(
        client,
        prefix,
        CollectorRegistry(),
        KEY,
        reports.ZONE,
        clock=clock,
        routes=report_routes(source, KEY, clock=clock),
    )
    try:
        async with (
            _serve(_chat_server(received)) as chat_port,
            _serve(router_app) as router_port,
            aiohttp.ClientSession() as session,
        ):
            config = parse_routes(ROUTES % {"port": chat_port, "secret": SECRET}, env={})
            links = ReportLinks(KEY, f"http://127.0.0.1:{router_port}")
            scheduler = DigestScheduler(
                config, source, Deliverer(session, RetryPolicy(attempts=1)), links, clock=clock
            )

            assert await scheduler.tick(FRIDAY_9AM - 60) == []  # a minute early: nothing
            assert received == {}
            done = await scheduler.tick(FRIDAY_9AM)
            assert sorted((r, p, t, d.outcome) for r, p, t, d in done) == [
                ("daily", "2026-11-26", "feishu", "sent"),
                ("daily", "2026-11-26", "hook", "sent"),
                ("daily", "2026-11-26", "slack", "sent"),
                ("weekly", "2026-W48", "hook", "sent"),
            ]
            assert await scheduler.tick(FRIDAY_9AM + 300) == []  # each target has it once
            assert await scheduler.tick(FRIDAY_9AM + 86400) != []  # Saturday: Friday's daily sheet

            # The webhook: signed, with the sheet's figures and the links.
            (headers, body, _), (weekly_headers, weekly_body, _) = received["/hook"][:2]
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Adpulse-Signature"] == expected
            daily = orjson.loads(body)
            thursday = stored[date(2026, 11, 26)]
            assert daily["report"] == "daily" and daily["period"] == "2026-11-26"
            assert daily["data"]["total"]["gmv"] == float(
                to_money(total(thursday.channels.values()).gmv_micros)
            )
            assert len(daily["data"]["rows"]) == 4
            weekly = orjson.loads(weekly_body)
            assert weekly["period"] == "2026-W48"
            assert weekly["data"]["days"] == ["2026-11-23", "2026-11-24", "2026-11-25", "2026-11-26"]
            assert any(r.startswith("Pause baidu: ROI 0.90 < 1") for r in weekly["data"]["recommendations"])
            assert any("CTR \u221252 % 14:00–15:00, resolved 15:20" in a for a in weekly["data"]["alerts"])

            # The chart and the full report, served by the router at the signed links.
            async with session.get(daily["chart_url"]) as chart:
                assert chart.status == 200 and chart.content_type == "image/png"
                assert (await chart.read()).startswith(b"\x89PNG")
            async with session.get(daily["report_url"]) as page:
                text = await page.text()
                assert page.status == 200 and "Daily sheet · 2026-11-26" in text and "data:image/png" in text
            async with session.get(weekly["report_url"]) as page:
                assert page.status == 200 and "Weekly review · 2026-W48" in await page.text()
            forged = daily["report_url"].replace("/r/", "/r/x")
            async with session.get(forged) as page:
                assert page.status == 403

            # Slack shows the chart as an image; Feishu gets a signed card with the report button.
            slack = orjson.loads(received["/slack"][0][1])
            assert {"type": "image", "image_url": daily["chart_url"], "alt_text": "Chart"} in slack["blocks"]
            feishu = orjson.loads(received["/feishu"][0][1])
            assert feishu["sign"] == feishu_sign(SECRET, feishu["timestamp"])
            card = orjson.dumps(feishu["card"]).decode()
            assert "日报 2026-11-26" in card and daily["report_url"] in card and "完整报表" in card
    finally:
        await client.aclose()


def test_a_daily_digest_says_so_when_the_day_has_no_data() -> None:
    from alerts.report.daily import build_daily
    from alerts.router.digest_cards import daily_content, digest_text

    sheet = build_daily(DayData(reports.DAY, {}), [], reports.ZONE, "CNY")
    title, text = digest_text(daily_content(sheet, "en", "https://r/1", "https://r/1/chart.png"))
    assert title == "📊 Daily sheet 2026-11-24"
    assert text.splitlines()[0] == "No data stored for this period."
    assert "Full report: https://r/1" in text
