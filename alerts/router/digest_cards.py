"""What a digest says in chat, and the signed links to the full report and its chart. Pure: no I/O.

A digest is the key numbers of a report (the daily sheet or the weekly review) as a card for each chat
service: Feishu (an interactive card with buttons), DingTalk (markdown with the chart as an image), WeCom
(markdown with links), Slack (blocks with the chart as an image block), a generic webhook (JSON, signed like
alerts) and the console. The chart and the full report are served by the router's HTTP endpoint at links
signed with the router's token key: ``/r/<token>`` (the HTML page) and ``/r/<token>/chart.png``. Report links
are signed under a key derived from the token key, so an action token is never a report token, nor the other
way round; they expire like action links (at most ``MAX_TTL_S``).

Channel names and alert notes come from trackers: they are made inert and escaped like alert text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

from alerts.report.daily import DailySheet
from alerts.report.model import Counts, money_text, ratio_text
from alerts.report.render import daily_json, money_delta, weekly_json
from alerts.report.weekly import WeeklyReview
from alerts.router.messages import inert, link_url, markdown_escape
from alerts.router.targets import (
    HttpRequest,
    TargetSpec,
    dingtalk_sign,
    feishu_sign,
    slack_escape,
    truncate_utf8,
    webhook_signature,
    with_query,
)
from alerts.router.tokens import MAX_TTL_S, TokenError

REPORTS = ("daily", "weekly")
#: Channels listed in a card; the full report has the rest.
MAX_CHANNELS = 8
_WORDS = {
    "en": {
        "daily": "Daily sheet",
        "weekly": "Weekly review",
        "report": "Full report",
        "chart": "Chart",
        "gmv": "GMV",
        "orders": "orders",
        "cost": "cost",
        "roi": "ROI",
        "new": "new users",
        "alerts": "alerts",
        "more": "and {n} more channels in the full report",
        "nothing": "No data stored for this period.",
    },
    "zh": {
        "daily": "日报",
        "weekly": "周报",
        "report": "完整报表",
        "chart": "图表",
        "gmv": "GMV",
        "orders": "订单",
        "cost": "花费",
        "roi": "ROI",
        "new": "新客",
        "alerts": "告警",
        "more": "另有 {n} 个渠道见完整报表",
        "nothing": "该周期没有数据。",
    },
}


# -- signed report links -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRef:
    """Which report a link shows: ``daily`` of ``2026-11-24`` or ``weekly`` of ``2026-W48``."""

    report: str
    period: str
    expires_s: float


def _report_key(key: bytes) -> bytes:
    return hmac.new(key, b"adpulse report links v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_report(ref: ReportRef, key: bytes) -> str:
    """The token of a report link."""
    payload = _b64(orjson.dumps({"r": ref.report, "p": ref.period, "exp": int(ref.expires_s)}))
    mac = _b64(hmac.new(_report_key(key), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def verify_report(token: str, key: bytes, now_s: float) -> ReportRef:
    """The report a token shows; TokenError if it is forged, malformed or expired."""
    payload, dot, mac = token.partition(".")
    expected = _b64(hmac.new(_report_key(key), payload.encode(), hashlib.sha256).digest())
    if not dot or not hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), expected.encode()):
        raise TokenError("this link is not valid (it was changed, or signed with another key)")
    try:
        body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        ref = ReportRef(str(body["r"]), str(body["p"]), float(body["exp"]))
    except (ValueError, KeyError, TypeError):
        raise TokenError("this link is not valid (its content is malformed)") from None
    if ref.report not in REPORTS or ref.expires_s - now_s > MAX_TTL_S:
        raise TokenError("this link is not valid (it asks for more than any adpulse link may)")
    if ref.expires_s < now_s:
        raise TokenError("this report link has expired; run `adpulse report` instead")
    return ref


@dataclass(frozen=True, slots=True)
class ReportLinks:
    """Builds report links: ``{base_url}/r/{token}`` and ``…/chart.png``."""

    key: bytes
    base_url: str
    ttl_s: float = MAX_TTL_S

    def page(self, report: str, period: str, now_s: float) -> str:
        ref = ReportRef(report, period, now_s + min(self.ttl_s, MAX_TTL_S))
        return f"{self.base_url.rstrip('/')}/r/{quote(sign_report(ref, self.key))}"

    def chart(self, report: str, period: str, now_s: float) -> str:
        return f"{self.page(report, period, now_s)}/chart.png"


# -- content -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestContent:
    """A report's digest in one language: title, key-number lines, per-channel lines, extra lines (the
    recommendations), links, and the report as JSON (for webhooks). Channel text is already inert."""

    report: str
    period: str
    title: str
    headline: tuple[str, ...]
    channels: tuple[str, ...]
    extra: tuple[str, ...]
    report_url: str | None
    chart_url: str | None
    data: Mapping[str, Any] = field(default_factory=dict)
    locale: str = "en"

    def words(self, key: str) -> str:
        return _WORDS[self.locale][key]


def _locale(locale: str) -> str:
    return "zh" if locale.lower().startswith("zh") else "en"


def _channel_line(w: Mapping[str, str], channel: str, counts: Counts) -> str:
    return (
        f"{inert(channel)}: {w['gmv']} {money_text(counts.gmv_micros)} · {w['roi']} {ratio_text(counts.roi)}"
    )


def daily_content(
    sheet: DailySheet, locale: str, report_url: str | None = None, chart_url: str | None = None
) -> DigestContent:
    """The daily sheet's digest: the total's key numbers, a line per channel (largest GMV first) with its
    alert notes."""
    w = _WORDS[_locale(locale)]
    t = sheet.total.counts
    headline = (
        f"{w['gmv']} {money_text(t.gmv_micros)} {sheet.currency} · {w['orders']} {t.orders:,} · "
        f"{w['cost']} {money_text(t.spend_micros)} · {w['roi']} {ratio_text(t.roi)}",
        f"{w['new']} {t.new_customers:,} · {w['alerts']} {len(sheet.episodes)}",
    )
    channels = [
        _channel_line(w, r.channel, r.counts) + (f" · ⚠ {inert(r.note)}" if r.notes else "")
        for r in sheet.rows[:MAX_CHANNELS]
    ]
    if len(sheet.rows) > MAX_CHANNELS:
        channels.append(w["more"].format(n=len(sheet.rows) - MAX_CHANNELS))
    return DigestContent(
        report="daily",
        period=sheet.day.isoformat(),
        title=f"📊 {w['daily']} {sheet.day.isoformat()}",
        headline=headline if sheet.rows else (w["nothing"],),
        channels=tuple(channels),
        extra=(),
        report_url=report_url,
        chart_url=chart_url,
        data=daily_json(sheet),
        locale=_locale(locale),
    )


def weekly_content(
    review: WeeklyReview, locale: str, report_url: str | None = None, chart_url: str | None = None
) -> DigestContent:
    """The weekly review's digest: totals with their change, each channel's ROI, the recommendations."""
    w = _WORDS[_locale(locale)]
    t, p = review.total.counts, review.total.previous
    headline = (
        f"{w['gmv']} {money_text(t.gmv_micros)} {review.currency} "
        f"({money_delta(t.gmv_micros, p.gmv_micros if p else None)}) · "
        f"{w['cost']} {money_text(t.spend_micros)} · {w['roi']} {ratio_text(t.roi)}",
        f"{w['orders']} {t.orders:,} · {w['alerts']} {len(review.episodes)}",
    )
    channels = [_channel_line(w, c.channel, c.counts) for c in review.channels[:MAX_CHANNELS]]
    period = f"{review.year}-W{review.week:02d}"
    return DigestContent(
        report="weekly",
        period=period,
        title=f"📈 {w['weekly']} {review.label}",
        headline=headline if review.channels else (w["nothing"],),
        channels=tuple(channels),
        extra=tuple(inert(r) for r in review.recommendations),
        report_url=report_url,
        chart_url=chart_url,
        data=weekly_json(review),
        locale=_locale(locale),
    )


# -- cards ---------------------------------------------------------------------------------------------------


def digest_text(content: DigestContent) -> tuple[str, str]:
    """Title and plain text (console, apprise)."""
    lines = [*content.headline, "", *content.channels]
    if content.extra:
        lines += ["", *content.extra]
    if content.report_url:
        lines += ["", f"{content.words('report')}: {content.report_url}"]
    if content.chart_url:
        lines.append(f"{content.words('chart')}: {content.chart_url}")
    return content.title, "\n".join(lines)


def _markdown_lines(content: DigestContent, line_break: str) -> str:
    parts = [f"**{markdown_escape(line)}**" for line in content.headline]
    parts += [markdown_escape(line) for line in content.channels]
    parts += [f"- {markdown_escape(line)}" for line in content.extra]
    return line_break.join(parts)


def _links_markdown(content: DigestContent) -> list[str]:
    links = []
    if content.report_url:
        links.append(f"[{content.words('report')}]({link_url(content.report_url)})")
    if content.chart_url:
        links.append(f"[{content.words('chart')}]({link_url(content.chart_url)})")
    return links


def build_digest_request(spec: TargetSpec, content: DigestContent, now_s: float) -> HttpRequest:
    """The signed request posting ``content`` to an HTTP target (ValueError for console and apprise)."""
    if spec.type in ("console", "apprise"):
        raise ValueError(f"target {spec.name!r}: a {spec.type} target takes text, not a request")
    if not spec.url:
        raise ValueError(f"target {spec.name!r}: no url")
    if spec.type == "feishu":
        return _feishu(spec, spec.url, content, now_s)
    if spec.type == "dingtalk":
        return _dingtalk(spec, spec.url, content, now_s)
    if spec.type == "wecom":
        text = f"**{markdown_escape(content.title)}**\n{_markdown_lines(content, chr(10))}"
        tail = "\n" + " · ".join(_links_markdown(content))
        body = truncate_utf8(text, 4096 - len(tail.encode())) + tail
        return _json(spec.url, {"msgtype": "markdown", "markdown": {"content": body}})
    if spec.type == "slack":
        return _slack(spec.url, content)
    if spec.type == "webhook":
        payload = orjson.dumps(
            {
                "type": "adpulse.digest",
                "report": content.report,
                "period": content.period,
                "title": content.title,
                "headline": list(content.headline),
                "report_url": content.report_url,
                "chart_url": content.chart_url,
                "data": content.data,
            }
        )
        headers = {
            "Content-Type": "application/json",
            "X-Adpulse-Timestamp": str(int(now_s)),
            "Idempotency-Key": f"digest:{content.report}:{content.period}:{spec.name}",
        }
        if spec.secret:
            headers["X-Adpulse-Signature"] = webhook_signature(spec.secret, payload)
        return HttpRequest(spec.url, payload, headers)
    raise ValueError(f"target {spec.name!r}: unknown type {spec.type!r}")


def _json(url: str, payload: Mapping[str, Any]) -> HttpRequest:
    return HttpRequest(url, orjson.dumps(payload), {"Content-Type": "application/json; charset=utf-8"})


def _feishu(spec: TargetSpec, url: str, content: DigestContent, now_s: float) -> HttpRequest:
    def text(body: str) -> dict[str, Any]:
        return {"tag": "div", "text": {"tag": "lark_md", "content": body}}

    elements: list[dict[str, Any]] = [text("\n".join(f"**{markdown_escape(h)}**" for h in content.headline))]
    if content.channels:
        elements += [{"tag": "hr"}, text("\n".join(markdown_escape(c) for c in content.channels))]
    if content.extra:
        elements += [{"tag": "hr"}, text("\n".join(f"- {markdown_escape(e)}" for e in content.extra))]
    buttons = [
        {
            "tag": "button",
            "text": {"tag": "plain_text", "content": content.words(key)},
            "type": style,
            "url": link,
        }
        for key, style, link in (
            ("report", "primary", content.report_url),
            ("chart", "default", content.chart_url),
        )
        if link
    ]
    if buttons:
        elements.append({"tag": "action", "actions": buttons})
    card = {
        "config": {"wide_screen_mode": True},
        "header": {"template": "blue", "title": {"tag": "plain_text", "content": content.title}},
        "elements": elements,
    }
    payload: dict[str, Any] = {"msg_type": "interactive", "card": card}
    if spec.secret:
        timestamp = str(int(now_s))
        payload = {"timestamp": timestamp, "sign": feishu_sign(spec.secret, timestamp), **payload}
    return _json(url, payload)


def _dingtalk(spec: TargetSpec, url: str, content: DigestContent, now_s: float) -> HttpRequest:
    parts = [f"#### {markdown_escape(content.title)}", _markdown_lines(content, "\n\n")]
    if content.chart_url:
        parts.append(f"![{content.words('chart')}]({link_url(content.chart_url)})")
    parts.append(" · ".join(_links_markdown(content)))
    payload = {
        "msgtype": "markdown",
        "markdown": {"title": content.title, "text": "\n\n".join(p for p in parts if p)},
    }
    if spec.secret:
        timestamp = str(int(now_s * 1000))
        url = with_query(
            url, f"timestamp={timestamp}&sign={quote_plus(dingtalk_sign(spec.secret, timestamp))}"
        )
    return _json(url, payload)


def _slack(url: str, content: DigestContent) -> HttpRequest:
    def section(body: str) -> dict[str, Any]:
        return {"type": "section", "text": {"type": "mrkdwn", "text": body[:3000], "verbatim": True}}

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": content.title[:150], "emoji": True}},
        section("\n".join(f"*{slack_escape(h)}*" for h in content.headline)),
    ]
    if content.channels:
        blocks.append(section("\n".join(slack_escape(c) for c in content.channels)))
    if content.extra:
        blocks.append(section("\n".join(f"• {slack_escape(e)}" for e in content.extra)))
    if content.chart_url:
        blocks.append({"type": "image", "image_url": content.chart_url, "alt_text": content.words("chart")})
    if content.report_url:
        button = {"type": "button", "text": {"type": "plain_text", "text": content.words("report")}}
        blocks.append(
            {"type": "actions", "elements": [{**button, "url": content.report_url, "style": "primary"}]}
        )
    return HttpRequest(
        url,
        orjson.dumps({"text": slack_escape(content.title), "blocks": blocks}),
        {"Content-Type": "application/json"},
    )
