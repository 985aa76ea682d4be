"""``adpulse router``: deliver alerts from Redis to chat (CONTRACT.md §5, §6)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import click

from adpulse.cli_context import CONTEXT
from adpulse.settings import Settings

log = logging.getLogger("adpulse.router")


class RedactingFilter(logging.Filter):
    """Replaces every secret value in a log record's final text: a net under the code's own care."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            redacted = text
            for secret in self.secrets:
                redacted = redacted.replace(secret, "***")
            if redacted != text:
                record.msg, record.args = redacted, None
            if record.exc_info and record.exc_info[1] is not None:
                formatted = logging.Formatter().formatException(record.exc_info)
                for secret in self.secrets:
                    formatted = formatted.replace(secret, "***")
                record.exc_info, record.exc_text = None, formatted
        return True


def install_redaction(secrets: list[str]) -> None:
    """Redact ``secrets`` from every log line of this process, whoever writes it."""
    redacting = RedactingFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)


def public_url(settings: Settings, port: int) -> str:
    """Where chat users reach the router's action links."""
    if settings.router_public_url:
        return settings.router_public_url
    host = settings.router_host if settings.router_host not in ("0.0.0.0", "::") else socket.gethostname()
    return f"http://{host}:{port}"


async def serve(settings: Settings, config: Any, stop: asyncio.Event, console: Any = None) -> None:
    """Run a router with its HTTP endpoint until ``stop`` is set."""
    import aiohttp
    import redis.asyncio as aioredis
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from alerts.router.delivery import Deliverer
    from alerts.router.digest import DigestScheduler, ReportSource, report_routes
    from alerts.router.digest_cards import ReportLinks
    from alerts.router.metrics import RouterMetrics
    from alerts.router.service import Router
    from alerts.router.tokens import ActionLinks
    from alerts.router.web import make_app

    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
    key = settings.token_key()
    reports = ReportSource(
        client, settings.redis_prefix, settings.zone, settings.currency, BudgetCache(settings).budgets
    )
    async with aiohttp.ClientSession() as session:
        router_ref: dict[str, Any] = {}
        app = make_app(
            client,
            settings.redis_prefix,
            registry,
            key,
            settings.zone,
            ready=lambda: "router" in router_ref and router_ref["router"].ready.is_set(),
            routes=report_routes(reports, key),
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.router_host, settings.router_port)
        await site.start()
        port = runner.addresses[0][1]
        links = (
            ActionLinks(key, public_url(settings, port), ttl_s=settings.router_token_ttl_s) if key else None
        )
        if links is None:
            log.warning("router: no ADPULSE_ROUTER_TOKEN_KEY: messages carry no acknowledge/approve links")
        router = Router(
            client,
            config,
            Deliverer(session, console=console),
            metrics,
            prefix=settings.redis_prefix,
            name=settings.router_name or f"{socket.gethostname()}-{os.getpid()}",
            claim_idle_s=settings.router_claim_idle_s,
            group_wait_s=settings.router_group_wait_s,
            links=links,
        )
        router_ref["router"] = router
        digests = DigestScheduler(
            config,
            reports,
            Deliverer(session, console=console),
            ReportLinks(key, public_url(settings, port)) if key else None,
        )
        if config.digests and key is None:
            log.warning(
                "router: no ADPULSE_ROUTER_TOKEN_KEY: digests carry no link to the report or its chart"
            )
        posting = asyncio.create_task(digests.run(stop)) if config.digests else None
        log.info(
            "router %s: targets %s; /metrics on http://%s:%d",
            router.name,
            ", ".join(f"{n} ({t.type})" for n, t in config.targets.items()),
            settings.router_host,
            port,
        )
        try:
            await router.run(stop)
        finally:
            if posting is not None:
                posting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await posting
            await runner.cleanup()
            await client.aclose()


class BudgetCache:
    """The budgets for report pages and digests, read from the budgets topic at most every ``max_age_s``;
    when the broker cannot be reached, the last ones read (reports go on without budget lines at worst)."""

    def __init__(self, settings: Settings, max_age_s: float = 300.0) -> None:
        self.settings = settings
        self.max_age_s = max_age_s
        self._budgets: list[Any] = []
        self._read_at = -math.inf

    async def budgets(self) -> list[Any]:
        from aiokafka.errors import KafkaError

        from adpulse.budget_cli import BudgetError, read_budgets

        if time.monotonic() - self._read_at < self.max_age_s:
            return self._budgets
        try:
            book, _ = await read_budgets(self.settings, quiet_s=0.5, timeout_s=10.0)
        except (BudgetError, KafkaError, OSError, TimeoutError) as exc:
            log.warning("router: reports without fresh budgets: %s", exc)
        else:
            self._budgets = list(book)
        self._read_at = time.monotonic()
        return self._budgets


def load_config(settings: Settings, path: Path | None) -> Any:
    """The routes file (``--config`` or ADPULSE_ROUTES_FILE), or every alert to the console."""
    from alerts.router.config import RoutesError, console_routes, load_routes

    path = path or settings.routes_file
    if path is None:
        log.warning(
            "router: no routes file (--config or ADPULSE_ROUTES_FILE): every alert goes to the console"
        )
        return console_routes()
    try:
        return load_routes(path)
    except RoutesError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("router", context_settings=CONTEXT)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Routes file (YAML, CONTRACT.md §6); default ADPULSE_ROUTES_FILE; none: console only.",
)
@click.option("--check", is_flag=True, help="Validate the routes file and exit.")
@click.pass_obj
def router_cli(settings: Settings, config_path: Path | None, check: bool) -> None:
    """Deliver alerts from Redis to chat: Feishu, DingTalk, WeCom, Slack, webhooks, console, apprise.

    Several routers can run side by side (a Redis consumer group); one that dies is taken over after
    ADPULSE_ROUTER_CLAIM_IDLE_S. Each alert reaches each target of its route once. Secrets (webhook
    URLs, signing secrets) come from the environment via ${NAME} in the routes file, never from the
    command line. Serves /metrics and the acknowledge / snooze / approve links on ADPULSE_ROUTER_PORT
    (6067); links need ADPULSE_ROUTER_TOKEN_KEY (or ADPULSE_ROUTER_TOKEN_KEY_FILE).

    \b
    Examples:
      adpulse router                                # every alert to the console
      adpulse router --config deploy/routes.example.yml --check
      FEISHU_DOUYIN_URL=... adpulse router --config routes.yml
    """
    from alerts.router.tokens import WeakKeyError

    config = load_config(settings, config_path)
    try:
        key = settings.token_key()
    except WeakKeyError as exc:
        raise click.UsageError(str(exc)) from None
    install_redaction(config.secrets() + ([key.decode()] if key else []))
    if check:
        click.echo(
            f"ok: {len(config.targets)} target(s), {len(config.routes)} route(s), "
            f"default targets: {', '.join(config.default_targets) or 'none'}; "
            f"{len(config.digests)} digest(s)"
        )
        return

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, config, stop)

    asyncio.run(main())
