"""The notifier's pure half: message text, each target's request (body shape, signing, truncation) and the
pure parts of delivery (classifying answers, backoff, Retry-After, the rate limiter on a fake clock)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.router.delivery import RateLimiter, RetryPolicy, classify, redact, retry_after_s
from alerts.router.messages import MAX_SECTIONS, Notification, render, window_text
from alerts.router.targets import (
    HTTP_TYPES,
    TARGET_TYPES,
    WECOM_MAX_BYTES,
    HttpRequest,
    TargetSpec,
    build_request,
    build_requests,
    dingtalk_sign,
    feishu_sign,
    is_rate_limited_body,
    paginate,
    rate_per_minute,
    response_error,
    truncate_utf8,
    with_query,
)
from alerts.wording import p_text
from tests.support.alerts import ALERT

NOW_S = 1_795_999_800.0
SECRET = "SECtest-secret"
RESOLVED: dict[str, Any] = {
    **ALERT,
    "id": "r9",
    "status": "resolved",
    "change": "resolved",
    "value": 0.023,
    "change_pct": None,
    "evidence": {**ALERT["evidence"], "last_firing_value": 0.0115},
    "summary": "RESOLVED douyin CTR: back to 2.30 % (was: CTR fell 52 %)",
    "resolved_at": "2026-11-24T10:40:00+08:00",
}
BUDGET: dict[str, Any] = {
    **ALERT,
    "id": "b7",
    "kind": "budget",
    "metric": "spend",
    "severity": "warning",
    "campaign": "spring",
    "value": 8200.0,
    "baseline": None,
    "threshold": 8000.0,
    "change_pct": None,
    "evidence": {"spent": 8200.0, "amount": 10000.0, "used_ratio": 0.82, "currency": "CNY", "period": "day"},
    "summary": (
        "douyin/spring has spent 82 % of its daily budget (8,200 / 10,000 CNY); continuing needs approval"
    ),
    "runbook_url": "docs/runbook.md#budget",
}
ACTIONS = {"a1b2c3": {"ack": "https://adpulse.example/ack/t1", "snooze": "https://adpulse.example/snooze/t1"}}
LOCALES = ("zh-CN", "en")


def spec(kind: str, **fields: Any) -> TargetSpec:
    defaults: dict[str, Any] = {"url": f"https://hooks.example/{kind}/TOKEN12345", "secret": SECRET}
    return TargetSpec(name=f"{kind}-team", type=kind, **{**defaults, **fields})


def body_of(request: HttpRequest) -> dict[str, Any]:
    decoded = orjson.loads(request.body)
    assert isinstance(decoded, dict)
    return decoded


# -- messages ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alert", "locale", "title"),
    [
        (ALERT, "zh-CN", "🔴 [严重] douyin 点击率下降 52 %"),
        (ALERT, "en", "🔴 [critical] douyin CTR fell 52 %"),
        (RESOLVED, "zh-CN", "✅ [已恢复] douyin 点击率恢复至 2.30 %"),
        (RESOLVED, "en", "✅ [resolved] douyin CTR back to 2.30 %"),
        (BUDGET, "en", "🟠 [warning] douyin/spring budget 82 % used"),
        (BUDGET, "zh-CN", "🟠 [警告] douyin/spring 预算已用 82 %"),
        ({**ALERT, "change_pct": None, "threshold": 0.02}, "en", "🔴 [critical] douyin CTR 1.15 % < 2.00 %"),
    ],
)
def test_title_says_where_and_the_headline_number(alert: dict[str, Any], locale: str, title: str) -> None:
    assert render(Notification((alert,), locale=locale)).title == title


@pytest.mark.parametrize("locale", LOCALES)
def test_firing_body_has_the_numbers_window_evidence_links_and_owners(locale: str) -> None:
    n = Notification((ALERT,), owners=("@zhang.wei",), locale=locale, actions=ACTIONS)
    rendered = render(n)
    for body in (rendered.markdown, rendered.text):
        lines = body.splitlines()
        assert "1.15 %" in lines[0] and "-52.1 %" in lines[0], "the headline number comes first"
        for expected in (ALERT["summary"], "2.40 %", "10:00–10:10", "38,000", "437", "p < 0.001"):
            assert expected in body
        assert ALERT["description"] in body
        assert ALERT["dashboard_url"] in body and ALERT["runbook_url"] in body
        assert ACTIONS["a1b2c3"]["ack"] in body and ACTIONS["a1b2c3"]["snooze"] in body
        assert "@zhang.wei" in body
    assert rendered.markdown.startswith("**")
    words = ("Firing (new)", "critical", "anomaly", "Acknowledge", "Snooze 1h", "Owners")
    if locale == "zh-CN":
        words = ("告警中（新）", "严重", "异常", "确认", "静默 1 小时", "负责人")
    for word in words:
        assert word in rendered.markdown
    assert f"[{words[3]}]({ACTIONS['a1b2c3']['ack']})" in rendered.markdown


@pytest.mark.parametrize(("locale", "was"), [("en", "(was 1.15 %)"), ("zh-CN", "（此前 1.15 %）")])
def test_resolved_body_says_what_it_recovered_to(locale: str, was: str) -> None:
    text = render(Notification((RESOLVED,), locale=locale)).text
    assert text.splitlines()[0].endswith(was)
    assert "2.30 %" in text.splitlines()[0]
    assert RESOLVED["summary"] in text


def test_budget_warning_shows_usage_approve_link_and_a_relative_runbook_as_text() -> None:
    actions = {"b7": {"approve": "https://adpulse.example/approve/t2", "ack": "not-a-url"}}
    rendered = render(Notification((BUDGET,), locale="en", actions=actions))
    assert "Budget 82 % used (10,000 CNY / day)" in rendered.text
    assert "Threshold 8,000" in rendered.text
    assert "[Approve](https://adpulse.example/approve/t2)" in rendered.markdown
    assert "not-a-url" not in rendered.markdown, "only web links become links"
    assert "Runbook: docs/runbook.md#budget" in rendered.markdown
    assert "](docs/runbook.md" not in rendered.markdown


@pytest.mark.parametrize(
    ("locale", "title"),
    [
        ("en", "🔴 douyin: 3 alerts (1 critical, 1 warning, 1 resolved)"),
        ("zh-CN", "🔴 douyin：3 条告警（1 条严重、1 条警告、1 条已恢复）"),
    ],
)
def test_a_burst_gets_one_title_and_a_section_per_alert(locale: str, title: str) -> None:
    rendered = render(Notification((ALERT, BUDGET, RESOLVED), locale=locale))
    assert rendered.title == title
    for alert in (ALERT, BUDGET, RESOLVED):
        assert alert["summary"] in rendered.text
    assert rendered.text.count("\n\n") >= 2


def test_a_huge_burst_is_rendered_whole_never_summarised_away() -> None:
    alerts = [{**ALERT, "id": f"w{i}", "severity": "warning", "summary": f"w{i}"} for i in range(14)]
    alerts.insert(3, {**ALERT, "id": "c", "summary": "the critical one"})
    rendered = render(Notification(tuple(alerts), locale="en"))
    assert rendered.text.count("Firing (new)") == 15
    assert all(a["summary"] in rendered.text for a in alerts)
    assert "more alerts" not in rendered.text
    assert rendered.title.startswith("🔴 douyin: 15 alerts (1 critical")


def _burst(count: int, description: str = "Clicks per impression on douyin dropped ...") -> tuple[Any, ...]:
    return tuple(
        {**ALERT, "id": f"id{i:03d}", "summary": f"CTR fell 52 % (alert {i:03d})", "description": description}
        for i in range(count)
    )


@pytest.mark.parametrize("kind", ["feishu", "dingtalk", "wecom", "slack", "console", "apprise"])
def test_a_burst_goes_out_over_several_messages_each_alert_in_exactly_one(kind: str) -> None:
    spec = TargetSpec("t", kind, url="https://example.invalid/hook", locale="en")
    # Long Chinese descriptions (3 bytes a character) make WeCom's 4 KB the binding limit.
    burst = _burst(100, "点击率下降，请检查素材与投放位。" * 40)
    pages = paginate(spec, Notification(burst, owners=("@zhang.wei",), locale="en"), NOW_S)
    assert [a["id"] for page in pages for a in page.alerts] == [a["id"] for a in burst]
    assert all(0 < len(page.alerts) <= MAX_SECTIONS for page in pages)
    assert [page.part for page in pages] == [(i, len(pages)) for i in range(1, len(pages) + 1)]
    for page in pages:
        title = render(page).title
        assert f"(part {page.part[0]} of {len(pages)})" in title  # type: ignore[index]
        if kind in HTTP_TYPES:
            body = build_request(spec, page, NOW_S).body.decode()
            for alert in page.alerts:
                # Every alert of the page is in the message the service gets, with its dashboard link.
                assert alert["summary"] in body
            assert body.count(ALERT["dashboard_url"]) >= len(page.alerts)
            if kind == "wecom":
                content = orjson.loads(body)["markdown"]["content"]
                assert not content.endswith("…") and len(content.encode()) <= WECOM_MAX_BYTES
                assert "@zhang.wei" in content or "<@zhang.wei>" in content
    if kind == "wecom":
        assert len(pages) > 100 // MAX_SECTIONS  # the size, not only the count, split it


def test_a_burst_that_fits_is_one_message_without_a_part_marker() -> None:
    spec = TargetSpec("t", "feishu", url="https://example.invalid/hook", locale="en")
    n = Notification(_burst(MAX_SECTIONS), locale="en")
    assert paginate(spec, n, NOW_S) == (n,)
    assert "part" not in render(n).title


def test_a_webhook_page_is_one_alert() -> None:
    spec = TargetSpec("t", "webhook", url="https://example.invalid/hook")
    pages = paginate(spec, Notification(_burst(3)), NOW_S)
    assert [len(p.alerts) for p in pages] == [1, 1, 1]


@pytest.mark.parametrize(
    ("locale", "line"), [("en", "not acknowledged by @li.na"), ("zh-CN", "@li.na 未确认")]
)
def test_an_escalation_says_who_did_not_react(locale: str, line: str) -> None:
    rendered = render(Notification((ALERT,), owners=("@boss",), locale=locale, escalated_from=("@li.na",)))
    assert rendered.title.startswith("⏫ 🔴")
    assert line in rendered.text.splitlines()[0]
    assert "@boss" in rendered.text


@pytest.mark.parametrize(
    ("p_value", "text"),
    [(1e-9, "p < 0.0001"), (0.0009, "p < 0.001"), (0.001, "p < 0.01"), (0.0234, "p = 0.023")],
)
def test_p_text(p_value: float, text: str) -> None:
    assert p_text(p_value) == text


@pytest.mark.parametrize(
    ("start", "end", "text"),
    [
        ("2026-11-24T10:00:00+08:00", "2026-11-24T10:10:00+08:00", "10:00–10:10"),
        ("2026-11-24T00:00:00+08:00", "2026-11-25T00:00:00+08:00", "11-24 00:00–11-25 00:00"),
        ("2026-11-24T02:00:00Z", None, "11-24 02:00"),
        ("yesterday", "2026-11-24T10:10:00+08:00", None),
        (None, None, None),
    ],
)
def test_window_text(start: str | None, end: str | None, text: str | None) -> None:
    assert window_text(start, end) == text


_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_FIELD_VALUES = {
    key: st.one_of(st.just(value), st.none(), _ANY_JSON)
    for key, value in {**ALERT, "threshold": 0.02, "region": "east", "owner": "@x"}.items()
}


@st.composite
def partial_alerts(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.sets(st.sampled_from(sorted(_FIELD_VALUES))))
    alert = {key: draw(_FIELD_VALUES[key]) for key in keys}
    if "evidence" in alert and draw(st.booleans()):
        alert["evidence"] = draw(
            st.dictionaries(st.sampled_from(["impressions", "p_value", "used_ratio"]), _ANY_JSON)
        )
    return alert


@settings(max_examples=300, deadline=None)
@given(
    alerts=st.lists(partial_alerts(), min_size=1, max_size=4),
    locale=st.sampled_from([*LOCALES, "fr"]),
    owners=st.lists(st.sampled_from(["@zhang.wei", "13800000000", "@", "U012ABCDEF", "ou_1"]), max_size=3),
)
def test_partial_alerts_render_and_build_without_errors(
    alerts: list[dict[str, Any]], locale: str, owners: list[str]
) -> None:
    n = Notification(
        tuple(alerts), owners=tuple(owners), locale=locale, actions={"a1b2c3": {"ack": "http://x/a"}}
    )
    rendered = render(n)
    assert rendered.title and isinstance(rendered.markdown, str) and isinstance(rendered.text, str)
    for kind in ("feishu", "dingtalk", "wecom", "slack"):
        assert body_of(build_request(spec(kind, locale=locale), n, NOW_S))


# -- targets: bodies and signing ---------------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(("alert", "template"), [(ALERT, "red"), (BUDGET, "orange"), (RESOLVED, "green")])
def test_feishu_card(alert: dict[str, Any], template: str, locale: str) -> None:
    n = Notification((alert,), owners=("@zhang.wei",), locale="en", actions=ACTIONS)
    request = build_request(spec("feishu", locale=locale), n, NOW_S)
    body = body_of(request)
    assert request.url == spec("feishu").url
    assert body["msg_type"] == "interactive"
    assert body["timestamp"] == str(int(NOW_S))
    expected = hmac.new(f"{int(NOW_S)}\n{SECRET}".encode(), b"", hashlib.sha256).digest()
    assert body["sign"] == base64.b64encode(expected).decode()
    card = body["card"]
    assert card["header"]["template"] == template
    title = render(Notification((alert,), locale=locale)).title
    assert card["header"]["title"] == {"tag": "plain_text", "content": title}
    texts = [e["text"]["content"] for e in card["elements"] if e["tag"] == "div"]
    assert alert["summary"] in texts[0] and "@zhang.wei" in texts[-1]
    buttons = [b for e in card["elements"] if e["tag"] == "action" for b in e["actions"]]
    urls = {b["url"] for b in buttons}
    assert alert["dashboard_url"] in urls
    assert all(b["tag"] == "button" and b["text"]["tag"] == "plain_text" for b in buttons)
    if alert is ALERT:
        assert {ACTIONS["a1b2c3"]["ack"], ACTIONS["a1b2c3"]["snooze"], ALERT["runbook_url"]} <= urls


def test_feishu_without_secret_has_no_timestamp_or_sign_and_info_is_blue() -> None:
    body = body_of(
        build_request(spec("feishu", secret=None), Notification(({**ALERT, "severity": "info"},)), NOW_S)
    )
    assert "timestamp" not in body and "sign" not in body
    assert body["card"]["header"]["template"] == "blue"


def test_feishu_sign_matches_the_documented_recipe() -> None:
    # Feishu's documented example: the string to sign is the HMAC *key*, the message is empty.
    key = f"1599360473\n{SECRET}".encode()
    assert (
        feishu_sign(SECRET, "1599360473")
        == base64.b64encode(hmac.new(key, digestmod=hashlib.sha256).digest()).decode()
    )


@pytest.mark.parametrize(
    ("url", "joined"),
    [
        (
            "https://oapi.dingtalk.com/robot/send?access_token=abc",
            "https://oapi.dingtalk.com/robot/send?access_token=abc&x=1",
        ),
        ("https://oapi.dingtalk.com/robot/send", "https://oapi.dingtalk.com/robot/send?x=1"),
        ("https://oapi.dingtalk.com/robot/send?", "https://oapi.dingtalk.com/robot/send?x=1"),
    ],
)
def test_with_query_joins_with_the_right_separator(url: str, joined: str) -> None:
    assert with_query(url, "x=1") == joined


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("alert", [ALERT, RESOLVED])
def test_dingtalk_markdown_mentions_and_signed_url(alert: dict[str, Any], locale: str) -> None:
    target = spec("dingtalk", url="https://oapi.dingtalk.com/robot/send?access_token=abc", locale=locale)
    n = Notification((alert,), owners=("13800000000", "@zhang.wei"))
    request = build_request(target, n, NOW_S)
    query = parse_qs(urlsplit(request.url).query)
    timestamp = str(int(NOW_S * 1000))
    assert query["access_token"] == ["abc"] and query["timestamp"] == [timestamp]
    digest = hmac.new(SECRET.encode(), f"{timestamp}\n{SECRET}".encode(), hashlib.sha256).digest()
    assert query["sign"] == [base64.b64encode(digest).decode()]
    raw_sign = request.url.rsplit("sign=", 1)[1]
    assert (
        unquote_plus(raw_sign) == dingtalk_sign(SECRET, timestamp)
        and "+" not in raw_sign
        and "/" not in raw_sign
    )
    body = body_of(request)
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"] == render(Notification((alert,), locale=locale)).title
    assert alert["summary"] in body["markdown"]["text"]
    assert body["at"] == {"atMobiles": ["13800000000"], "atUserIds": ["zhang.wei"], "isAtAll": False}
    assert "@13800000000" in body["markdown"]["text"] and "@zhang.wei" in body["markdown"]["text"]


def test_dingtalk_without_secret_leaves_the_url_alone() -> None:
    target = spec("dingtalk", url="https://oapi.dingtalk.com/robot/send?access_token=abc", secret=None)
    assert build_request(target, Notification((ALERT,)), NOW_S).url == target.url


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("alert", [ALERT, RESOLVED])
def test_wecom_markdown(alert: dict[str, Any], locale: str) -> None:
    n = Notification((alert,), owners=("@zhang.wei", "13800000000"))
    body = body_of(build_request(spec("wecom", locale=locale), n, NOW_S))
    assert set(body) == {"msgtype", "markdown"} and body["msgtype"] == "markdown"
    content = body["markdown"]["content"]
    assert content.startswith('<font color="') and alert["summary"] in content
    assert "<@zhang.wei>" in content and "@13800000000" in content


def test_wecom_long_content_is_cut_on_a_character_boundary_keeping_the_mentions() -> None:
    long = {**ALERT, "description": "点击率下降，检查素材与落地页。" * 40}
    alerts = tuple({**long, "id": f"x{i}", "summary": f"第 {i} 条：{ALERT['summary']}"} for i in range(10))
    body = body_of(build_request(spec("wecom"), Notification(alerts, owners=("@zhang.wei",)), NOW_S))
    content = body["markdown"]["content"]
    encoded = content.encode()
    assert len(encoded) <= WECOM_MAX_BYTES
    assert "…" in content and content.endswith("<@zhang.wei>")
    assert encoded.decode() == content


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), limit=st.integers(min_value=3, max_value=400))
def test_truncate_utf8_fits_and_is_a_prefix(text: str, limit: int) -> None:
    cut = truncate_utf8(text, limit)
    assert len(cut.encode()) <= max(limit, len("…".encode()))
    if cut != text:
        assert cut.endswith("…") and text.startswith(cut[:-1])


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("alert", [ALERT, RESOLVED])
def test_slack_blocks(alert: dict[str, Any], locale: str) -> None:
    tricky = {**alert, "summary": alert["summary"] + " <b>&</b>"}
    n = Notification((tricky,), owners=("U012ABCDEF", "@zhang.wei"), actions={alert["id"]: ACTIONS["a1b2c3"]})
    request = build_request(spec("slack", locale=locale), n, NOW_S)
    assert request.headers["Content-Type"] == "application/json"
    body = body_of(request)
    blocks = body["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "actions", "context"]
    assert blocks[0]["text"]["type"] == "plain_text" and len(blocks[0]["text"]["text"]) <= 150
    section = blocks[1]["text"]
    assert section["type"] == "mrkdwn" and section["text"].startswith("*") and "**" not in section["text"]
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in section["text"], "Slack control characters are escaped"
    buttons = blocks[2]["elements"]
    assert {b["url"] for b in buttons} >= {alert["dashboard_url"], ACTIONS["a1b2c3"]["ack"]}
    assert next(b for b in buttons if b["url"] == ACTIONS["a1b2c3"]["ack"])["style"] == "primary"
    mentions = blocks[3]["elements"][0]["text"]
    assert "<@U012ABCDEF>" in mentions and "@zhang.wei" in mentions
    assert body["text"].startswith(render(Notification((alert,), locale=locale)).title.split(" ")[0])
    assert "<@U012ABCDEF>" in body["text"]


def test_slack_links_render_as_mrkdwn_when_inline() -> None:
    from alerts.router.messages import compose, section_text
    from alerts.router.targets import SLACK

    section = compose(Notification((ALERT,), locale="en")).sections[0]
    assert f"<{ALERT['dashboard_url']}|Dashboard>" in section_text(section, SLACK)


def test_webhook_body_is_exactly_the_alert_json_signed_with_hmac() -> None:
    request = build_request(spec("webhook"), Notification((ALERT,)), NOW_S)
    assert request.body == orjson.dumps(ALERT)
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Adpulse-Signature"] == f"sha256={expected}"
    assert request.headers["X-Adpulse-Timestamp"] == str(int(NOW_S))
    assert request.headers["Idempotency-Key"] == "a1b2c3:webhook-team"
    assert request.headers["Content-Type"] == "application/json"
    unsigned = build_request(spec("webhook", secret=None), Notification((ALERT,)), NOW_S)
    assert "X-Adpulse-Signature" not in unsigned.headers


def test_webhook_sends_one_request_per_alert_of_a_burst() -> None:
    n = Notification((ALERT, RESOLVED))
    requests = build_requests(spec("webhook"), n, NOW_S)
    assert [r.body for r in requests] == [orjson.dumps(ALERT), orjson.dumps(RESOLVED)]
    assert [r.headers["Idempotency-Key"] for r in requests] == ["a1b2c3:webhook-team", "r9:webhook-team"]
    with pytest.raises(ValueError, match="one request per alert"):
        build_request(spec("webhook"), n, NOW_S)
    assert len(build_requests(spec("feishu"), n, NOW_S)) == 1


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (spec("console"), "does not send HTTP"),
        (spec("apprise"), "does not send HTTP"),
        (spec("feishu", url=None), "no url"),
        (spec("slack", url=""), "no url"),
    ],
)
def test_build_request_refuses_what_is_not_http(target: TargetSpec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_request(target, Notification((ALERT,)), NOW_S)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown type 'teams'"):
        TargetSpec(name="x", type="teams")


@pytest.mark.parametrize(
    ("kind", "status", "body", "error"),
    [
        ("feishu", 200, b'{"code":0,"msg":"success","data":{}}', None),
        ("feishu", 200, b'{"StatusCode":0,"StatusMessage":"success"}', None),
        (
            "feishu",
            200,
            b'{"code":19021,"msg":"sign match fail or timestamp is not within one hour"}',
            "code 19021",
        ),
        (
            "feishu",
            200,
            b'{"StatusCode":0,"code":9499,"msg":"too many request"}',
            "code 9499: too many request",
        ),
        ("feishu", 200, b"<html>", "unreadable answer"),
        ("feishu", 400, b'{"code":9499,"msg":"Bad Request"}', "code 9499: Bad Request"),
        ("feishu", 200, b'{"code":[1],"msg":null}', "code [1]"),
        ("dingtalk", 200, b'{"errcode":0,"errmsg":"ok"}', None),
        ("dingtalk", 200, b'{"errcode":310000,"errmsg":"sign not match"}', "code 310000: sign not match"),
        ("wecom", 200, b'{"errcode":0,"errmsg":"ok"}', None),
        ("wecom", 200, b'{"errcode":93000,"errmsg":"invalid webhook url"}', "code 93000"),
        ("slack", 200, b"ok", None),
        ("slack", 400, b"invalid_payload", "invalid_payload"),
        ("slack", 404, b"", "Not Found"),
        ("webhook", 204, b"", None),
        ("webhook", 500, b"", "Internal Server Error"),
    ],
)
def test_response_error(kind: str, status: int, body: bytes, error: str | None) -> None:
    found = response_error(spec(kind), status, body)
    if error is None:
        assert found is None
    else:
        assert found is not None and error in found


@pytest.mark.parametrize(
    ("kind", "body", "limited"),
    [
        ("feishu", b'{"code":9499,"msg":"too many request","data":{}}', True),
        ("feishu", b'{"code":9499,"msg":"Bad Request"}', False),
        ("feishu", b'{"code":11232,"msg":"frequency limited"}', True),
        ("dingtalk", b'{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}', True),
        ("dingtalk", b'{"errcode":310000,"errmsg":"sign not match"}', False),
        ("wecom", b'{"errcode":45009,"errmsg":"api freq out of limit"}', True),
        ("slack", b"rate_limited", False),
        ("webhook", b'{"errcode":45009}', False),
        ("feishu", b'{"code":[9499],"msg":"too many request"}', False),
        ("dingtalk", b'{"errcode":{"x":1}}', False),
    ],
)
def test_is_rate_limited_body(kind: str, body: bytes, limited: bool) -> None:
    assert is_rate_limited_body(spec(kind), body) is limited


def test_reprs_and_secrets_hide_credentials() -> None:
    target = spec(
        "feishu", url="https://open.feishu.cn/open-apis/bot/v2/hook/0f3c-canary-77aa?key=k3y-canary9"
    )
    request = build_request(target, Notification((ALERT,)), NOW_S)
    for text in (repr(target), str(target), repr(request)):
        assert "canary" not in text and SECRET not in text
    assert "feishu-team" in repr(target)
    assert {target.url, SECRET, "0f3c-canary-77aa", "k3y-canary9"} <= set(target.secrets())
    assert not {"open-apis", "hook", "bot"} & set(target.secrets())


def test_default_rates() -> None:
    expected = {"feishu": 100, "dingtalk": 20, "wecom": 20, "slack": 60, "webhook": None, "apprise": None}
    assert {kind: rate_per_minute(spec(kind)) for kind in expected} == expected
    assert rate_per_minute(spec("webhook", rate_per_minute=30.0)) == 30.0
    assert set(TARGET_TYPES) >= set(expected)


# -- delivery, the pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "body", "verdict"),
    [
        ("webhook", 200, b"", "sent"),
        ("webhook", 500, b"", "retry"),
        ("webhook", 503, b"", "retry"),
        ("webhook", 429, b"", "rate_limited"),
        ("webhook", 400, b"", "fail"),
        ("webhook", 401, b"", "fail"),
        ("webhook", 302, b"", "fail"),
        ("feishu", 200, b'{"code":19021,"msg":"sign match fail"}', "fail"),
        ("feishu", 400, b'{"code":9499,"msg":"too many request"}', "rate_limited"),
        ("dingtalk", 200, b'{"errcode":130101,"errmsg":"send too fast"}', "rate_limited"),
        ("dingtalk", 200, b'{"errcode":0,"errmsg":"ok"}', "sent"),
    ],
)
def test_classify(kind: str, status: int, body: bytes, verdict: str) -> None:
    assert classify(spec(kind), status, body) == verdict


def test_backoff_is_full_jitter_on_a_capped_exponential() -> None:
    policy = RetryPolicy(base_s=0.5, max_s=30.0)
    assert [policy.backoff_s(k, lambda: 1.0) for k in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.backoff_s(3, lambda: 0.25) == 1.0
    assert policy.backoff_s(10_000, lambda: 1.0) == 30.0
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "1"}, 1.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW_S + 120, UTC), usegmt=True)}, 120.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"x-ogw-ratelimit-reset": "52"}, 52.0),
        ({}, None),
    ],
)
def test_retry_after(headers: Mapping[str, str], wait: float | None) -> None:
    assert retry_after_s(headers, NOW_S) == wait


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(("rate", "count", "seconds"), [(20.0, 21, 60.0), (100.0, 11, 6.0), (60.0, 1, 0.0)])
def test_rate_limiter_spaces_sends_evenly(rate: float, count: int, seconds: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)

    async def main() -> None:
        for _ in range(count):
            await limiter.acquire()

    asyncio.run(main())
    assert clock.now - 1000.0 == pytest.approx(seconds)


def test_rate_limiter_refills_with_idle_time_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60.0, clock=clock, sleep=clock.sleep, burst=3)

    async def main() -> None:
        for _ in range(3):
            await limiter.acquire()
        clock.now += 3600.0  # a long quiet hour refills only the burst, not an hour's worth
        for _ in range(5):
            await limiter.acquire()

    asyncio.run(main())
    assert clock.waits == pytest.approx([1.0, 1.0])


def test_concurrent_acquires_queue_up_in_order() -> None:
    clock = FakeClock()
    waits: list[float] = []

    async def sleep_without_time_passing(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)  # let the other callers in while this one waits

    limiter = RateLimiter(30.0, clock=clock, sleep=sleep_without_time_passing)

    async def main() -> None:
        await asyncio.gather(*(limiter.acquire() for _ in range(4)))

    asyncio.run(main())
    assert waits == pytest.approx([2.0, 4.0, 6.0]), "each caller reserved its own slot"


def test_unlimited_rate_never_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock, sleep=clock.sleep)

    async def main() -> None:
        for _ in range(1000):
            await limiter.acquire()

    asyncio.run(main())
    assert clock.waits == []


def test_redact_hides_plain_and_url_encoded_forms() -> None:
    secret = "se cret/+="
    encoded = secret.replace(" ", "%20").replace("/", "%2F").replace("+", "%2B").replace("=", "%3D")
    text = f"a {secret} b {encoded} c"
    assert redact(text, [secret]) == "a *** b *** c"
    assert redact("nothing here", ["", "x" * 3]) == "nothing here"


def test_alert_dicts_are_not_mutated() -> None:
    before = copy.deepcopy(ALERT)
    for kind in ("feishu", "dingtalk", "wecom", "slack", "webhook"):
        build_requests(spec(kind), Notification((ALERT,), owners=("@a",), actions=ACTIONS), NOW_S)
    assert before == ALERT


@pytest.mark.parametrize(
    ("locale", "line"),
    [("en", "anomaly · again · for 1 h 5 min"), ("zh-CN", "异常 · 再次触发 · 持续 1 小时 5 分钟")],
)
def test_a_message_says_how_long_the_episode_has_lasted(locale: str, line: str) -> None:
    text = render(Notification(({**ALERT, "duration_s": 3900.0, "reopened": 1},), locale=locale)).text
    assert line in text
