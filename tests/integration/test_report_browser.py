"""The HTML reports in a real headless browser (Debian's chromium), on a phone-sized screen: no console
error, no failed load, every chart shown, nothing wider than the screen.
The harness is shown to catch errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alerts.report import render
from alerts.report.charts import daily_charts, weekly_charts
from tests.support import reports
from tests.support.browser import chromium, load

pytestmark = pytest.mark.integration

CHECKS = {
    "fits": "document.documentElement.scrollWidth <= window.innerWidth",
    "images": "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)",
    "cards": "getComputedStyle(document.querySelector('thead')).display",
    "title": "document.querySelector('h1').textContent",
}


def _open(page: str, path: Path) -> dict[str, object]:
    chromium()
    path.write_text(page, encoding="utf-8")
    result = asyncio.run(load(path.as_uri(), CHECKS))
    path.with_suffix(".png").write_bytes(result.screenshot)
    assert result.screenshot.startswith(b"\x89PNG"), "no screenshot"
    return {"errors": result.errors, **result.checks}


def test_the_daily_sheet_renders_on_a_phone_without_errors(tmp_path: Path) -> None:
    sheet = reports.sheet()
    seen = _open(render.daily_html(sheet, daily_charts(sheet)), tmp_path / "daily.html")
    assert seen["errors"] == []
    assert seen["fits"] is True, "the page is wider than a phone's screen"
    assert seen["images"] == [True, True]
    assert seen["cards"] == "none"  # on a phone the table is cards: no header row
    assert seen["title"] == "Daily sheet · 2026-11-24"


def test_the_weekly_review_renders_on_a_phone_without_errors(tmp_path: Path) -> None:
    review = reports.review()
    seen = _open(render.weekly_html(review, weekly_charts(review)), tmp_path / "weekly.html")
    assert seen["errors"] == []
    assert seen["fits"] is True
    assert seen["images"] == [True, True]


def test_the_harness_sees_console_errors_and_failed_loads(tmp_path: Path) -> None:
    broken = (
        "<!doctype html><title>x</title><h1>x</h1><table><thead><tr><th>a</th></tr></thead></table>"
        "<img src='missing.png'><script>console.error('boom'); undefined_function();</script>"
    )
    seen = _open(broken, tmp_path / "broken.html")
    errors = "\n".join(map(str, seen["errors"]))  # type: ignore[call-overload]
    assert "boom" in errors and "undefined_function" in errors and "missing.png" in errors
    assert seen["images"] == [False]
