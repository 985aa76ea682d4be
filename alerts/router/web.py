"""The router's HTTP endpoint: ``/metrics``, ``/healthz`` and the action links of chat messages.

``GET /a/<token>`` shows what the link will do and a button; ``POST /a/<token>`` does it. Chat apps fetch
links to preview them, so a GET never acts. An acknowledge or snooze link acts on the episode it was sent
for only: once that episode is over (resolved, or fired again since) the link says so and changes nothing,
so an old message cannot overwrite what someone decided about the current episode.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from alerts.acks import acknowledge, approve, find_active
from alerts.router.tokens import Action, TokenError, verify

log = logging.getLogger("adpulse.router")

_VERBS = {
    "ack": ("Acknowledge", "acknowledged: no more repeats or escalation of this episode"),
    "snooze": ("Snooze", "snoozed: no repeats of this episode until {until}; if it fires again, it pages"),
    "approve": ("Approve the budget past 80 %", "approved: spending may go on this period"),
}


def make_app(
    redis: Any,
    prefix: str,
    registry: CollectorRegistry,
    token_key: bytes | None,
    zone: ZoneInfo,
    ready: Callable[[], bool] = lambda: True,
    clock: Callable[[], float] = time.time,
    routes: Sequence[web.RouteDef] = (),
) -> web.Application:
    """The aiohttp application; action links answer 404 when no token key is configured. ``routes`` are
    served too (the report pages of :mod:`alerts.router.digest`)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    def action_of(request: web.Request) -> Action:
        if token_key is None:
            raise web.HTTPNotFound(text="action links are off: set ADPULSE_ROUTER_TOKEN_KEY on the router")
        try:
            return verify(request.match_info["token"], token_key, clock())
        except TokenError as exc:
            raise web.HTTPForbidden(text=str(exc)) from None

    async def episode_over(action: Action) -> str | None:
        """Why an ack or snooze link no longer applies (its episode is over), or None."""
        if action.action == "approve":
            return None
        current = await find_active(redis, prefix, action.fingerprint)
        if current is None:
            return "this alert is no longer firing: nothing to do"
        if current.get("fired_at") != action.fired_at:
            return (
                f"this alert resolved and fired again (at {current.get('fired_at')}) after this link was "
                "sent; it was for the earlier episode, so nothing changed: use the newer message's links"
            )
        return None

    async def show(request: web.Request) -> web.Response:
        action = action_of(request)
        verb, _ = _VERBS[action.action]
        if over := await episode_over(action):
            return _page(verb, f"<h1>{html.escape(verb)}</h1><p>{html.escape(over)}</p>", status=410)
        body = (
            f"<h1>{html.escape(verb)}</h1><p>{html.escape(action.summary)}</p>"
            f"<p><code>{html.escape(action.fingerprint)}</code></p>"
            "<form method='post'><label>Your name <input name='by' required></label> "
            f"<button type='submit'>{html.escape(verb)}</button></form>"
        )
        return _page(verb, body)

    async def act(request: web.Request) -> web.Response:
        action = action_of(request)
        form = await request.post()
        by = " ".join(str(form.get("by") or "").split())[:64] or "chat link"  # one line: no forged log lines
        now = clock()
        if over := await episode_over(action):
            return _page("Nothing changed", f"<h1>Nothing changed</h1><p>{html.escape(over)}</p>", status=410)
        if action.action == "approve":
            budget = action.budget
            approval, new = await approve(
                redis,
                prefix,
                channel=str(budget["channel"]),
                campaign=budget.get("campaign"),
                period=budget["period"],
                period_start_s=int(datetime.fromisoformat(str(budget["period_start"])).timestamp()),
                by=by,
                note="via chat link",
                now_s=now,
                zone=zone,
            )
            done = "approved" if new else f"already approved by {approval.by} at {approval.at}"
        else:
            snooze = action.snooze_s if action.action == "snooze" else None
            ack = await acknowledge(
                redis, prefix, action.fingerprint, action.fired_at, by, now, snooze_s=snooze
            )
            done = _VERBS[action.action][1].format(
                until=time.strftime("%H:%M", time.localtime(ack.until or now))
            )
        log.info("router: %s %s by %s", action.action, action.fingerprint, by)
        return _page("Done", f"<h1>Done</h1><p>{html.escape(action.summary)}</p><p>{html.escape(done)}</p>")

    app = web.Application()
    app.add_routes(
        [
            web.get("/metrics", metrics),
            web.get("/healthz", healthz),
            web.get("/a/{token}", show),
            web.post("/a/{token}", act),
            *routes,
        ]
    )
    return app


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=f"<!doctype html><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>adpulse · {html.escape(title)}</title><body style='font-family:sans-serif'>{body}</body>",
        content_type="text/html",
        status=status,
    )
