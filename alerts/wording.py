"""How adpulse writes times, durations, volumes, money and p-values for people. Pure.

The one home of these wordings, so that an alert's summary, a chat message and a CLI table say the same
thing the same way. The lowest layer that writes them is ``alerts`` (``agents`` and the shell use it too).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Final

DAY_S: Final = 86_400
#: KPIs that are ratios, shown as percentages.
_PERCENT_METRICS: Final = frozenset({"ctr", "cvr", "funnel_visit", "funnel_cart", "funnel_order"})
_P_BOUNDS: Final = (0.0001, 0.001, 0.01)


# -- time ----------------------------------------------------------------------------------------------------


def rfc3339(epoch_s: float, zone: tzinfo) -> str:
    """``epoch_s`` as RFC 3339 in ``zone``, to the second (``2026-11-24T18:40:00+08:00``)."""
    return datetime.fromtimestamp(epoch_s, zone).isoformat(timespec="seconds")


def rfc3339_utc_ms(ts_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC, to the millisecond (``2026-11-24T10:40:00.250Z``)."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def span_text(seconds: float) -> str:
    """'10 min', 'hour', '3 h', 'day' — the words after 'in the last'."""
    seconds = round(seconds)
    if seconds == 3600:
        return "hour"
    if seconds == DAY_S:
        return "day"
    if seconds % DAY_S == 0:
        return f"{seconds // DAY_S} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def duration_text(seconds: float) -> str:
    """'45 min', '3 h', '2 d' — the words after 'for'."""
    seconds = round(seconds)
    if seconds >= DAY_S and seconds % DAY_S == 0:
        return f"{seconds // DAY_S} d"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def time_left_text(seconds: float) -> str:
    """'45 min', '3 h 20 min', '2.5 days' — how long until something happens (never negative)."""
    minutes = max(int(seconds // 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours / 24:.1f} days"


def ago_text(age_s: float) -> str:
    """'3d ago', '2h ago', '5m ago', '40s ago' — the age of something, in its largest whole unit."""
    age = max(0, int(age_s))
    for unit, size in (("d", DAY_S), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age // size}{unit} ago"
    return f"{age}s ago"


# -- numbers -------------------------------------------------------------------------------------------------


def volume_text(value: float) -> str:
    """38k, 1.2M, 840 — volumes as people say them."""
    if value >= 999_500:
        return f"{value / 1e6:.1f}M"
    if value >= 9_995:
        return f"{value / 1e3:.0f}k"
    if value >= 1_000:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def percent_text(ratio: float) -> str:
    """A ratio as a percentage with two decimals: 0.0123 → '1.23 %'."""
    return f"{ratio * 100:.2f} %"


def format_value(metric: str, value: float | None) -> str:
    """A KPI value as people read it: CTR 1.23 %, ROI 0.84, spend 12,345.00 (12,345 when whole)."""
    if value is None:
        return "no data"
    if metric in _PERCENT_METRICS:
        return percent_text(value)
    if float(value).is_integer() and abs(value) >= 100:
        return f"{int(value):,}"
    return f"{value:,.2f}"


def money_text(amount: float) -> str:
    """Money: whole units when whole to the cent (``10,000``), else with the cents (``2,500.50``)."""
    whole = round(amount)
    return f"{whole:,}" if abs(amount - whole) < 0.005 else f"{amount:,.2f}"


def p_text(p_value: float) -> str:
    """A p-value as people read it: ``p < 0.0001``, ``p < 0.001``, ``p < 0.01``, else ``p = 0.023``.

    The finer bounds matter: a detector fires only below its alpha (0.001 by default), so one bound at 0.001
    would word every alert's evidence alike.
    """
    for bound in _P_BOUNDS:
        if p_value < bound:
            return f"p < {bound:g}"
    return f"p = {p_value:.3f}"
