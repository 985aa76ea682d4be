"""Event-time tumbling windows: 1 minute, 1 hour and 1 day, with hours and days in a time zone.

Pure: no I/O. Window starts are epoch seconds (int). Events are folded into 1-minute buckets only;
hour and day buckets are roll-ups of minutes, computed when partials are published, so that the
per-event work is one dictionary update.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MINUTE_S: Final = 60
#: The windows of CONTRACT.md §2, by name; "total" is the all-time bucket behind the counters.
WINDOWS: Final = ("1m", "1h", "1d")
TOTAL: Final = "total"
NOMINAL_S: Final = {"1m": 60, "1h": 3600, "1d": 86400}


def minute_start(ts_ms: int) -> int:
    """Start (epoch seconds) of the 1-minute bucket holding ``ts_ms``."""
    ts_s = ts_ms // 1000
    return ts_s - ts_s % MINUTE_S


class Calendar:
    """Hour and day buckets in one time zone (hours follow the zone's offset, days its midnight)."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.hour_start = lru_cache(maxsize=8192)(self._hour_start)
        self.day_start = lru_cache(maxsize=4096)(self._day_start)

    def _hour_start(self, minute: int) -> int:
        local = datetime.fromtimestamp(minute, self.zone)
        return int(local.replace(minute=0, second=0, microsecond=0).timestamp())

    def _day_start(self, minute: int) -> int:
        local = datetime.fromtimestamp(minute, self.zone)
        # fold=0: on a day whose clocks go back at midnight, the first midnight is the day's start.
        return int(local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0).timestamp())

    def start(self, window: str, ts_s: int) -> int:
        """Start of the ``window`` bucket holding the instant ``ts_s``."""
        minute = ts_s - ts_s % MINUTE_S
        if window == "1m":
            return minute
        if window == "1h":
            return self.hour_start(minute)
        if window == "1d":
            return self.day_start(minute)
        if window == TOTAL:
            return 0
        raise ValueError(f"unknown window {window!r}")

    def end(self, window: str, start: int) -> int:
        """End (exclusive) of the bucket starting at ``start`` (days may be 23 or 25 hours long)."""
        if window == "1d":
            local = datetime.fromtimestamp(start, self.zone) + timedelta(days=1)
            return int(local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0).timestamp())
        if window == TOTAL:
            raise ValueError("the total bucket never ends")
        return start + NOMINAL_S[window]

    def previous(self, window: str, start: int) -> int:
        """Start of the bucket before the one starting at ``start``."""
        return self.start(window, start - 1)


def known_time_zone(name: str) -> str:
    """``name`` if it is an IANA time zone; ValueError saying how to fix it otherwise (for validators)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Asia/Shanghai") from exc
    return name
