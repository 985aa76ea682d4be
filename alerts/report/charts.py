"""The reports' charts as PNG bytes (matplotlib, from the ``report`` extra). No I/O: bytes out.

- a KPI line per channel (hours of the day, or days of the week) with the target drawn across and the spans
  of the period's alerts shaded in the channel's colour;
- spend against budget: the day's cumulative spend per channel with its daily budget (and 80 % line), or the
  week's spend per channel against what its budgets allowed.

Figures are built on ``matplotlib.figure.Figure`` (no pyplot, no global state), so rendering is safe in a
server too.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from alerts.report.daily import DailySheet, day_bounds
from alerts.report.episodes import Episode
from alerts.report.model import MICROS, Counts, Targets, money_text
from alerts.report.weekly import WeeklyReview

if TYPE_CHECKING:
    from matplotlib.axes import Axes

INSTALL_HINT = "pip install 'adpulse[report]'"
_DPI = 110
_PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569")


def require_matplotlib() -> Any:
    """matplotlib, set to draw off-screen (Agg), or a RuntimeError saying how to install it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError(f"charts need matplotlib: {INSTALL_HINT}") from exc
    matplotlib.use("Agg")
    return matplotlib


def colours(channels: Sequence[str]) -> dict[str, str]:
    """A stable colour per channel (by name order), the same in every chart of a report."""
    return {ch: _PALETTE[i % len(_PALETTE)] for i, ch in enumerate(sorted(channels))}


def _figure(rows: int, cols: int, height: float) -> tuple[Any, Any]:
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, height), dpi=_DPI, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _png(fig: Any) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _spans(episodes: Sequence[Episode]) -> list[Episode]:
    """The alerts a KPI chart shades: a channel's anomalies and tracker outages. Threshold alerts show as
    the line below the dashed target already; campaigns' alerts (dozens a busy day) would bury the lines."""
    return [e for e in episodes if e.kind in ("anomaly", "data_health") and e.campaign is None]


def _shade(ax: Axes, spans: Sequence[Episode], colour: Mapping[str, str], lo: datetime, hi: datetime) -> None:
    """Shade each alert's span (clipped to the chart's range) in its channel's colour, named at the top."""
    for episode in _spans(spans):
        start = max(episode.start or episode.fired_at, lo)
        end = min(episode.end or episode.resolved_at or hi, hi)
        if episode.resolved_at is not None and episode.kind != "budget":
            end = min(max(end, episode.resolved_at), hi)
        if end <= start:
            end = min(start + timedelta(minutes=10), hi)
        ax.axvspan(_x(start), _x(end), color=colour.get(episode.channel, "#888888"), alpha=0.15, lw=0)
        ax.annotate(
            f"{episode.channel} {episode.metric.upper()}",
            xy=(start, 1),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2),
            textcoords="offset points",
            va="top",
            fontsize=7,
            color=colour.get(episode.channel, "#888888"),
        )


def _target(ax: Axes, value: float, label: str) -> None:
    ax.axhline(value, color="#111827", lw=1, ls="--")
    ax.annotate(
        label,
        xy=(0, value),
        xycoords=("axes fraction", "data"),
        xytext=(2, 2),
        textcoords="offset points",
        fontsize=7,
    )


def _x(moment: datetime) -> float:
    from matplotlib.dates import date2num

    return float(date2num(moment))  # type: ignore[no-untyped-call]


def _formatter(pattern: str, zone: ZoneInfo) -> Any:
    from matplotlib.dates import DateFormatter

    return DateFormatter(pattern, tz=zone)  # type: ignore[no-untyped-call]


def _thousands() -> Any:
    from matplotlib.ticker import StrMethodFormatter

    return StrMethodFormatter("{x:,.0f}")


def _legend(fig: Any, ax: Axes, channels: int) -> None:
    """One legend under the plots, where it hides no line and no label."""
    if channels:
        fig.legend(
            *ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=min(channels, 6)
        )


def _kpi(counts: Counts, metric: str) -> float | None:
    value: float | None = getattr(counts, metric)
    if value is not None and metric in ("ctr", "cvr"):
        return value * 100
    return value


_TITLES = {"ctr": "CTR (%)", "cvr": "CVR (%)", "aov": "AOV", "roi": "ROI (GMV / cost)"}


def _target_value(targets: Targets, metric: str) -> float:
    value: float = getattr(targets, metric)
    return value * 100 if metric in ("ctr", "cvr") else value


def daily_kpi_chart(sheet: DailySheet, targets: Targets | None = None) -> bytes:
    """CTR and ROI per hour of the day, a line per channel, targets dashed, the day's alerts shaded."""
    targets = targets or Targets()
    channels = [r.channel for r in sheet.rows]
    colour = colours(channels)
    lo, hi = day_bounds(sheet.day, sheet.zone)
    fig, axes = _figure(2, 1, 6.4)
    for ax, metric in zip(axes[:, 0], ("ctr", "roi"), strict=True):
        for channel in channels:
            points = [(t, _kpi(c, metric)) for t, c in sheet.data.hours.get(channel, ())]
            xs = [t + timedelta(minutes=30) for t, v in points if v is not None]
            ys = [v for _, v in points if v is not None]
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, lw=1.5, color=colour[channel], label=channel)
        _target(ax, _target_value(targets, metric), f"target {targets.text(metric)}")
        _shade(ax, sheet.episodes, colour, lo, hi)
        ax.set_xlim(lo, hi)
        ax.set_title(f"{_TITLES[metric]} per hour, {sheet.day.isoformat()}", fontsize=10, loc="left")
        ax.xaxis.set_major_formatter(_formatter("%H:%M", sheet.zone))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    _legend(fig, axes[0, 0], len(channels))
    return _png(fig)


def daily_spend_chart(sheet: DailySheet) -> bytes:
    """The day's cumulative spend per channel, each with its daily budget (solid) and 80 % line (dotted)."""
    channels = [r.channel for r in sheet.rows]
    colour = colours(channels)
    lo, hi = day_bounds(sheet.day, sheet.zone)
    fig, axes = _figure(1, 1, 4.2)
    ax = axes[0, 0]
    for channel in channels:
        running, xs, ys = 0, [lo], [0.0]
        for start, counts in sheet.data.hours.get(channel, ()):
            running += counts.spend_micros
            xs.append(start + timedelta(hours=1))
            ys.append(running / MICROS)
        ax.step(xs, ys, where="post", lw=1.8, color=colour[channel], label=channel)
    for budget in sheet.budgets:
        if budget.channel in colour:
            ax.axhline(budget.spendable, color=colour[budget.channel], lw=1)
            ax.axhline(budget.spendable * 0.8, color=colour[budget.channel], lw=1, ls=":")
            ax.annotate(
                f"{budget.channel} budget {budget.spendable:,.0f}",
                xy=(0, budget.spendable),
                xycoords=("axes fraction", "data"),
                xytext=(2, 2),
                textcoords="offset points",
                fontsize=7,
                color=colour[budget.channel],
            )
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"Spend against daily budget ({sheet.currency}), {sheet.day.isoformat()}", fontsize=10, loc="left"
    )
    ax.xaxis.set_major_formatter(_formatter("%H:%M", sheet.zone))
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.yaxis.set_major_formatter(_thousands())
    _legend(fig, ax, len(channels))
    return _png(fig)


def weekly_kpi_chart(review: WeeklyReview) -> bytes:
    """CTR, CVR, AOV and ROI per day, a line per channel, targets dashed, the week's alerts shaded."""
    channels = [c.channel for c in review.channels]
    colour = colours(channels)
    days = list(review.days)
    fig, axes = _figure(2, 2, 6.4)
    if days:
        lo, _ = day_bounds(days[0], review.zone)
        _, hi = day_bounds(days[-1], review.zone)
    for ax, metric in zip(axes.flat, ("ctr", "cvr", "aov", "roi"), strict=True):
        for channel in channels:
            xs, ys = [], []
            for day in days:
                counts = review.daily[day].channels.get(channel)
                value = _kpi(counts, metric) if counts is not None else None
                if value is not None:
                    xs.append(day_bounds(day, review.zone)[0] + timedelta(hours=12))
                    ys.append(value)
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, lw=1.5, color=colour[channel], label=channel)
        _target(ax, _target_value(review.targets, metric), f"target {review.targets.text(metric)}")
        if days:
            _shade(ax, review.episodes, colour, lo, hi)
            ax.set_xlim(lo, hi)
        ax.set_title(_TITLES[metric], fontsize=10, loc="left")
        ax.set_xticks([_x(day_bounds(d, review.zone)[0] + timedelta(hours=12)) for d in days])
        ax.xaxis.set_major_formatter(_formatter("%a\n%m-%d", review.zone))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    _legend(fig, axes[0, 0], len(channels))
    return _png(fig)


def weekly_spend_chart(review: WeeklyReview) -> bytes:
    """The share of each channel's budget used (bar) and the share the calendar allows so far (tick)."""
    channels = list(review.channels)
    colour = colours([c.channel for c in channels])
    fig, axes = _figure(1, 1, 1.0 + 0.5 * max(len(channels), 1))
    ax = axes[0, 0]
    names = [c.channel for c in channels]
    for i, week in enumerate(channels):
        use = next((u for u in week.budgets if u.budget.period == "day"), None) or next(
            iter(week.budgets), None
        )
        if use is None:
            ax.annotate(
                f"no budget; spent {money_text(week.counts.spend_micros)}",
                xy=(0, i),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
            continue
        ax.barh([i], [use.used * 100], color=colour[week.channel], alpha=0.85)
        if use.pace is not None and use.used:
            expected = use.used / use.pace * 100
            ax.plot([expected, expected], [i - 0.4, i + 0.4], color="#111827", lw=2)
        ax.annotate(
            use.text,
            xy=(use.used * 100, i),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.axvline(100, color="#b42318", lw=1, ls="--")
    ax.set_xlim(0, max([120.0, *(u.used * 100 + 60 for c in channels for u in c.budgets[:1])]))
    ax.set_xlabel("% of budget used (black tick: what the calendar allows by now)", fontsize=8)
    ax.set_title(f"Spend against budget, {review.label}", fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=8)
    return _png(fig)


def daily_charts(sheet: DailySheet, targets: Targets | None = None) -> dict[str, tuple[bytes, str]]:
    """The daily report's charts by name, with captions (empty for a day without data)."""
    if sheet.empty:
        return {}
    return {
        "kpis": (
            daily_kpi_chart(sheet, targets),
            "CTR and ROI per hour by channel; dashed: targets; shaded: anomalies and tracker outages",
        ),
        "spend": (
            daily_spend_chart(sheet),
            "Cumulative spend by channel; solid: daily budget, dotted: its 80 % line",
        ),
    }


def weekly_charts(review: WeeklyReview) -> dict[str, tuple[bytes, str]]:
    """The weekly review's charts by name, with captions."""
    if review.empty:
        return {}
    return {
        "kpis": (
            weekly_kpi_chart(review),
            "CTR, CVR, AOV and ROI per day by channel; dashed: targets; shaded: anomalies and outages",
        ),
        "spend": (
            weekly_spend_chart(review),
            "Share of each budget used (bar) and what the calendar allows by now (tick)",
        ),
    }
