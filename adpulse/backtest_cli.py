"""``adpulse backtest FILE``: preview how noisy a rule set would be, on recorded data (CONTRACT §5)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Literal

import click
import orjson
from click.core import ParameterSource

from adpulse.cli_context import settings_of
from adpulse.judging import offline_evaluator, offline_screen
from adpulse.settings import Settings
from agents.replay import MemoryBuckets, fold_event_lines, replay
from alerts.backtest import (
    BacktestResult,
    backtest_event_series,
    backtest_events,
    backtest_series,
    fold_events,
    parse_window,
    read_series_csv,
)
from alerts.detectors import Detectors, DropToZero, RatioDrop, RoiDrop, SpendSurge
from alerts.series import RollingZScore, SeasonalShift, SeriesDetector
from streams.windows import Calendar

EVENT_METRICS = ("ctr", "cvr", "roi", "spend", "events", "funnel_visit", "funnel_cart", "funnel_order")

_EPILOG = """\b
FILE is either
  JSONL of tracker events (CONTRACT §1; a "topic" field is optional, the
  shape tells clicks, orders and spend apart): replayed minute by minute
  through the worker's own judge (the same windows, sequential tests,
  lifecycle and hysteresis), printing every alert the live worker would have
  written; with --window, folded into tumbling windows instead, each judged
  once by the window detectors;
  or a CSV "timestamp,value" of one KPI (e.g. hourly CPC): every point is
  judged against a robust seasonal baseline (or --method zscore).
With --window or a CSV, an alert is one episode: consecutive windows of one
condition count once.

\b
Examples:
  adpulse backtest events.jsonl
  adpulse backtest events.jsonl --json | jq -c 'select(.change == "fired")'
  adpulse backtest events.jsonl --window 10m
  adpulse backtest exchange-3_cpc_results.csv --metric cpc --json
  adpulse backtest exchange-3_cpc_results.csv --metric cpc --method zscore --z-window 168
"""


@click.command("backtest", epilog=_EPILOG)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="One alert JSON per line on stdout; the summary on stderr."
)
@click.option(
    "--window",
    default=None,
    help="Events: judge tumbling windows of this size (1m, 10m, 1h, 1d, ...) with the window detectors "
    "instead of replaying them through the worker's judge.",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="Events: only these metrics (ctr, cvr, roi, spend, events, funnel_visit, funnel_cart, funnel_order; "
    "repeatable). CSV: the KPI's name.",
)
@click.option(
    "--method",
    type=click.Choice(["robust", "zscore"]),
    default="robust",
    show_default=True,
    help="robust: adpulse's detectors; zscore: the rolling 3-sigma rule, for comparison.",
)
@click.option(
    "--min-change",
    type=click.FloatRange(0, min_open=True),
    default=0.5,
    show_default=True,
    help="Relative change that matters (drops for events, both ways for a series).",
)
@click.option(
    "--z-window",
    type=click.IntRange(2),
    default=24,
    show_default=True,
    help="--method zscore: values in the rolling window.",
)
@click.option(
    "--z-sigmas",
    type=click.FloatRange(0, min_open=True),
    default=3.0,
    show_default=True,
    help="--method zscore: standard deviations that count as an anomaly.",
)
@click.option("--name", default=None, help="CSV: the series' name in the alerts (default: the file name).")
def backtest_cli(
    file: Path,
    as_json: bool,
    window: str | None,
    metrics: tuple[str, ...],
    method: str,
    min_change: float,
    z_window: int,
    z_sigmas: float,
    name: str | None,
) -> None:
    """Replay events (JSONL) or a KPI series (CSV timestamp,value) through the detectors; print the alerts."""
    ctx = click.get_current_context()
    settings = settings_of(ctx)
    zone = settings.zone
    try:
        if window is not None:
            parse_window(window)
        kind = sniff_format(file)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    series_detector: SeriesDetector = (
        RollingZScore(window=z_window, sigmas=z_sigmas)
        if method == "zscore"
        else SeasonalShift(min_change=min_change)
    )
    if kind == "events":
        unknown = sorted(set(metrics) - set(EVENT_METRICS))
        if unknown:
            raise click.BadParameter(
                f"{', '.join(unknown)}: events have {', '.join(EVENT_METRICS)}", param_hint="--metric"
            )
        if window is None and method == "robust":
            if ctx.get_parameter_source("min_change") is not ParameterSource.DEFAULT:
                raise click.BadParameter(
                    "the worker's judge decides what matters; --min-change applies with --window or a CSV",
                    param_hint="--min-change",
                )
            _replay(file, settings, metrics, as_json)
            return
        folded = fold_events(
            iter_lines(file),
            window or "1h",
            Calendar(zone),
            currency=settings.currency,
            max_record_bytes=settings.max_record_bytes,
        )
        observations = folded.observations(Calendar(zone))
        if method == "zscore":
            chosen = [m for m in (metrics or ("ctr", "cvr", "roi", "spend")) if m != "events"]
            result = backtest_event_series(
                observations, window or "1h", series_detector, zone, metrics=chosen
            )
        else:
            result = backtest_events(
                observations, window or "1h", _detectors(min_change), zone, metrics=metrics
            )
        result.notes = dict(folded.notes)
    else:
        try:
            with file.open(encoding="utf-8", newline="") as handle:
                points = read_series_csv(handle, zone)
        except ValueError as exc:
            raise click.ClickException(f"{file}: {exc}") from None
        metric = metrics[0] if metrics else "value"
        result = backtest_series(points, series_detector, name=name or file.stem, metric=metric, zone=zone)
    _print(result, as_json, zone)


def _replay(file: Path, settings: Settings, metrics: tuple[str, ...], as_json: bool) -> None:
    """The events through the worker's own judge: every alert the live worker would have written."""
    buckets = MemoryBuckets(Calendar(settings.zone))
    notes = fold_event_lines(
        iter_lines(file), buckets, currency=settings.currency, max_record_bytes=settings.max_record_bytes
    )
    minutes = [0]

    def counted(_end: int) -> None:
        minutes[0] += 1

    alerts = [
        a
        for a in replay(
            offline_evaluator(settings), buckets, screen=offline_screen(settings), on_round=counted
        )
        if not metrics or a["metric"] in metrics
    ]
    for alert in alerts:
        if as_json:
            click.echo(orjson.dumps(alert).decode())
        else:
            where = alert["channel"] + (f"/{alert['campaign']}" if alert["campaign"] else "")
            stamp = alert["resolved_at"] or alert["window_end"] or alert["fired_at"]
            at = datetime.fromisoformat(stamp).astimezone(settings.zone).isoformat()
            click.echo(
                f"{at}  {alert['change']:<9} {alert['severity']:<8} {alert['kind']}/{alert['metric']} "
                f"{where}: {alert['summary']}"
            )
    changes = Counter(a["change"] for a in alerts)
    kinds = Counter(f"{a['kind']}/{a['metric']}" for a in alerts if a["change"] == "fired")
    days = max(1.0, minutes[0] / 1440)
    lines = [
        f"{changes['fired']} alerts fired, {changes['resolved']} resolved, over {minutes[0]} minutes judged "
        f"as the worker judges them ({changes['fired'] / days:.2f} fired per day)"
    ]
    if kinds:
        lines.append("by kind: " + ", ".join(f"{name} {count}" for name, count in sorted(kinds.items())))
    if notes:
        lines.append("input: " + ", ".join(f"{name} {count}" for name, count in sorted(notes.items())))
    click.echo("\n".join(lines), err=as_json)


def _detectors(min_change: float) -> Detectors:
    drop = min(min_change, 1.0)
    return Detectors(
        detectors=(
            DropToZero(),
            RatioDrop("ctr", min_drop=drop),
            RatioDrop("cvr", min_drop=drop),
            RoiDrop(min_drop=drop),
            SpendSurge(),
        )
    )


def _print(result: BacktestResult, as_json: bool, zone: tzinfo) -> None:
    for alert in result.alerts:
        if as_json:
            click.echo(orjson.dumps(alert.to_json()).decode())
        else:
            f = alert.finding
            held = f" (held {alert.windows} windows)" if alert.windows > 1 else ""
            click.echo(
                f"{alert.timestamp}  {f.severity:<8} {f.kind}/{f.metric} {f.channel}: {f.summary}{held}"
            )
    click.echo(result.summary(zone), err=as_json)


def sniff_format(path: Path) -> Literal["events", "series"]:
    """``events`` for JSONL (first non-empty line is a JSON object), ``series`` for a CSV."""
    with path.open("rb") as handle:
        for raw in handle:
            line = raw.strip()
            if line:
                return "events" if line.startswith(b"{") else "series"
    raise ValueError(f"{path} is empty")


def iter_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file as bytes, without loading it whole."""
    with path.open("rb") as handle:
        yield from handle
