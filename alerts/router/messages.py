"""The human text of a chat notification, in Chinese or English. Pure: no I/O.

``render`` gives the title, a markdown body and a plain-text body. Chat services differ in how they write
bold, links and mentions, so the text is first composed into a ``Message`` (words only) and then written
out in a ``Dialect``; ``alerts.router.targets`` uses the same pieces to build cards and blocks with
buttons. Alert dicts may be partial or carry wrong types (they come from Redis, written by any version of
the worker): every field is read defensively and a missing one is simply left out.

Text that trackers control (channel, campaign, region, unknown metric and kind names, summaries,
descriptions, currency, period) is made inert while composing, whatever the target: no line breaks or bidi
controls, and no URL a client could turn into a link (``://`` and the dots of host names are broken with
look-alikes, so it reads the same). Each markup then escapes what starts a tag, mention or link in it
(``markdown_escape``; Slack's own escaping in ``alerts.router.targets``). Only links the router builds
(dashboard, runbook, action links) are links.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from alerts.model import SEVERITY_ORDER, most_severe_first
from alerts.wording import format_value, p_text

# A burst bigger than this goes out over several messages (``alerts.router.targets.paginate``), so each stays
# readable and within the services' size limits (Slack allows 50 blocks, Feishu about 20 KB per request).
MAX_SECTIONS = 10
# A description longer than this is cut: the runbook and the dashboard carry the rest.
MAX_DESCRIPTION_CHARS = 600

_EMOJI = {"critical": "🔴", "warning": "🟠", "info": "🔵", "resolved": "✅"}
_KINDS = frozenset({"budget", "threshold", "anomaly", "data_health"})
_CHANGES = frozenset({"fired", "escalated", "repeat"})  # "resolved" is said by the status itself
_VOLUMES = ("impressions", "clicks", "visits", "carts", "orders", "gmv", "spend", "events")

_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "firing": "Firing",
        "resolved": "Resolved",
        "resolved_tag": "resolved",
        "fired": "new",
        "escalated": "escalated",
        "repeat": "still firing",
        "critical": "critical",
        "warning": "warning",
        "info": "info",
        "budget": "budget",
        "threshold": "threshold",
        "anomaly": "anomaly",
        "data_health": "data health",
        "fell": " fell {pct} %",
        "rose": " rose {pct} %",
        "back_to": " back to {value}",
        "was": "was {value}",
        "baseline": "baseline {value}",
        "threshold_is": "threshold {value}",
        "channel": "channel {value}",
        "campaign": "campaign {value}",
        "region": "region {value}",
        "window": "Window {value}",
        "since": "since {value}",
        "budget_used": "Budget {pct} % used ({amount})",
        "budget_title": "budget {pct} % used",
        "count_of": "{count} {what}",
        "no_data": "no data",
        "dashboard": "Dashboard",
        "runbook": "Runbook",
        "ack": "Acknowledge",
        "snooze": "Snooze 1h",
        "approve": "Approve",
        "owners": "Owners: {value}",
        "escalation": "⏫ Escalation: not acknowledged by {value}",
        "group": "{where}: {count} alerts",
        "part": "part {index} of {total}",
        "lasted": "for {value}",
        "again": "again",
        "sep": ", ",
        "colon": ": ",
    },
    "zh": {
        "firing": "告警中",
        "resolved": "已恢复",
        "resolved_tag": "已恢复",
        "fired": "新",
        "escalated": "已升级",
        "repeat": "持续告警",
        "critical": "严重",
        "warning": "警告",
        "info": "提示",
        "budget": "预算",
        "threshold": "阈值",
        "anomaly": "异常",
        "data_health": "数据健康",
        "fell": "下降 {pct} %",
        "rose": "上升 {pct} %",
        "back_to": "恢复至 {value}",
        "was": "此前 {value}",
        "baseline": "基线 {value}",
        "threshold_is": "阈值 {value}",
        "channel": "渠道 {value}",
        "campaign": "计划 {value}",
        "region": "地区 {value}",
        "window": "窗口 {value}",
        "since": "自 {value}",
        "budget_used": "预算已用 {pct} %（{amount}）",
        "budget_title": "预算已用 {pct} %",
        "count_of": "{count} 条{what}",
        "no_data": "无数据",
        "dashboard": "看板",
        "runbook": "处理手册",
        "ack": "确认",
        "snooze": "静默 1 小时",
        "approve": "批准",
        "owners": "负责人：{value}",
        "escalation": "⏫ 升级：{value} 未确认",
        "group": "{where}：{count} 条告警",
        "part": "第 {index}/{total} 条消息",
        "lasted": "持续 {value}",
        "again": "再次触发",
        "sep": "、",
        "colon": "：",
    },
}
_METRICS = {
    "en": {
        "ctr": "CTR",
        "cvr": "CVR",
        "roi": "ROI",
        "aov": "AOV",
        "cpc": "CPC",
        "cpa": "CPA",
        "spend": "Spend",
        "spend_pacing": "Spend pacing",
        "events": "Events",
        "funnel_visit": "Visit rate",
        "funnel_cart": "Cart rate",
        "funnel_order": "Order rate",
    },
    "zh": {
        "ctr": "点击率",
        "cvr": "转化率",
        "roi": "ROI",
        "aov": "客单价",
        "cpc": "CPC",
        "cpa": "CPA",
        "spend": "花费",
        "spend_pacing": "花费节奏",
        "events": "事件数",
        "funnel_visit": "访问率",
        "funnel_cart": "加购率",
        "funnel_order": "下单率",
    },
}
_VOLUME_WORDS = {
    "en": {key: f"{{value}} {key}" for key in _VOLUMES} | {"gmv": "GMV {value}", "spend": "spend {value}"},
    "zh": {
        "impressions": "曝光 {value}",
        "clicks": "点击 {value}",
        "visits": "访问 {value}",
        "carts": "加购 {value}",
        "orders": "订单 {value}",
        "gmv": "GMV {value}",
        "spend": "花费 {value}",
        "events": "事件 {value}",
    },
}
# Action keys of ``Notification.actions``, in the order the buttons appear.
ACTION_KEYS = ("ack", "snooze", "approve")


@dataclass(frozen=True, slots=True)
class Notification:
    """One chat message: one alert, or a burst of alerts for the same channel grouped together.

    ``part`` is (index, total) when a burst too big for one message goes out over several: every alert is
    in one of them, none is summarised away.
    """

    alerts: tuple[Mapping[str, Any], ...]
    owners: tuple[str, ...] = ()
    locale: str = "zh-CN"
    actions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    escalated_from: tuple[str, ...] = ()
    part: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    """A notification as text: a short title, a markdown body and a plain-text body."""

    title: str
    markdown: str
    text: str


@dataclass(frozen=True, slots=True)
class Link:
    """A link or button: ``key`` is ``dashboard``, ``runbook``, ``ack``, ``snooze`` or ``approve``."""

    key: str
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class Section:
    """One alert in words: the headline number, short lines, then links (http(s) only) and actions."""

    headline: str
    lines: tuple[str, ...]
    links: tuple[Link, ...]
    actions: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Message:
    """A notification composed in one language, not yet written in any markup."""

    title: str
    tone: str  # "critical" | "warning" | "info" | "resolved": the colour of a card's header
    intro: tuple[str, ...]
    sections: tuple[Section, ...]
    owners: tuple[str, ...]
    locale: str

    def words(self, key: str, **values: object) -> str:
        """A phrase of this message's language."""
        return _WORDS[self.locale][key].format(**values)


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a chat service writes emphasis, links and mentions, and which text it must escape."""

    bold: Callable[[str], str]
    link: Callable[[str, str], str]
    mention: Callable[[str], str]
    escape: Callable[[str], str] = str
    line_break: str = "\n"


def handle(owner: str) -> str:
    """An owner without its leading ``@``: ``"@zhang.wei"`` → ``"zhang.wei"``."""
    return owner.strip().lstrip("@")


def at_mention(owner: str) -> str:
    """The ``@handle`` most chat services show (DingTalk needs ``@<mobile>`` in the text to notify)."""
    return f"@{handle(owner)}"


# Line breaks, other control characters and bidi overrides: a name could forge lines or reverse what is shown.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
# A dot between a letter or digit and a letter: the dots of host names (``evil.com``, ``www.x.cn``), which
# clients link by themselves; the dots of numbers (``2.30``) stay.
_HOST_DOT = re.compile(r"(?<=[^\W_])\.(?=[^\W\d_])")
# What starts markup in Feishu lark_md, DingTalk and WeCom markdown: a tag or mention (``<at id=all>``,
# ``<@user>``, ``<font>``, ``<https://…>``: "<" right before a non-space), the end of a link label
# (``](``, ``][``, ``]:``), and an entity a renderer might decode into one (``&lt;``).
_TAG_OPEN = re.compile(r"<(?=\S)")
_LABEL_END = re.compile(r"\](?=[(\[:])")
_ENTITY = re.compile(r"&(?=#?\w+;)")


def inert(text: str) -> str:
    """Tracker-controlled text made safe to show in any chat: one line, no URL a client would link.

    ``://`` gets a zero-width space and host-name dots become "․" (U+2024), so the text reads the same.
    """
    text = _UNPRINTABLE.sub(" ", text).replace("://", ":\u200b//")
    return _HOST_DOT.sub("\u2024", text)


def markdown_escape(text: str) -> str:
    """Text with nothing that starts a tag, mention or link in chat markdown, by look-alike characters.

    The services' escape syntaxes differ and are poorly documented (DingTalk has none), so ``<`` before a
    non-space, ``]`` before ``(``/``[``/``:`` and ``&`` of an entity become their full-width forms.
    """
    text = _ENTITY.sub("＆", text)
    return _LABEL_END.sub("］", _TAG_OPEN.sub("＜", text))


def link_url(url: str) -> str:
    """A URL percent-encoded where markup would end it (``(``, ``)``, ``<``, ``>``, ``|``, spaces)."""
    return quote(url, safe="/:?#[]@!$&'*+,;=%~")


MARKDOWN = Dialect(
    bold=lambda s: f"**{s}**",
    link=lambda label, url: f"[{label}]({link_url(url)})",
    mention=lambda owner: markdown_escape(at_mention(owner)),
    escape=markdown_escape,
)
PLAIN = Dialect(bold=str, link=lambda label, url: f"{label}: {url}", mention=at_mention)


def locale_key(locale: str) -> str:
    """``"zh"`` for any Chinese locale (``zh-CN``, ``zh_cn``, ``zh``), else ``"en"``."""
    return "zh" if locale.lower().startswith("zh") else "en"


def compose(n: Notification, locale: str | None = None) -> Message:
    """The words of a notification in ``locale`` (default ``n.locale``): a section for every alert."""
    key = locale_key(locale or n.locale)
    alerts = [a if isinstance(a, Mapping) else {} for a in n.alerts]
    words = _WORDS[key]
    sections = tuple(_section(alert, n.actions, key) for alert in alerts)
    intro: tuple[str, ...] = ()
    if n.escalated_from:
        who = words["sep"].join(at_mention(o) for o in n.escalated_from)
        intro = (words["escalation"].format(value=who),)
    title = _title(alerts, key)
    if n.escalated_from:
        title = f"⏫ {title}"
    if n.part is not None and n.part[1] > 1:
        title += _paren(words["part"].format(index=n.part[0], total=n.part[1]), key)
    return Message(
        title=title,
        tone=_tone(alerts),
        intro=intro,
        sections=sections,
        owners=tuple(o for o in n.owners if handle(o)),
        locale=key,
    )


def section_text(section: Section, dialect: Dialect, *, links: bool = True) -> str:
    """One alert written in ``dialect``; ``links=False`` leaves links and actions to buttons."""
    out = [dialect.bold(dialect.escape(section.headline))]
    out += [dialect.escape(line) for line in section.lines]
    if links:
        for group in (section.links, section.actions):
            if group:
                out.append(" · ".join(dialect.link(dialect.escape(x.label), x.url) for x in group))
    return dialect.line_break.join(out)


def owners_line(message: Message, dialect: Dialect) -> str | None:
    """The line mentioning the owners, or ``None`` when there are none."""
    if not message.owners:
        return None
    mentions = " ".join(dialect.mention(o) for o in message.owners)
    return message.words("owners", value=mentions)


def body(message: Message, dialect: Dialect, *, links: bool = True, owners: bool = True) -> str:
    """The whole body (no title) written in ``dialect``; a blank line between alerts."""
    blocks = (
        [dialect.line_break.join(dialect.escape(line) for line in message.intro)] if message.intro else []
    )
    blocks += [section_text(s, dialect, links=links) for s in message.sections]
    mention = owners_line(message, dialect) if owners else None
    if mention:
        blocks.append(mention)
    return (dialect.line_break * 2).join(blocks)


def render(n: Notification) -> Rendered:
    """The title, markdown body and plain-text body of a notification, in ``n.locale``."""
    message = compose(n)
    return Rendered(title=message.title, markdown=body(message, MARKDOWN), text=body(message, PLAIN))


# -- reading alert dicts defensively ----------------------------------------------------------------------


def _text(alert: Mapping[str, Any], key: str) -> str | None:
    value = alert.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _shown(alert: Mapping[str, Any], key: str) -> str | None:
    """A text field as it may be shown: tracker-controlled, so made inert."""
    value = _text(alert, key)
    return inert(value) if value is not None else None


def _number(mapping: Mapping[str, Any], key: str) -> float | None:
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _evidence(alert: Mapping[str, Any]) -> Mapping[str, Any]:
    evidence = alert.get("evidence")
    return evidence if isinstance(evidence, Mapping) else {}


def _metric(alert: Mapping[str, Any]) -> str:
    return _text(alert, "metric") or ""


def _severity(alert: Mapping[str, Any]) -> str:
    severity = _text(alert, "severity")
    return severity if severity in SEVERITY_ORDER else "info"


def _resolved(alert: Mapping[str, Any]) -> bool:
    return alert.get("status") == "resolved" or alert.get("change") == "resolved"


def _value(alert: Mapping[str, Any], number: float | None, locale: str) -> str:
    if number is None:
        return _WORDS[locale]["no_data"]
    return format_value(_metric(alert), number)


def _kind(alert: Mapping[str, Any], locale: str) -> str:
    kind = _text(alert, "kind") or ""
    return _WORDS[locale][kind] if kind in _KINDS else inert(kind)


def _metric_name(alert: Mapping[str, Any], locale: str) -> str:
    metric = _metric(alert)
    return _METRICS[locale].get(metric) or inert(metric)


def _where(alerts: Sequence[Mapping[str, Any]]) -> str:
    """``channel/campaign`` of one alert; the channels of a group (one, by construction)."""
    if len(alerts) == 1:
        channel, campaign = _shown(alerts[0], "channel"), _shown(alerts[0], "campaign")
        # Joined, two safe names can make a URL ("a:/" and ":" read "a://:"): the whole is made inert again.
        return inert(f"{channel}/{campaign}") if channel and campaign and campaign != "-" else channel or ""
    return ", ".join(dict.fromkeys(c for a in alerts if (c := _shown(a, "channel"))))


def _pct(ratio: float) -> int | None:
    """A ratio as a whole percentage, ``None`` when too large to be one."""
    percent = ratio * 100
    return round(percent) if math.isfinite(percent) else None


def _count(number: float) -> str:
    return f"{int(number):,}" if number.is_integer() else f"{number:,.2f}"


def _clock(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def window_text(start: str | None, end: str | None) -> str | None:
    """``10:00–10:10`` in the time zone the stamps were written in; dates added when they differ."""
    begin, finish = (_clock(start) if start else None), (_clock(end) if end else None)
    if begin is None:
        return None
    if finish is None:
        return begin.strftime("%m-%d %H:%M")
    if begin.date() == finish.date():
        return f"{begin:%H:%M}–{finish:%H:%M}"
    return f"{begin:%m-%d %H:%M}–{finish:%m-%d %H:%M}"


# -- composing ---------------------------------------------------------------------------------------------


def _tone(alerts: Sequence[Mapping[str, Any]]) -> str:
    firing = [a for a in alerts if not _resolved(a)]
    if not firing:
        return "resolved"
    return min((_severity(a) for a in firing), key=most_severe_first)


def _title(alerts: Sequence[Mapping[str, Any]], locale: str) -> str:
    words = _WORDS[locale]
    tone = _tone(alerts)
    if len(alerts) != 1:
        counts = []
        firing = [a for a in alerts if not _resolved(a)]
        for severity in ("critical", "warning"):
            if k := sum(_severity(a) == severity for a in firing):
                counts.append(words["count_of"].format(count=k, what=words[severity]))
        if k := len(alerts) - len(firing):
            counts.append(words["count_of"].format(count=k, what=words["resolved_tag"]))
        group = words["group"].format(where=_where(alerts) or "adpulse", count=len(alerts))
        detail = _paren(words["sep"].join(counts), locale) if counts else ""
        return f"{_EMOJI[tone]} {group}{detail}"
    alert = alerts[0]
    label = words["resolved_tag"] if tone == "resolved" else words[_severity(alert)]
    what = " ".join(filter(None, [_where(alerts), _what(alert, locale)]))
    return f"{_EMOJI[tone]} [{label}] {what}".rstrip()


def _what(alert: Mapping[str, Any], locale: str) -> str:
    """The headline of a single-alert title: "CTR fell 52 %", "点击率恢复至 2.30 %", "budget 82 % used"."""
    words = _WORDS[locale]
    name = _metric_name(alert, locale)
    value, threshold = _number(alert, "value"), _number(alert, "threshold")
    change_pct = _number(alert, "change_pct")
    if _resolved(alert):
        return name + (
            words["back_to"].format(value=_value(alert, value, locale)) if value is not None else ""
        )
    if change_pct is not None and round(change_pct) != 0:
        phrase = words["fell" if change_pct < 0 else "rose"].format(pct=abs(round(change_pct)))
        return name + phrase
    used = _number(_evidence(alert), "used_ratio")
    if (
        alert.get("kind") == "budget"
        and _metric(alert) == "spend"
        and used is not None
        and _pct(used) is not None
    ):
        return words["budget_title"].format(pct=_pct(used))
    if value is None:
        return name or _kind(alert, locale)
    shown = f"{name} {_value(alert, value, locale)}".strip()
    if threshold is not None and threshold != value:
        shown += f" {'<' if value < threshold else '≥'} {_value(alert, threshold, locale)}"
    return shown


def _section(alert: Mapping[str, Any], actions: Mapping[str, Mapping[str, str]], locale: str) -> Section:
    words = _WORDS[locale]
    resolved = _resolved(alert)
    name = _metric_name(alert, locale) or _kind(alert, locale) or "adpulse"
    value = _number(alert, "value")
    evidence = _evidence(alert)

    if resolved:
        headline = name + words["back_to"].format(value=_value(alert, value, locale))
        last = _number(evidence, "last_firing_value")
        if last is not None:
            headline += _paren(words["was"].format(value=_value(alert, last, locale)), locale)
    else:
        headline = f"{name} {_value(alert, value, locale)}"
        change_pct = _number(alert, "change_pct")
        if change_pct is not None:
            headline += _paren(f"{change_pct:+.1f} %", locale)

    lines = [
        s for s in [_shown(alert, "summary"), _status_line(alert, locale), _place_line(alert, locale)] if s
    ]
    reference = [
        words[key].format(value=_value(alert, number, locale))
        for key, number in (
            ("baseline", _number(alert, "baseline")),
            ("threshold_is", _number(alert, "threshold")),
        )
        if number is not None
    ]
    if reference:
        lines.append(_capital(" · ".join(reference)))
    window = window_text(_text(alert, "window_start"), _text(alert, "window_end"))
    if window:
        span = _shown(alert, "window")
        lines.append(words["window"].format(value=window) + (_paren(span, locale) if span else ""))
    if proof := _evidence_line(alert, locale):
        lines.append(proof)
    if description := _shown(alert, "description"):
        if len(description) > MAX_DESCRIPTION_CHARS:
            description = description[: MAX_DESCRIPTION_CHARS - 1].rstrip() + "…"
        lines.append(description)

    links = []
    for key in ("dashboard", "runbook"):
        url = _text(alert, f"{key}_url")
        if url and _is_web(url):
            links.append(Link(key, words[key], url))
        elif url:
            # A relative runbook path is still worth showing; it just cannot be a button.
            lines.append(f"{words[key]}{words['colon']}{url}")
    alert_actions = actions.get(_text(alert, "id") or "") if isinstance(actions, Mapping) else None
    if not isinstance(alert_actions, Mapping):
        alert_actions = {}
    buttons = tuple(
        Link(key, words[key], url)
        for key in ACTION_KEYS
        if isinstance(url := alert_actions.get(key), str) and _is_web(url)
    )
    return Section(headline, tuple(lines), tuple(links), buttons)


def _status_line(alert: Mapping[str, Any], locale: str) -> str:
    words = _WORDS[locale]
    if _resolved(alert):
        status = words["resolved"]
    else:
        status = words["firing"]
        change = alert.get("change")
        if isinstance(change, str) and change in _CHANGES:
            status += _paren(words[change], locale)
    parts = [
        f"{_EMOJI['resolved' if _resolved(alert) else _severity(alert)]} {status}",
        words[_severity(alert)],
    ]
    if kind := _kind(alert, locale):
        parts.append(kind)
    reopened = _number(alert, "reopened")
    if reopened and not _resolved(alert):
        parts.append(words["again"])
    lasted = _number(alert, "duration_s")
    if lasted is not None and lasted >= 60:
        parts.append(words["lasted"].format(value=_lasted(lasted, locale)))
    return " · ".join(parts)


def _lasted(seconds: float, locale: str) -> str:
    minutes = round(seconds / 60)
    hours, rest = divmod(minutes, 60)
    if locale == "zh":
        return f"{hours} 小时 {rest} 分钟" if hours and rest else f"{hours} 小时" if hours else f"{rest} 分钟"
    return f"{hours} h {rest} min" if hours and rest else f"{hours} h" if hours else f"{rest} min"


def _place_line(alert: Mapping[str, Any], locale: str) -> str | None:
    words = _WORDS[locale]
    parts = [
        words[key].format(value=value)
        for key in ("channel", "campaign", "region")
        if (value := _shown(alert, key)) and value != "-"
    ]
    return _capital(" · ".join(parts)) if parts else None


def _evidence_line(alert: Mapping[str, Any], locale: str) -> str | None:
    evidence = _evidence(alert)
    words = _VOLUME_WORDS[locale]
    parts = [
        words[key].format(value=_count(n)) for key in _VOLUMES if (n := _number(evidence, key)) is not None
    ]
    used, amount = _number(evidence, "used_ratio"), _number(evidence, "amount")
    if used is not None and amount is not None and _pct(used) is not None:
        currency = _shown(evidence, "currency")
        period = _shown(evidence, "period")
        spent = " ".join(filter(None, [_count(amount), currency])) + (f" / {period}" if period else "")
        parts.append(_WORDS[locale]["budget_used"].format(pct=_pct(used), amount=spent))
    p_value = _number(evidence, "p_value")
    if p_value is not None:
        parts.append(p_text(p_value))
    return _capital(" · ".join(parts)) if parts else None


def _paren(text: str, locale: str) -> str:
    return f"（{text}）" if locale == "zh" else f" ({text})"


def _capital(line: str) -> str:
    return line[:1].upper() + line[1:]


def _is_web(url: str) -> bool:
    return url.startswith(("https://", "http://"))
