"""The one home of time, money and p-value wording (``alerts.wording``)."""

from __future__ import annotations

from datetime import UTC
from zoneinfo import ZoneInfo

import pytest

from alerts.wording import ago_text, money_text, rfc3339, rfc3339_utc_ms, time_left_text

SHANGHAI = ZoneInfo("Asia/Shanghai")
T = 1_795_000_000  # 2026-11-18T11:06:40Z


def test_rfc3339_is_to_the_second_in_the_given_zone() -> None:
    assert rfc3339(T, SHANGHAI) == "2026-11-18T19:06:40+08:00"
    assert rfc3339(T + 0.75, UTC) == "2026-11-18T11:06:40+00:00"


def test_rfc3339_utc_ms_keeps_milliseconds_and_says_z() -> None:
    assert rfc3339_utc_ms(T * 1000 + 250) == "2026-11-18T11:06:40.250Z"


@pytest.mark.parametrize(
    ("amount", "text"),
    [(10_000, "10,000"), (10_000.004, "10,000"), (99.999, "100"), (2_500.5, "2,500.50"), (0.25, "0.25")],
)
def test_money_is_whole_when_whole_to_the_cent(amount: float, text: str) -> None:
    assert money_text(amount) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "0 min"),
        (59 * 60, "59 min"),
        (3 * 3600, "3 h"),
        (3 * 3600 + 20 * 60, "3 h 20 min"),
        (60 * 3600, "2.5 days"),
    ],
)
def test_time_left(seconds: float, text: str) -> None:
    assert time_left_text(seconds) == text


@pytest.mark.parametrize(
    ("age_s", "text"), [(-1, "0s ago"), (40.9, "40s ago"), (300, "5m ago"), (2 * 86_400, "2d ago")]
)
def test_ago(age_s: float, text: str) -> None:
    assert ago_text(age_s) == text
