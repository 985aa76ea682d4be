"""``adpulse backtest FILE``: preview how noisy a rule set would be, on recorded data (CONTRACT §5)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import tzinfo
from pathlib import Path
from typing import Literal

import click
import orjson

from adpulse.cli_context import settings_of
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

EVENT_METRICS = ("ctr", "cvr", "roi", "spend", "events")

_EPILOG = """\b
FILE is either
  JSONL of tracker events (CONTRACT §1; a "topic" field is optional, the
  shape tells clicks, orders and spend apart): folded into --window windows
  per channel, then every closed window goes through the detectors;
  or a CSV "timestamp,value" of one KPI (e.g. hourly CPC): every point is
  judged against a robust seasonal baseline (or --method zscore).
An alert is one episode: consecutive windows of one condition count once.

\b
Examples:
  adpulse backtest events.jsonl --window 10m
  adpulse backtest exchange-3_cpc_results.csv --metric cpc --json
  adpulse backtest exchange-3_cpc_results.csv --metric cpc --method zscore --z-window 168
"""


@click.command("backtest", epilog=_EPILOG)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="One alert JSON per line on stdout; the summary on stderr."
)
@click.option("--window", default="1h", show_default=True, help="Event windows: 1m, 10m, 1h, 1d, ...")
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="Events: only these metrics (ctr, cvr, roi, spend, events; repeatable). CSV: the KPI's name.",
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
    window: str,
    metrics: tuple[str, ...],
    method: str,
    min_change: float,
    z_window: int,
    z_sigmas: float,
    name: str | None,
) -> None:
    """Replay events (JSONL) or a KPI series (CSV timestamp,value) through the detectors; print the alerts."""
    settings = settings_of(click.get_current_context())
    zone = settings.zone
    try:
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
        folded = fold_events(
            iter_lines(file),
            window,
            Calendar(zone),
            currency=settings.currency,
            max_record_bytes=settings.max_record_bytes,
        )
        observations = folded.observations(Calendar(zone))
        if method == "zscore":
            chosen = [m for m in (metrics or ("ctr", "cvr", "roi", "spend")) if m != "events"]
            result = backtest_event_series(observations, window, series_detector, zone, metrics=chosen)
        else:
            result = backtest_events(observations, window, _detectors(min_change), zone, metrics=metrics)
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
