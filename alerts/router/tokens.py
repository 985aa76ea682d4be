"""Signed, expiring action tokens for the links in chat messages (acknowledge, snooze, approve). Pure.

A token is ``<payload>.<mac>``: the payload is base64url JSON naming the action and the alert; the mac is
HMAC-SHA256 of the payload under the router's token key. Anyone holding the link can act on that one alert
until it expires, as with the buttons of any chat-ops tool; nothing else can be done with it. Links live a
day by default (``DEFAULT_TTL_S``, at most ``MAX_TTL_S``), and a snooze asked by a link is at most
``MAX_SNOOZE_S`` and holds for the episode the link was sent for only (:mod:`alerts.acks`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import orjson

ACTIONS = ("ack", "snooze", "approve")
_SNOOZE_S = 3600.0
#: How long an action link works unless ADPULSE_ROUTER_TOKEN_TTL_S says otherwise: last night's message still
#: works in the morning, and every repeat of a firing alert carries fresh links.
DEFAULT_TTL_S = 86400.0
#: The longest any link lives, whatever the setting.
MAX_TTL_S = 7 * 86400.0
#: The longest snooze a link can ask for; a longer one is `adpulse alerts snooze --for`, by name.
MAX_SNOOZE_S = 4 * 3600.0
#: The shortest token key accepted, in bytes: ``openssl rand -hex 32`` gives 64.
MIN_KEY_BYTES = 32
MAKE_KEY = "openssl rand -hex 32  (or: python -c 'import secrets; print(secrets.token_hex(32))')"
# Values people leave in place of a key: refused whatever their length.
_PLACEHOLDERS = ("changeme", "change-me", "change_me", "replaceme", "replace-me", "placeholder", "example")
_WORDS = frozenset({"secret", "test", "password", "token", "key", "default", "admin", "adpulse", "router"})


class TokenError(ValueError):
    """The token is malformed, forged or expired; the message says which."""


class WeakKeyError(ValueError):
    """The token key is a placeholder or too weak to sign links; the message says why and how to make one."""


def key_weakness(key: bytes) -> str | None:
    """Why ``key`` is too weak to sign action links (never quoting it), or None when it will do.

    Refused: a placeholder (``change-me``, ``secret``, ``test``…), fewer than ``MIN_KEY_BYTES`` bytes, one
    pattern repeated (``aaaa…``, ``abab…``), or fewer than 8 different characters.
    """
    text = key.strip().lower()
    if text.decode(errors="replace") in _WORDS or any(p.encode() in text for p in _PLACEHOLDERS):
        return "it is a placeholder"
    if len(key) < MIN_KEY_BYTES:
        return f"it is too short ({len(key)} bytes; at least {MIN_KEY_BYTES})"
    if (key + key).find(key, 1) < len(key):
        return "it is one pattern repeated"
    if len(set(key)) < 8:
        return f"it has only {len(set(key))} different characters"
    return None


def check_key(key: bytes, source: str = "ADPULSE_ROUTER_TOKEN_KEY") -> bytes:
    """``key`` if it is strong enough to sign action links, else WeakKeyError naming ``source``."""
    weakness = key_weakness(key)
    if weakness is not None:
        raise WeakKeyError(
            f"{source} is refused: {weakness}. Anyone who guesses it can acknowledge, snooze and approve "
            f"budgets from forged links. Make one with: {MAKE_KEY}"
        )
    return key


@dataclass(frozen=True, slots=True)
class Action:
    """What a token allows: ``action`` on the alert episode ``fingerprint`` / ``fired_at``."""

    action: str
    fingerprint: str
    alert_id: str
    fired_at: str | None
    expires_s: float
    summary: str = ""
    snooze_s: float = _SNOOZE_S
    #: For approve: channel, campaign, period and the period's start (RFC 3339) of the budget.
    budget: Mapping[str, Any] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def sign(action: Action, key: bytes) -> str:
    """The token for ``action``."""
    body: dict[str, object] = {
        "a": action.action,
        "fp": action.fingerprint,
        "id": action.alert_id,
        "fa": action.fired_at,
        "exp": int(action.expires_s),
        "s": action.summary[:200],
        "sn": action.snooze_s,
    }
    if action.budget:
        body["b"] = dict(action.budget)
    payload = _b64(orjson.dumps(body))
    return f"{payload}.{_mac(key, payload)}"


def verify(token: str, key: bytes, now_s: float) -> Action:
    """The action a token allows; TokenError if it is forged, malformed or expired."""
    payload, dot, mac = token.partition(".")
    if not dot or not hmac.compare_digest(
        mac.encode("utf-8", "surrogateescape"), _mac(key, payload).encode()
    ):
        raise TokenError("this link is not valid (it was changed, or signed with another key)")
    try:
        body = orjson.loads(_unb64(payload))
        action = Action(
            action=body["a"],
            fingerprint=body["fp"],
            alert_id=body["id"],
            fired_at=body.get("fa"),
            expires_s=float(body["exp"]),
            summary=body.get("s", ""),
            # Bounded here, where the token is trusted: no link mutes for longer, whoever signed it.
            snooze_s=min(float(body.get("sn", _SNOOZE_S)), MAX_SNOOZE_S),
            budget=body.get("b") or {},
        )
    except (ValueError, KeyError, TypeError):
        raise TokenError("this link is not valid (its content is malformed)") from None
    if action.action not in ACTIONS:
        raise TokenError(f"unknown action {action.action!r}")
    if not action.snooze_s > 0 or action.expires_s - now_s > MAX_TTL_S:
        raise TokenError("this link is not valid (it asks for more than any adpulse link may)")
    if action.expires_s < now_s:
        raise TokenError(
            "this link has expired; use `adpulse alerts ack` or `adpulse budget approve` instead"
        )
    return action


@dataclass(frozen=True, slots=True)
class ActionLinks:
    """Builds the action links of an alert: ``{base_url}/a/{token}``."""

    key: bytes
    base_url: str
    ttl_s: float = DEFAULT_TTL_S
    snooze_s: float = _SNOOZE_S

    def __post_init__(self) -> None:
        if not 0 < self.ttl_s <= MAX_TTL_S:
            raise ValueError(
                f"action links live more than 0 s and at most {MAX_TTL_S:.0f} s, not {self.ttl_s}"
            )
        if not 0 < self.snooze_s <= MAX_SNOOZE_S:
            raise ValueError(
                f"a link snoozes more than 0 s and at most {MAX_SNOOZE_S:.0f} s, not {self.snooze_s}"
            )

    def for_alert(self, alert: Mapping[str, Any], now_s: float) -> dict[str, str]:
        """Links for a firing alert: ack and snooze; approve for a budget's warning. None when resolved."""
        if alert.get("status") != "firing" or not alert.get("fingerprint") or not alert.get("id"):
            return {}
        ack = Action(
            action="ack",
            fingerprint=str(alert["fingerprint"]),
            alert_id=str(alert["id"]),
            fired_at=alert.get("fired_at"),
            expires_s=now_s + self.ttl_s,
            summary=str(alert.get("summary") or ""),
            snooze_s=self.snooze_s,
        )
        links = {name: self._url(replace(ack, action=name)) for name in ("ack", "snooze")}
        budget = approvable_budget(alert)
        if budget:
            links["approve"] = self._url(replace(ack, action="approve", budget=budget))
        return links

    def _url(self, action: Action) -> str:
        return f"{self.base_url.rstrip('/')}/a/{quote(sign(action, self.key))}"


def approvable_budget(alert: Mapping[str, Any]) -> dict[str, Any]:
    """For a firing budget warning (the 80 % line): what identifies the budget and period; else {}."""
    evidence = alert.get("evidence") or {}
    if (
        alert.get("kind") != "budget"
        or alert.get("metric") != "spend"
        or alert.get("severity") != "warning"
        or not evidence.get("period")
        or not alert.get("window_start")
    ):
        return {}
    return {
        "channel": alert.get("channel"),
        "campaign": alert.get("campaign"),
        "period": evidence["period"],
        "period_start": alert["window_start"],
    }
