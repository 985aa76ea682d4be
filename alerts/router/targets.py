"""Chat targets and the HTTP request each one needs, signing included. Pure: no I/O.

Signing follows each service's documentation:

- Feishu/Lark custom bot: ``timestamp`` (epoch seconds) and ``sign`` in the JSON body, where ``sign`` is
  base64(HMAC-SHA256(key = f"{timestamp}\\n{secret}", message = empty)). Note the string to sign is the
  *key*: the service rejects an HMAC keyed with the secret. The timestamp must be within an hour.
- DingTalk custom robot: ``timestamp`` (epoch *milliseconds*) and ``sign`` in the URL query, where ``sign``
  is urlencode(base64(HMAC-SHA256(key = secret, message = f"{timestamp}\\n{secret}"))).
- WeCom group robot and Slack incoming webhooks: the credential is the URL itself.
- generic webhook: ``X-Adpulse-Signature: sha256=<hex HMAC-SHA256(secret, body)>`` (CONTRACT.md §6).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote_plus, urlsplit, urlunsplit

import orjson

from alerts.router.messages import (
    MARKDOWN,
    MAX_SECTIONS,
    Dialect,
    Link,
    Message,
    Notification,
    at_mention,
    body,
    compose,
    handle,
    link_url,
    markdown_escape,
    owners_line,
    section_text,
)

TARGET_TYPES = ("feishu", "dingtalk", "wecom", "slack", "webhook", "console", "apprise")
HTTP_TYPES = frozenset(TARGET_TYPES) - {"console", "apprise"}

# The services' published limits per bot; webhook and apprise targets are not limited by default.
DEFAULT_RATE_PER_MINUTE: Mapping[str, float] = {
    "feishu": 100.0,
    "dingtalk": 20.0,
    "wecom": 20.0,
    "slack": 60.0,
}

WECOM_MAX_BYTES = 4096  # markdown.content limit of the WeCom group robot, in UTF-8 bytes
SLACK_HEADER_CHARS = 150  # a header block's plain_text limit
SLACK_SECTION_CHARS = 3000  # a section block's text limit
SLACK_MAX_BLOCKS = 50  # blocks per message
# Feishu's custom bot takes at most 20 KB per request; DingTalk publishes no figure, so it gets the same.
MAX_BODY_BYTES: Mapping[str, int] = {"feishu": 20_000, "dingtalk": 20_000}

_JSON_UTF8 = {"Content-Type": "application/json; charset=utf-8"}
_FEISHU_TEMPLATE = {"critical": "red", "warning": "orange", "resolved": "green", "info": "blue"}
_WECOM_COLOUR = {"critical": "warning", "warning": "warning", "resolved": "info", "info": "comment"}
_BUTTON_STYLE = {"ack": "primary", "approve": "primary"}
# Codes with which the services say "too many messages" in an otherwise ordinary answer. Feishu answers
# 9499 both for "too many request" and for a malformed body, so only its message tells them apart.
_FEISHU_RATE_CODES = frozenset({11232, 99991400})
_DINGTALK_RATE_CODES = frozenset({130101})
_WECOM_RATE_CODES = frozenset({45009})


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """Where notifications go: one chat bot, webhook, apprise URL set or the console."""

    name: str
    type: str
    url: str | None = None
    secret: str | None = None
    locale: str = "zh-CN"
    timeout_s: float = 5.0
    rate_per_minute: float | None = None

    def __post_init__(self) -> None:
        if self.type not in TARGET_TYPES:
            raise ValueError(
                f"target {self.name!r}: unknown type {self.type!r}; use one of {', '.join(TARGET_TYPES)}"
            )

    def secrets(self) -> tuple[str, ...]:
        """The url and secret values, and the credential parts of the url, for redaction (longest first).

        Services put the credential in the path (Feishu, Slack) or the query (DingTalk, WeCom), and an
        error may print the URL re-encoded or only that part, so those parts are secrets on their own.
        """
        found: set[str] = {s for s in (self.url, self.secret) if s}
        for url in _urls(self.url or ""):
            found.add(url)
            found.update(_url_credentials(url, host_is_secret=self.type == "apprise"))
        return tuple(sorted(found, key=len, reverse=True))

    def __repr__(self) -> str:
        return (
            f"TargetSpec(name={self.name!r}, type={self.type!r}, url={_masked(self.url)}, "
            f"secret={_masked(self.secret)}, locale={self.locale!r}, timeout_s={self.timeout_s!r}, "
            f"rate_per_minute={self.rate_per_minute!r})"
        )


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One POST to a chat service: the (secret-bearing) URL, the body and headers."""

    url: str
    body: bytes
    headers: Mapping[str, str]

    def __repr__(self) -> str:
        return f"HttpRequest(url='***', body=<{len(self.body)} bytes>, headers={dict(self.headers)!r})"


def rate_per_minute(spec: TargetSpec) -> float | None:
    """The target's send rate limit: its own, else its type's default; ``None`` means unlimited."""
    return (
        spec.rate_per_minute if spec.rate_per_minute is not None else DEFAULT_RATE_PER_MINUTE.get(spec.type)
    )


def apprise_urls(spec: TargetSpec) -> list[str]:
    """The apprise URLs of a target (its ``url`` holds one or more, separated by whitespace or commas)."""
    return _urls(spec.url or "")


def split_for(spec: TargetSpec, n: Notification) -> tuple[Notification, ...]:
    """The notifications to send one request each: per alert for a webhook, else the whole notification."""
    if spec.type == "webhook":
        return tuple(replace(n, alerts=(alert,)) for alert in n.alerts)
    return (n,)


def paginate(spec: TargetSpec, n: Notification, now_s: float) -> tuple[Notification, ...]:
    """The messages a notification goes out as: every alert in exactly one, in order, none summarised away.

    A webhook gets one per alert; a chat target as many alerts per message as fit: at most
    ``MAX_SECTIONS``, and within the service's size limit (WeCom's 4 KB of markdown, Feishu's 20 KB per
    request, Slack's 50 blocks), so no alert is cut off the end of a message. An alert too big even on its
    own goes alone (the service's own cut keeps its title and summary, which come first).
    Each message says which part of the burst it is ("part 2 of 4").
    """
    if spec.type == "webhook":
        return split_for(spec, n)
    pages: list[tuple[Mapping[str, Any], ...]] = []
    page: tuple[Mapping[str, Any], ...] = ()
    for alert in n.alerts:
        grown = (*page, alert)
        # The widest part marker, so numbering the pages afterwards cannot push one over the limit.
        marked = replace(n, alerts=grown, part=(len(n.alerts), len(n.alerts)))
        if page and (len(grown) > MAX_SECTIONS or not _fits(spec, marked, now_s)):
            pages.append(page)
            grown = (alert,)
        page = grown
    if page or not pages:
        pages.append(page)
    if len(pages) == 1:
        return (n,)
    return tuple(replace(n, alerts=p, part=(i, len(pages))) for i, p in enumerate(pages, start=1))


def _fits(spec: TargetSpec, n: Notification, now_s: float) -> bool:
    """Whether ``n`` fits in one message of ``spec``'s service without being cut."""
    if spec.type == "wecom":
        return len(_wecom_content(compose(n, spec.locale)).encode()) <= WECOM_MAX_BYTES
    if spec.type == "slack" and spec.url:
        return len(orjson.loads(_slack(spec, compose(n, spec.locale), n, now_s).body)["blocks"]) <= (
            SLACK_MAX_BLOCKS
        )
    limit = MAX_BODY_BYTES.get(spec.type)
    if limit is not None and spec.url:
        return len(_BUILDERS[spec.type](spec, compose(n, spec.locale), n, now_s).body) <= limit
    return True


def build_requests(spec: TargetSpec, n: Notification, now_s: float) -> list[HttpRequest]:
    """Every request a notification needs: one per alert for a webhook, else one."""
    return [build_request(spec, part, now_s) for part in split_for(spec, n)]


def build_request(spec: TargetSpec, n: Notification, now_s: float) -> HttpRequest:
    """The signed request for one notification, in the target's locale; ``now_s`` is epoch seconds.

    Raises ValueError for console/apprise (not HTTP), for a spec missing its url, and for a webhook
    notification of several alerts (a webhook gets one request per alert: use ``build_requests``).
    """
    if spec.type not in HTTP_TYPES:
        raise ValueError(f"target {spec.name!r}: a {spec.type} target does not send HTTP requests")
    if not spec.url:
        raise ValueError(
            f"target {spec.name!r}: no url; set it in the routes file (e.g. url: ${{MY_HOOK_URL}})"
        )
    if spec.type == "webhook":
        return _webhook(spec, n, now_s)
    return _BUILDERS[spec.type](spec, compose(n, spec.locale), n, now_s)


def response_error(spec: TargetSpec, status: int, body: bytes) -> str | None:
    """None when the service accepted the message; else a short reason (may echo the body: redact it).

    Feishu/DingTalk/WeCom answer HTTP 200 with a JSON code (feishu ``{"code":0}`` / older
    ``{"StatusCode":0}``; dingtalk/wecom ``{"errcode":0}``); non-zero codes are errors.
    """
    if not 200 <= status < 300:
        return _answer_code(spec, body) or _snippet(body) or _phrase(status)
    if spec.type in ("feishu", "dingtalk", "wecom"):
        return _answer_code(spec, body, accepted=True) or None
    return None


def is_rate_limited_body(spec: TargetSpec, body: bytes) -> bool:
    """Whether the answer says "too many messages" (treated like HTTP 429), e.g. DingTalk errcode 130101."""
    answer = _json(body)
    if answer is None:
        return False
    if spec.type == "feishu":
        code = answer.get("code", answer.get("StatusCode"))
        message = str(answer.get("msg", answer.get("StatusMessage", ""))).lower()
        return _is_code(code, _FEISHU_RATE_CODES) or (code == 9499 and "too many" in message)
    if spec.type == "dingtalk":
        return _is_code(answer.get("errcode"), _DINGTALK_RATE_CODES)
    if spec.type == "wecom":
        return _is_code(answer.get("errcode"), _WECOM_RATE_CODES)
    return False


def _is_code(code: object, codes: frozenset[int]) -> bool:
    return isinstance(code, int) and code in codes


# -- signing -----------------------------------------------------------------------------------------------


def feishu_sign(secret: str, timestamp: str) -> str:
    """Feishu/Lark: base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b"")); timestamp in seconds."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def dingtalk_sign(secret: str, timestamp: str) -> str:
    """DingTalk (before URL-encoding): base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))."""
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def webhook_signature(secret: str, body: bytes) -> str:
    """The generic webhook's ``X-Adpulse-Signature`` value: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def with_query(url: str, params: str) -> str:
    """``url`` with ``params`` (already encoded) appended to its query, with ``?`` or ``&`` as needed."""
    parts = urlsplit(url)
    query = f"{parts.query}&{params}" if parts.query else params
    return urlunsplit(parts._replace(query=query))


# -- one builder per service -------------------------------------------------------------------------------


def _feishu(spec: TargetSpec, message: Message, n: Notification, now_s: float) -> HttpRequest:
    dialect = _dialect(_feishu_mention)
    elements: list[dict[str, Any]] = []
    if message.intro:
        elements.append(_feishu_text("\n".join(dialect.escape(line) for line in message.intro)))
    for i, section in enumerate(message.sections):
        if i:
            elements.append({"tag": "hr"})
        elements.append(_feishu_text(section_text(section, dialect, links=False)))
        buttons = [_feishu_button(link) for link in (*section.links, *section.actions)]
        if buttons:
            elements.append({"tag": "action", "actions": buttons})
    mention = owners_line(message, dialect)
    if mention:
        elements.append(_feishu_text(mention))
    card = {
        "config": {"wide_screen_mode": True},
        "header": {
            "template": _FEISHU_TEMPLATE[message.tone],
            "title": {"tag": "plain_text", "content": message.title},
        },
        "elements": elements,
    }
    payload: dict[str, Any] = {"msg_type": "interactive", "card": card}
    if spec.secret:
        timestamp = str(int(now_s))
        payload = {"timestamp": timestamp, "sign": feishu_sign(spec.secret, timestamp), **payload}
    return HttpRequest(_required_url(spec), orjson.dumps(payload), _JSON_UTF8)


def _feishu_mention(owner: str) -> str:
    """Feishu card markdown mentions: ``<at id=ou_…>`` for open ids, ``<at email=…>`` for emails."""
    who = handle(owner)
    if who == "all" or re.fullmatch(r"o[un]_[A-Za-z0-9]+", who):
        return f"<at id={who}></at>"
    if re.fullmatch(r"[\w.%+\-]+@[\w\-]+(\.[\w\-]+)+", who):
        return f"<at email={who}></at>"
    return markdown_escape(at_mention(owner))


def _feishu_text(content: str) -> dict[str, Any]:
    return {"tag": "div", "text": {"tag": "lark_md", "content": content}}


def _feishu_button(link: Link) -> dict[str, Any]:
    return {
        "tag": "button",
        "text": {"tag": "plain_text", "content": link.label},
        "type": _BUTTON_STYLE.get(link.key, "default"),
        "url": link.url,
    }


def _dingtalk(spec: TargetSpec, message: Message, n: Notification, now_s: float) -> HttpRequest:
    # DingTalk markdown needs a blank line for a line break; "@<mobile>" in the text makes the mention ring.
    dialect = replace(MARKDOWN, line_break="\n\n")
    text = f"#### {dialect.escape(message.title)}\n\n{body(message, dialect)}"
    owners = [handle(o) for o in message.owners]
    payload = {
        "msgtype": "markdown",
        "markdown": {"title": message.title, "text": text},
        "at": {
            "atMobiles": [o for o in owners if o.isdigit()],
            "atUserIds": [o for o in owners if not o.isdigit()],
            "isAtAll": False,
        },
    }
    url = _required_url(spec)
    if spec.secret:
        timestamp = str(int(now_s * 1000))
        url = with_query(
            url, f"timestamp={timestamp}&sign={quote_plus(dingtalk_sign(spec.secret, timestamp))}"
        )
    return HttpRequest(url, orjson.dumps(payload), _JSON_UTF8)


def _wecom_mention(owner: str) -> str:
    """WeCom markdown mentions a member by userid as ``<@userid>``; a mobile number cannot be mentioned."""
    who = handle(owner)
    if who.isdigit() or not re.fullmatch(r"[\w.\-@]+", who):
        return markdown_escape(at_mention(owner))
    return f"<@{who}>"


def _wecom(spec: TargetSpec, message: Message, n: Notification, now_s: float) -> HttpRequest:
    payload = {"msgtype": "markdown", "markdown": {"content": _wecom_content(message, WECOM_MAX_BYTES)}}
    return HttpRequest(_required_url(spec), orjson.dumps(payload), _JSON_UTF8)


def _wecom_content(message: Message, max_bytes: int | None = None) -> str:
    """The markdown of a WeCom message, cut to ``max_bytes`` (``None``: uncut, to see whether it fits)."""
    dialect = _dialect(_wecom_mention)
    title = f'<font color="{_WECOM_COLOUR[message.tone]}">**{dialect.escape(message.title)}**</font>'
    mention = owners_line(message, dialect)
    tail = f"\n\n{mention}" if mention else ""
    text = f"{title}\n{body(message, dialect, owners=False)}"
    if max_bytes is None:
        return text + tail
    # The mentions go last but must survive the cut, so the body is cut to leave room for them.
    return truncate_utf8(text, max_bytes - len(tail.encode())) + tail


def truncate_utf8(text: str, max_bytes: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes on a character boundary, ending in ``ellipsis``.

    Cuts at the last line break of the kept part when there is one in its second half, so a link or a
    number is not cut in two.
    """
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    room = max(0, max_bytes - len(ellipsis.encode()))
    kept = encoded[:room].decode(errors="ignore")
    line_end = kept.rfind("\n")
    if line_end > len(kept) // 2:
        kept = kept[: line_end + 1]
    return kept + ellipsis


def slack_escape(text: str) -> str:
    """Slack mrkdwn control characters: ``&``, ``<`` and ``>`` must be HTML-escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_mention(owner: str) -> str:
    """Slack notifies ``<@U…>`` member ids and ``<!here>``/``<!channel>``; a name is shown as text."""
    who = handle(owner)
    if who in ("here", "channel", "everyone"):
        return f"<!{who}>"
    if re.fullmatch(r"[UW][A-Z0-9]{6,}", who):
        return f"<@{who}>"
    return slack_escape(at_mention(owner))


SLACK = Dialect(
    bold=lambda s: f"*{s}*",
    link=lambda label, url: f"<{link_url(url)}|{label}>",
    mention=_slack_mention,
    escape=slack_escape,
)


def _slack(spec: TargetSpec, message: Message, n: Notification, now_s: float) -> HttpRequest:
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": message.title[:SLACK_HEADER_CHARS], "emoji": True},
        }
    ]
    if message.intro:
        blocks.append(_slack_section("\n".join(slack_escape(line) for line in message.intro)))
    for i, section in enumerate(message.sections):
        if i:
            blocks.append({"type": "divider"})
        blocks.append(_slack_section(section_text(section, SLACK, links=False)))
        buttons = [_slack_button(link) for link in (*section.links, *section.actions)]
        if buttons:
            blocks.append({"type": "actions", "elements": buttons})
    mention = owners_line(message, SLACK)
    if mention:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": mention, "verbatim": True}]}
        )
    # The top-level text is what notifications and old clients show; mentions there make them ring.
    fallback = "\n".join([slack_escape(message.title), *([mention] if mention else [])])
    payload = {"text": fallback, "blocks": blocks}
    return HttpRequest(_required_url(spec), orjson.dumps(payload), {"Content-Type": "application/json"})


def _slack_section(text: str) -> dict[str, Any]:
    # verbatim: Slack links no URL and parses no mention by itself; the explicit <@U…> of owners still work.
    text_object = {"type": "mrkdwn", "text": truncate_chars(text, SLACK_SECTION_CHARS), "verbatim": True}
    return {"type": "section", "text": text_object}


def _slack_button(link: Link) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": link.label},
        "url": link.url,
    }
    if link.key in _BUTTON_STYLE:
        button["style"] = _BUTTON_STYLE[link.key]
    return button


def truncate_chars(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _webhook(spec: TargetSpec, n: Notification, now_s: float) -> HttpRequest:
    if len(n.alerts) != 1:
        raise ValueError(f"target {spec.name!r}: a webhook gets one request per alert; use build_requests")
    alert = n.alerts[0]
    payload = orjson.dumps(alert if isinstance(alert, dict) else dict(alert))
    alert_id = alert.get("id")
    # Without an id (a malformed alert) the body itself keys the request, so a retry is still recognised.
    key = alert_id if isinstance(alert_id, str) and alert_id else hashlib.sha256(payload).hexdigest()[:16]
    headers = {
        "Content-Type": "application/json",
        "X-Adpulse-Timestamp": str(int(now_s)),
        "Idempotency-Key": f"{key}:{spec.name}",
    }
    if spec.secret:
        headers["X-Adpulse-Signature"] = webhook_signature(spec.secret, payload)
    return HttpRequest(_required_url(spec), payload, headers)


_BUILDERS: dict[str, Callable[[TargetSpec, Message, Notification, float], HttpRequest]] = {
    "feishu": _feishu,
    "dingtalk": _dingtalk,
    "wecom": _wecom,
    "slack": _slack,
}


# -- helpers -----------------------------------------------------------------------------------------------


def _dialect(mention: Callable[[str], str]) -> Dialect:
    return replace(MARKDOWN, mention=mention)


def _required_url(spec: TargetSpec) -> str:
    assert spec.url is not None  # checked by build_request
    return spec.url


def _masked(value: str | None) -> str:
    return "'***'" if value else "None"


def _urls(text: str) -> list[str]:
    return [u for u in re.split(r"[\s,]+", text) if u]


def _url_credentials(url: str, *, host_is_secret: bool) -> set[str]:
    """Parts of a URL that carry a credential: the password, query values and token-like path segments."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return set()
    found = {password} if password else set()
    found.update(value for _, value in parse_qsl(parts.query) if len(value) >= 6)
    candidates = parts.path.split("/") + (
        [parts.hostname or ""] if host_is_secret and not _is_ip(parts) else []
    )
    found.update(segment for segment in candidates if _token_like(segment))
    if parts.username and host_is_secret:
        found.add(parts.username)
    return found


def _is_ip(parts: SplitResult) -> bool:
    try:
        ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return False
    return True


def _token_like(segment: str) -> bool:
    # Path words of the services ("open-apis", "webhook", "cgi-bin") have no digits; tokens are long or do.
    return len(segment) >= 16 or (len(segment) >= 6 and any(c.isdigit() for c in segment))


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _answer_code(spec: TargetSpec, body: bytes, *, accepted: bool = False) -> str | None:
    """The service's own error code and message, ``""`` when it reports success, ``None`` when it says
    nothing we understand (then ``accepted`` turns that into an error: a chat bot always answers a code)."""
    if spec.type not in ("feishu", "dingtalk", "wecom"):
        return None
    answer = _json(body)
    if answer is None:
        return f"unreadable answer: {_snippet(body) or 'empty'}" if accepted else None
    if spec.type == "feishu":
        # New answers carry "code" (and may repeat a stale "StatusCode": 0), old ones only "StatusCode".
        code = answer.get("code", answer.get("StatusCode"))
        message = answer.get("msg", answer.get("StatusMessage", ""))
    else:
        code, message = answer.get("errcode"), answer.get("errmsg", "")
    if code == 0:
        return ""
    if code is None:
        return f"unexpected answer: {_snippet(body)}" if accepted else None
    return f"code {code}: {_snippet(str(message).encode())}".rstrip(": ")


def _snippet(body: bytes, limit: int = 200) -> str:
    text = " ".join(body.decode(errors="replace").split())
    return truncate_chars(text, limit)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"
