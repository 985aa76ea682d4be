"""Tracker-controlled text in chat messages: hostile campaign and channel names must not mention anyone,
link anywhere or forge lines, in any target's markup, and must still read as what was sent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.router.config import parse_routes
from alerts.router.messages import Notification, inert, markdown_escape, render
from alerts.router.routing import plan
from alerts.router.targets import TargetSpec, build_request
from tests.support.alerts import ALERT

NOW_S = 1_795_999_800.0
ACK = "https://router.example/a/tok.en"
HOSTILE: dict[str, Any] = {
    **ALERT,
    "channel": "[点我](https://evil.example/phish)",
    "campaign": "<at id=all></at>",
    "region": "<@all> <!channel> <at email=boss@corp.example></at>",
    "metric": "ctr<at id=all></at>",
    "change_pct": None,
    "summary": "ok [login](http://evil.example) <https://evil.example|Approve> www.evil.example 10.0.0.1://x",
    "description": "line one\n# Heading\n[ref]: https://evil.example\n![i](https://evil.example/i.png) "
    "&lt;at id=all&gt;&lt;/at&gt; \u202egnp.exe",
    "window": "10m<@everyone>",
    "kind": "<at user_id=all>kind",
    "evidence": {
        "amount": 10.0,
        "used_ratio": 0.5,
        "currency": "<at id=all>",
        "period": "[p](//evil.example)",
    },
}
OURS = {ALERT["dashboard_url"], ALERT["runbook_url"], ACK}
MARKUP_TARGETS = ("feishu", "dingtalk", "wecom", "slack")


def spec(kind: str, locale: str) -> TargetSpec:
    return TargetSpec(name=kind, type=kind, url=f"https://hooks.example/{kind}/TOKEN12345", locale=locale)


def strings(value: Any) -> Iterator[str]:
    """Every string in a decoded JSON body."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def markup_of(kind: str, alerts: tuple[dict[str, Any], ...], locale: str) -> tuple[list[str], list[str]]:
    """(the texts the service parses as markup, the button URLs) of one request."""
    actions = {a["id"]: {"ack": ACK} for a in alerts}
    n = Notification(alerts, locale=locale, actions=actions)
    body = orjson.loads(build_request(spec(kind, locale), n, NOW_S).body)
    if kind == "feishu":
        elements = body["card"]["elements"]
        texts = [e["text"]["content"] for e in elements if e["tag"] == "div"]
        buttons = [b["url"] for e in elements if e["tag"] == "action" for b in e["actions"]]
    elif kind == "dingtalk":
        texts, buttons = [body["markdown"]["text"]], []
    elif kind == "wecom":
        content = body["markdown"]["content"]
        # The <font> around the title is the router's own markup.
        texts, buttons = [re.sub(r'^<font color="\w+">|</font>', "", content)], []
    else:
        texts = [body["text"]] + [
            t["text"]
            for b in body["blocks"]
            for t in ([b["text"]] if "text" in b else b.get("elements", []))
            if t.get("type") == "mrkdwn"
        ]
        buttons = [e["url"] for b in body["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert all(isinstance(t, str) for t in strings(body))
    return texts, buttons


def links_in(kind: str, text: str) -> list[str]:
    """The URLs the markup makes links of."""
    if kind == "slack":
        return re.findall(r"<([^!@#][^|>]*)(?:\|[^>]*)?>", text)
    return re.findall(r"\]\(([^)]*)\)", text)


def assert_inert(kind: str, texts: list[str], buttons: list[str]) -> None:
    for text in texts:
        if kind == "slack":
            assert not re.search(r"<[!@]", text), f"a Slack mention: {text!r}"
        else:
            assert not re.search(r"<\S", text), f"a tag or mention: {text!r}"
            assert not re.search(r"\][\[:]", text), f"a reference link: {text!r}"
        assert set(links_in(kind, text)) <= OURS, f"a foreign link: {text!r}"
        urls = re.findall(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s)>|]*", text)
        assert set(urls) <= OURS, f"a URL a client would link: {text!r}"
        assert not re.search(r"(?i)evil\.example|www\.", text), f"a host name a client would link: {text!r}"
        assert "\u202e" not in text
    assert set(buttons) <= OURS


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
@pytest.mark.parametrize("kind", MARKUP_TARGETS)
def test_hostile_names_neither_mention_nor_link_and_still_read(kind: str, locale: str) -> None:
    texts, buttons = markup_of(kind, (HOSTILE,), locale)
    assert_inert(kind, texts, buttons)
    assert {ALERT["dashboard_url"], ACK} <= set(buttons) or {ALERT["dashboard_url"], ACK} <= {
        url for text in texts for url in links_in(kind, text)
    }, "the router's own links are still links"
    shown = "\n".join(texts)
    for words in ("点我", "at id=all", "login", "evil", "Heading", "line one"):
        assert words in shown, f"{words!r} should still be readable"
    # A name's line break cannot start a line of its own (a heading, a quote, a link definition).
    assert not re.search(r"(^|\n)\s*(# Heading|\[ref)", shown)


@pytest.mark.parametrize("kind", MARKUP_TARGETS)
def test_a_burst_of_hostile_alerts_is_inert_too(kind: str) -> None:
    second = {**HOSTILE, "id": "x2", "channel": "<at id=all></at>", "severity": "warning"}
    texts, buttons = markup_of(kind, (HOSTILE, second), "en")
    assert_inert(kind, texts, buttons)


def test_the_plain_text_of_console_and_apprise_has_no_links_either() -> None:
    rendered = render(Notification((HOSTILE,), locale="en"))
    for text in (rendered.title, rendered.text):
        assert "evil.example" not in text and "://evil" not in text
        assert "\u202e" not in text
    assert "[点我](https:\u200b//evil\u2024example/phish)" in rendered.text, "plain text keeps the name"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("p < 0.001", "p < 0.001"),
        ("CTR 2.30 % → 1.15 %", "CTR 2.30 % → 1.15 %"),
        ("see evil.com now", "see evil\u2024com now"),
        ("a\nb\r\nc\u2028d", "a b c d"),
        ("http://x.cn/a", "http:\u200b//x\u2024cn/a"),
    ],
)
def test_inert_keeps_numbers_and_words(text: str, shown: str) -> None:
    assert inert(text) == shown


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("<at id=all></at>", "＜at id=all>＜/at>"),
        ("[x](y) [a][b] [r]: z", "[x］(y) [a］[b] [r］: z"),
        ("&lt;at&gt; AT&T", "＆lt;at＆gt; AT&T"),
        ("1 < 2 > 0 [critical] douyin", "1 < 2 > 0 [critical] douyin"),
    ],
)
def test_markdown_escape(text: str, escaped: str) -> None:
    assert markdown_escape(text) == escaped


_MARKUP = st.text(alphabet="<>[]()!@&#;:/. atidlhpsw\n\u202ex", max_size=40)


@settings(max_examples=300, deadline=None)
@given(channel=_MARKUP, campaign=_MARKUP, summary=_MARKUP, kind=st.sampled_from(MARKUP_TARGETS))
def test_no_name_makes_markup_in_any_target(channel: str, campaign: str, summary: str, kind: str) -> None:
    alert = {**HOSTILE, "channel": channel or "c", "campaign": campaign, "summary": summary}
    texts, buttons = markup_of(kind, (alert,), "en")
    assert_inert(kind, texts, buttons)


@pytest.mark.parametrize(
    ("owner", "owners"),
    [
        ("@li.na", ("@li.na",)),
        ("13800000000", ("13800000000",)),
        ("li.na@corp.example", ("li.na@corp.example",)),
        ("@all", ()),
        ("here", ()),
        ("<at id=all></at>", ()),
        ("ou_x></at><at id=all", ()),
        ("@li.na <!channel>", ()),
        (["@li.na"], ()),
    ],
)
def test_a_budget_owner_from_the_data_is_one_plain_handle_or_nobody(
    owner: object, owners: tuple[str, ...]
) -> None:
    config = parse_routes("targets: {t: {type: console}}\ndefault_targets: [t]\n", {})
    assert plan({**ALERT, "owner": owner}, config)[0].owners == owners


@pytest.mark.parametrize("kind", ["feishu", "dingtalk", "wecom"])
def test_an_owner_that_is_no_handle_is_shown_as_text_not_markup(kind: str) -> None:
    n = Notification((ALERT,), owners=("x<at id=all></at>", "y[a](https://evil.example)"), locale="en")
    body = orjson.loads(build_request(spec(kind, "en"), n, NOW_S).body)
    body.pop("at", None)  # DingTalk's list of whom to ring: ids, not shown
    shown = "\n".join(strings(body))
    assert "<at id=all" not in shown and "](https://evil" not in shown
    assert "at id=all" in shown
