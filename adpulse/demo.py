"""``adpulse demo``: the embedded stack, a worker, simulated traffic and a live terminal view."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from adpulse.alerts_cli import read_alerts
from adpulse.budget_cli import produce_setting
from adpulse.cli_context import settings_of
from adpulse.metrics_page import metric_samples, read_metrics, sums_by
from adpulse.render import kpi_rich_table
from adpulse.router_cli import serve as serve_router
from adpulse.settings import Settings, redacted_url
from adpulse.simulate import simulate
from adpulse.stack import EmbeddedStack, StackError
from adpulse.traffic.scenarios import parse_scenario
from alerts.payload import AlertJson
from alerts.router.tokens import WeakKeyError
from streams.events import BudgetSetting
from streams.keys import Keys
from streams.redis_client import AsyncRedis

DEFAULT_SCENARIOS = (
    "ctr-drop:channel=douyin,at=8m,for=6m",
    "spend-surge:channel=taobao,at=10m",
    "bad-records",
)
#: The demo judges anomalies on 1-minute windows with a short grace, so its story fits in minutes
#: (unless ADPULSE_ANOMALY_WINDOW_S / ADPULSE_GRACE_S say otherwise).
DEMO_DEFAULTS = {"anomaly_window_s": 60, "grace_s": 10.0}
#: The demo's budget channel: its day budget is sized so that the 80 % line is crossed in a few minutes.
BUDGET_CHANNEL = "taobao"
BUDGET_MINUTES = 5


class ChatLog:
    """Where the demo's console target writes: the last chat messages, for the live view (or printed)."""

    def __init__(self, echo: Console | None, lines: int = 14) -> None:
        self.echo = echo
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.lines.append(line)
                if self.echo is not None:
                    self.echo.print(f"  chat> {line}", markup=False, highlight=False)
        return len(text)

    def flush(self) -> None:
        pass

    def text(self) -> Text:
        text = Text("\nChat messages (console target; --webhook URL also posts them):\n", style="bold")
        for line in self.lines:
            text.append(f"  {line}\n")
        return text


def demo_routes(webhook: str | None) -> Any:
    """Every alert to the console (English), and to ``webhook`` if given."""
    from alerts.router.config import RoutesConfig, TargetConfig

    targets = {"console": TargetConfig(type="console", locale="en")}
    if webhook:
        targets["webhook"] = TargetConfig(type="webhook", url=webhook)
    return RoutesConfig(targets=targets, default_targets=list(targets))


class _Worker:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "adpulse", "worker"],
                env={**os.environ, **self.settings.to_env()},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def metrics(self) -> dict[str, float]:
        """Events counted per outcome, and ``dlq``: the records sent to the DLQ (empty while not serving)."""
        text = read_metrics(f"http://{self.settings.web_host}:{self.settings.web_port}/metrics", timeout_s=1)
        if text is None:
            return {}
        sums = sums_by(text, "adpulse_events_total", "outcome")
        dlq = [value for _, value in metric_samples(text, "adpulse_dlq_records_total")]
        if dlq:
            sums["dlq"] = sum(dlq)
        return sums


async def _kpi_rows(client: AsyncRedis, prefix: str) -> list[dict[str, Any]]:
    raw = await client.hgetall(Keys(prefix).kpis)
    rows = [orjson.loads(v) for v in raw.values()]
    picked = [
        r for r in rows if r["campaign"] == "-" and r["window"] == "1m" and r["which"] in ("last", "current")
    ]
    return sorted(picked, key=lambda r: (r["channel"], r["which"] != "last"))


def _alerts_text(active: list[AlertJson], past: list[AlertJson]) -> Text:
    text = Text()
    text.append(f"\nAlerts firing: {len(active)}\n", style="bold")
    for alert in active:
        style = "bold red" if alert["severity"] == "critical" else "yellow"
        text.append(f"  {alert['severity']:<8} ", style=style)
        text.append(f"{alert['summary']}\n")
    resolved = [a for a in past if a.get("status") == "resolved"][-3:]
    for alert in resolved:
        text.append("  resolved ", style="green")
        text.append(f"{alert['summary']}\n")
    return text


async def _set_demo_budget(
    settings: Settings, client: AsyncRedis, stop: asyncio.Event, console: Console
) -> None:
    """Once a minute of taobao spend is known, give taobao a day budget that runs out in a few minutes."""
    while not stop.is_set():
        raw = await client.hget(Keys(settings.redis_prefix).kpis, f"{BUDGET_CHANNEL}|-|1m|last")
        day = await client.hget(Keys(settings.redis_prefix).kpis, f"{BUDGET_CHANNEL}|-|1d|current")
        if raw and day and orjson.loads(raw)["spend"] > 0:
            per_minute = orjson.loads(raw)["spend"]
            amount = round(orjson.loads(day)["spend"] + per_minute * BUDGET_MINUTES, 2)
            await produce_setting(
                settings,
                BudgetSetting(channel=BUDGET_CHANNEL, period="day", amount=amount, owner="@demo.owner"),
            )
            console.print(
                f"budget: {BUDGET_CHANNEL} day budget set to {amount:,.2f} {settings.currency}; "
                f"at ~{per_minute:,.0f}/min its 80 % line is minutes away"
            )
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=5.0)


def _header(started_at: float, metrics: dict[str, float], rate: float, worker_alive: bool) -> Text:
    counted = sum(metrics.get(k, 0.0) for k in ("accepted", "invalid", "late", "duplicate"))
    elapsed = max(1e-9, time.monotonic() - started_at)
    text = Text()
    text.append("adpulse demo", style="bold")
    text.append(f"  up {elapsed:,.0f} s   events {counted:,.0f} ({rate:,.0f}/s)   ")
    text.append(f"DLQ {metrics.get('dlq', 0):,.0f}   duplicates {metrics.get('duplicate', 0):,.0f}   ")
    text.append(
        "worker " + ("running" if worker_alive else "DOWN"), style="green" if worker_alive else "bold red"
    )
    text.append(
        "\nPer channel: the last complete 1-minute window (✓) and the one filling now (…)."
        " Ctrl-C stops everything the demo started.\n"
    )
    return text


async def _view(
    settings: Settings, worker: _Worker, stop: asyncio.Event, live: bool, console: Console, chat: ChatLog
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(settings.redis_url)
    started_at = time.monotonic()
    previous = (time.monotonic(), 0.0)
    budget = asyncio.create_task(_set_demo_budget(settings, client, stop, console))
    announced: set[str] = set()
    try:
        with (
            Live(console=console, refresh_per_second=2, transient=False)
            if live
            else contextlib.nullcontext() as screen
        ):
            while not stop.is_set():
                metrics = worker.metrics()
                now = time.monotonic()
                counted = sum(metrics.get(k, 0.0) for k in ("accepted", "invalid", "late", "duplicate"))
                rate = (counted - previous[1]) / max(1e-9, now - previous[0])
                previous = (now, counted)
                rows = await _kpi_rows(client, settings.redis_prefix)
                active, past = await read_alerts(settings, history=20)
                header = _header(
                    started_at, metrics, rate, worker.proc is not None and worker.proc.poll() is None
                )
                if screen is not None:
                    screen.update(
                        Group(
                            header,
                            kpi_rich_table(rows, settings.currency),
                            _alerts_text(active, past),
                            chat.text(),
                        )
                    )
                else:
                    summary = ", ".join(
                        f"{r['channel']} CTR {r['ctr'] * 100:.2f}%"
                        if r["ctr"] is not None
                        else f"{r['channel']} —"
                        for r in rows
                        if r["which"] == "last"
                    )
                    console.print(f"{header.plain.splitlines()[0]} | {summary} | alerts firing {len(active)}")
                    for alert in past:
                        if alert["id"] not in announced:
                            announced.add(alert["id"])
                            console.print(
                                f"  ALERT {alert['status']} {alert['severity']}: {alert['summary']}"
                            )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0 if live else 5.0)
    finally:
        budget.cancel()
        await asyncio.gather(budget, return_exceptions=True)
        await client.aclose()


async def _run(
    settings: Settings,
    rate: float,
    duration_s: float | None,
    seed: int,
    scenarios: list[Any],
    live: bool,
    console: Console,
    worker: _Worker,
    webhook: str | None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    traffic = asyncio.create_task(
        simulate(
            settings, rate=rate, duration_s=None, seed=seed, scenarios=scenarios, progress=False, stop=stop
        )
    )
    chat = ChatLog(None if live else console)
    if live:
        logging.getLogger("adpulse.router").setLevel(
            logging.WARNING
        )  # its INFO lines would tear the live view
    view = asyncio.create_task(_view(settings, worker, stop, live, console, chat))
    # The router runs in this process: its console target writes into the view.
    router_settings = settings.model_copy(
        update={
            "router_port": 0,
            "router_token_key": settings.router_token_key or secrets.token_hex(32),
            "router_name": "demo",
        }
    )
    router = asyncio.create_task(serve_router(router_settings, demo_routes(webhook), stop, console=chat))
    if duration_s is not None:
        loop.call_later(duration_s, stop.set)
    try:
        await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(traffic, view, router, return_exceptions=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if traffic.done() and traffic.exception() is not None:
        raise click.ClickException(f"traffic simulation failed: {traffic.exception()}")
    if router.done() and not router.cancelled() and router.exception() is not None:
        raise click.ClickException(f"the chat router failed: {router.exception()}")


@click.command("demo")
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Simulated records per second.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop by itself after this many seconds (default: run until Ctrl-C).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the simulated traffic.")
@click.option(
    "--scenario",
    "scenario_texts",
    multiple=True,
    default=DEFAULT_SCENARIOS,
    show_default=True,
    help="Traffic scenarios (see `adpulse simulate --help`).",
)
@click.option("--no-live", is_flag=True, help="Print a status line every 5 s instead of the live table.")
@click.option("--keep-stack", is_flag=True, help="Leave the broker and Redis running when the demo ends.")
@click.option(
    "--webhook",
    metavar="URL",
    help="Also POST every alert (its JSON) to this webhook, e.g. a local http://127.0.0.1:8080/hook.",
)
def demo_cli(
    rate: float,
    duration: float | None,
    seed: int,
    scenario_texts: tuple[str, ...],
    no_live: bool,
    keep_stack: bool,
    webhook: str | None,
) -> None:
    """Run adpulse end to end on the embedded stack, with a live view of the KPIs.

    Starts the embedded broker and Redis (if not running), one worker, and simulated traffic for
    douyin, taobao, wechat, xiaohongshu, baidu and jd. The anomaly detectors need a baseline, so the
    story takes some minutes: taobao gets a day budget that crosses its 80 % line a few minutes in,
    douyin's CTR drops by 60 % at 8 minutes (alert) and recovers at 14 (resolved), taobao's spend surges
    at 10. The demo judges anomalies on 1-minute windows with a 10 s grace.
    Alerts fire and resolve on screen, with the chat messages the router sends (console target, and
    --webhook URL if given); Ctrl-C stops everything the demo started. Logs go to
    ADPULSE_HOME/demo/.
    """
    settings = settings_of(click.get_current_context())
    try:
        settings.token_key()  # a weak key is refused now, not when the demo's router starts
    except WeakKeyError as exc:
        raise click.UsageError(str(exc)) from None
    settings = settings.model_copy(
        update={k: v for k, v in DEMO_DEFAULTS.items() if f"ADPULSE_{k.upper()}" not in os.environ}
    )
    console = Console()
    try:
        scenarios = [parse_scenario(text) for text in scenario_texts]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scenario") from None
    stack = EmbeddedStack(settings)
    try:
        status = stack.up()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(
        f"stack: broker {redacted_url(settings.kafka_bootstrap)}, redis {redacted_url(settings.redis_url)}"
        f" ({'started' if status.started else 'already running'})"
    )
    worker = _Worker(settings, settings.home / "demo" / "worker.log")
    worker.start()
    console.print(
        f"worker: pid {worker.proc.pid if worker.proc else '?'}, metrics on "
        f"http://{settings.web_host}:{settings.web_port}/metrics, log {worker.log_path.absolute()}",
        soft_wrap=True,
    )
    try:
        asyncio.run(
            _run(
                settings,
                rate,
                duration,
                seed,
                scenarios,
                not no_live and console.is_terminal,
                console,
                worker,
                webhook,
            )
        )
    finally:
        worker.stop()
        if status.started and not keep_stack:
            stack.down(components=status.started)
            console.print(f"stopped: worker, {', '.join(status.started)}")
        else:
            console.print("stopped: worker (the stack was already running and is left up)")
