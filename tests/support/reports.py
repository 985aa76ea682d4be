"""Realistic report inputs for tests that need a full page: four channels, every hour of a day, a CTR drop
on douyin, baidu below ROI 1 without visit events, an approved budget warning on wechat; a week of such
days."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from alerts.budgets import Approval, Budget
from alerts.report.daily import DailySheet, DayData, build_daily
from alerts.report.episodes import episodes
from alerts.report.model import MICROS, Counts
from alerts.report.weekly import WeeklyReview, build_weekly

ZONE = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 24)
MONDAY = date(2026, 11, 23)
#: channel -> (CTR, AOV, ROI)
PROFILES = {
    "douyin": (0.028, 260.0, 1.6),
    "taobao": (0.024, 330.0, 2.4),
    "baidu": (0.016, 310.0, 0.9),
    "wechat": (0.021, 360.0, 1.5),
}
BUDGETS = (Budget("wechat", None, "day", 60_000.0, owner="@li.na"), Budget("douyin", None, "day", 150_000.0))
APPROVALS = {"wechat|-|day|2026-11-24": Approval(by="@li.na", at="2026-11-24T16:50:00+08:00")}


def day_data(day: date, seed: int = 1, drop: bool = False) -> DayData:
    """Hourly counts of the four channels on ``day`` (douyin's CTR down to 45 % from 14:00 to 15:00)."""
    rng = random.Random(f"{day}-{seed}")
    hours: dict[str, list[tuple[datetime, Counts]]] = {}
    channels: dict[str, Counts] = {}
    for channel, (ctr, aov, roi) in PROFILES.items():
        series = []
        for hour in range(24):
            start = datetime(day.year, day.month, day.day, hour, tzinfo=ZONE)
            impressions = rng.randint(8_000, 12_000)
            rate = ctr * (0.45 if drop and channel == "douyin" and hour == 14 else 1.0)
            clicks = int(impressions * rate)
            orders = int(clicks * rng.uniform(0.045, 0.055))
            gmv = int(orders * aov * MICROS * rng.uniform(0.9, 1.1))
            counts = Counts(
                impressions=impressions,
                clicks=clicks,
                visits=0 if channel == "baidu" else int(clicks * 0.7),
                carts=int(clicks * 0.2),
                orders=orders,
                new_customers=orders // 3,
                gmv_micros=gmv,
                spend_micros=int(gmv / roi),
            )
            series.append((start, counts))
            channels[channel] = channels.get(channel, Counts()) + counts
        hours[channel] = series
    return DayData(day, channels, True, None, hours)


def alerts() -> list[dict[str, Any]]:
    """The stream of that day: douyin's CTR drop (fired, resolved) and wechat's budget warning."""
    ctr: dict[str, Any] = {
        "fingerprint": "anomaly:ctr:douyin:-",
        "kind": "anomaly",
        "severity": "warning",
        "metric": "ctr",
        "channel": "douyin",
        "campaign": None,
        "window": "10m",
        "value": 0.013,
        "baseline": 0.028,
        "change_pct": -52.3,
        "fired_at": "2026-11-24T06:11:00+00:00",
        "evidence": {},
        "summary": "CTR fell",
    }
    return [
        {
            **ctr,
            "id": "1",
            "status": "firing",
            "window_start": "2026-11-24T14:00:00+08:00",
            "window_end": "2026-11-24T14:10:00+08:00",
            "resolved_at": None,
        },
        {
            **ctr,
            "id": "2",
            "status": "resolved",
            "window_start": "2026-11-24T14:50:00+08:00",
            "window_end": "2026-11-24T15:00:00+08:00",
            "resolved_at": "2026-11-24T07:20:00+00:00",
        },
        {
            "id": "3",
            "fingerprint": "budget:spend:wechat:-:day:2026-11-24:80",
            "status": "firing",
            "kind": "budget",
            "severity": "warning",
            "metric": "spend",
            "channel": "wechat",
            "campaign": None,
            "window": "day",
            "window_start": "2026-11-24T00:00:00+08:00",
            "window_end": "2026-11-25T00:00:00+08:00",
            "value": 48_100.0,
            "threshold": 48_000.0,
            "fired_at": "2026-11-24T08:42:00+00:00",
            "resolved_at": None,
            "evidence": {"spendable": 60_000.0, "period": "day"},
            "summary": "wechat has spent 80 %",
        },
    ]


def sheet() -> DailySheet:
    """The daily sheet of ``DAY``."""
    return build_daily(
        day_data(DAY, drop=True), episodes(alerts()), ZONE, "CNY", approvals=APPROVALS, budgets=BUDGETS
    )


def review() -> WeeklyReview:
    """The review of the week of ``DAY``, Monday to Thursday, against the week before."""
    days = {MONDAY + timedelta(days=i): day_data(MONDAY + timedelta(days=i), drop=i == 1) for i in range(4)}
    before = {d - timedelta(days=7): day_data(d - timedelta(days=7), seed=2) for d in days}
    return build_weekly(
        MONDAY, days, before, episodes(alerts()), ZONE, "CNY", budgets=BUDGETS, approvals=APPROVALS
    )
