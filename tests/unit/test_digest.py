"""Digests without I/O: the ``digests:`` section, when a digest is due and what it covers, signed report
links, and the card each chat service gets (hostile channel names stay inert)."""

from __future__ import annotations

from datetime import date, datetime, time
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from alerts.report.daily import DayData, build_daily
from alerts.report.model import Counts
from alerts.router.config import RoutesError, parse_routes
from alerts.router.digest import CATCH_UP_S, due, period_of
from alerts.router.digest_cards import (
    DigestContent,
    ReportLinks,
    ReportRef,
    build_digest_request,
    daily_content,
    sign_report,
    verify_report,
    weekly_content,
)
from alerts.router.targets import TargetSpec, dingtalk_sign
from alerts.router.tokens import Action, TokenError, sign, verify
from tests.support import reports

KEY = b"unit-digest-key-0123456789-abcdefghijkl"
TARGETS = "targets:\n  hook: {type: webhook, url: 'http://127.0.0.1:1/h'}\n"


def test_the_digests_section_is_validated() -> None:
    config = parse_routes(
        TARGETS
        + "digests:\n  - {at: 09:30, targets: [hook]}\n  - {report: weekly, at: '17:00', targets: [hook]}\n"
    )
    daily, weekly = config.digests
    assert daily.report == "daily" and daily.at == time(9, 30)  # YAML's base-60 09:30 read as the time
    assert weekly.day == "friday" and weekly.at == time(17, 0)
    with pytest.raises(RoutesError, match="unknown target"):
        parse_routes(TARGETS + "digests:\n  - {at: '09:00', targets: [nobody]}\n")
    with pytest.raises(RoutesError, match="digests.0.targets"):
        parse_routes(TARGETS + "digests:\n  - {at: '09:00', targets: []}\n")
    with pytest.raises(RoutesError, match="digests.0"):
        parse_routes(
            TARGETS + "digests:\n  - {at: '09:00', on: friday, targets: [hook]}\n"
        )  # YAML: on = true
    assert parse_routes(TARGETS).digests == []


def test_a_digest_is_due_from_its_time_on_its_day_for_the_catch_up_window() -> None:
    config = parse_routes(
        TARGETS + "digests:\n  - {at: '09:00', targets: [hook]}\n"
        "  - {report: weekly, at: '09:00', day: friday, targets: [hook]}\n"
    )
    daily, weekly = config.digests
    zone = reports.ZONE
    friday_9 = datetime(2026, 11, 27, 9, 0, tzinfo=zone).timestamp()
    assert not due(daily, friday_9 - 1, zone) and due(daily, friday_9, zone)
    assert due(daily, friday_9 + CATCH_UP_S - 1, zone) and not due(daily, friday_9 + CATCH_UP_S, zone)
    assert due(weekly, friday_9, zone) and not due(weekly, friday_9 - 86400, zone)
    assert period_of(daily, date(2026, 11, 27)) == "2026-11-26"
    assert period_of(weekly, date(2026, 11, 27)) == "2026-W48"
    assert period_of(weekly, date(2026, 11, 30)) == "2026-W48"  # a Monday digest: the week just over
    # The time is local: 09:00 in Shanghai is 01:00 UTC.
    assert due(daily, datetime(2026, 11, 27, 1, 0, tzinfo=zone).timestamp() + 8 * 3600, zone)


def test_report_links_are_signed_expire_and_are_no_action_tokens() -> None:
    ref = ReportRef("daily", "2026-11-24", expires_s=1000.0)
    token = sign_report(ref, KEY)
    assert verify_report(token, KEY, 999.0) == ref
    with pytest.raises(TokenError, match="expired"):
        verify_report(token, KEY, 1001.0)
    with pytest.raises(TokenError, match="not valid"):
        verify_report(token, b"another-key-0123456789-abcdefghijklmnop", 999.0)
    payload, _, mac = token.partition(".")
    with pytest.raises(TokenError, match="not valid"):
        verify_report(payload[:-2] + "xx." + mac, KEY, 999.0)
    action = sign(Action("ack", "fp", "id", None, 1000.0), KEY)
    with pytest.raises(TokenError):
        verify_report(action, KEY, 999.0)
    with pytest.raises(TokenError):
        verify(token, KEY, 999.0)
    with pytest.raises(TokenError, match="asks for more"):
        verify_report(sign_report(ReportRef("daily", "x", 10 * 86400.0), KEY), KEY, 0.0)
    links = ReportLinks(KEY, "https://router.example/")
    assert links.chart("weekly", "2026-W48", 0.0).startswith("https://router.example/r/")
    assert links.chart("weekly", "2026-W48", 0.0).endswith("/chart.png")


def _content(locale: str = "en", channel: str = "douyin") -> DigestContent:
    sheet = build_daily(
        DayData(reports.DAY, {channel: Counts(100, 10, 8, 4, 2, 1, 600 * 10**6, 300 * 10**6)}),
        [],
        reports.ZONE,
        "CNY",
    )
    return daily_content(sheet, locale, "https://r.example/r/t", "https://r.example/r/t/chart.png")


def test_each_chat_service_gets_the_numbers_the_chart_and_the_link() -> None:
    content = _content()
    dingtalk = build_digest_request(
        TargetSpec("d", "dingtalk", "https://oapi/robot?access_token=abc", "s3"), content, 1_700_000_000.0
    )
    query = parse_qs(urlsplit(dingtalk.url).query)
    assert query["sign"] == [dingtalk_sign("s3", query["timestamp"][0])]
    text = orjson.loads(dingtalk.body)["markdown"]["text"]
    assert (
        "![Chart](https://r.example/r/t/chart.png)" in text and "[Full report](https://r.example/r/t)" in text
    )
    assert "GMV 600.00 CNY · orders 2 · cost 300.00 · ROI 2.00" in text
    wecom = build_digest_request(TargetSpec("w", "wecom", "https://qyapi/send?key=k"), content, 0.0)
    body = orjson.loads(wecom.body)["markdown"]["content"]
    assert len(body.encode()) <= 4096 and body.endswith("[Chart](https://r.example/r/t/chart.png)")
    zh = build_digest_request(TargetSpec("f", "feishu", "https://open/hook/x"), _content("zh-CN"), 0.0)
    assert "日报 2026-11-24" in zh.body.decode() and "订单 2" in zh.body.decode()
    with pytest.raises(ValueError, match="takes text"):
        build_digest_request(TargetSpec("c", "console"), content, 0.0)


def test_hostile_channel_names_stay_inert_in_every_card() -> None:
    content = _content(channel="<at id=all></at>[x](http://evil.com)")
    for kind in ("feishu", "dingtalk", "wecom"):
        body = build_digest_request(TargetSpec("t", kind, "https://h/x"), content, 0.0).body.decode()
        assert "<at id=all>" not in body and "](http://evil.com)" not in body and "evil.com" not in body
    slack = build_digest_request(TargetSpec("s", "slack", "https://h/x"), content, 0.0).body.decode()
    assert "<at id=all>" not in slack and "evil.com" not in slack


def test_the_weekly_digest_carries_the_recommendations() -> None:
    content = weekly_content(reports.review(), "en", None, None)
    assert content.title.startswith("📈 Weekly review 2026-W48 (Mon 11-23 – Thu 11-26)")
    assert content.extra[0].startswith("Pause baidu: ROI 0.90 < 1")
    body = orjson.loads(
        build_digest_request(TargetSpec("h", "webhook", "https://h/x", "s"), content, 0.0).body
    )
    assert body["report"] == "weekly" and body["report_url"] is None and body["data"]["week"] == "2026-W48"
