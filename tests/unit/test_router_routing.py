"""Routes file, routing, quiet hours, grouping, action tokens and log redaction: pure parts of the router."""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from adpulse.router_cli import RedactingFilter
from alerts.acks import Ack
from alerts.router.config import RoutesError, parse_routes
from alerts.router.routing import grouped, needs_escalation, plan, quiet_until
from alerts.router.tokens import (
    DEFAULT_TTL_S,
    MAX_SNOOZE_S,
    MAX_TTL_S,
    Action,
    ActionLinks,
    TokenError,
    approvable_budget,
    sign,
    verify,
)

ROUTES = """
targets:
  douyin-team: {type: feishu, url: "${FEISHU_URL}", secret: "${FEISHU_SECRET}", locale: zh-CN}
  ops-hook: {type: webhook, url: "${OPS_URL}", secret: "${OPS_SECRET}"}
  budget-desk: {type: slack, url: "${SLACK_URL}", locale: en}
  console: {type: console}
routes:
  - match: {channel: [douyin], severity: [warning, critical]}
    owners: ["@zhang.wei"]
    targets: [douyin-team]
    continue: true
    escalate: {after_s: 600, owners: ["@li.na"], targets: [ops-hook]}
  - match: {kind: budget}
    targets: [budget-desk, douyin-team]
    quiet_hours: {start: "22:00", end: "08:00", tz: Asia/Shanghai}
  - match: {channel: douyin}
    owners: ["@wang.fang"]
    targets: [douyin-team, console]
default_targets: [ops-hook]
"""
ENV = {
    "FEISHU_URL": "https://open.feishu.cn/hook/s3cr3t-path",
    "FEISHU_SECRET": "canary-feishu-secret",
    "OPS_URL": "http://127.0.0.1:1/hook",
    "OPS_SECRET": "canary-ops",
    "SLACK_URL": "https://hooks.slack.invalid/x",
}
CONFIG = parse_routes(ROUTES, ENV)


def alert(**fields: object) -> dict[str, object]:
    return {
        "id": "a1",
        "fingerprint": "anomaly/ctr/douyin/-",
        "status": "firing",
        "change": "fired",
        "kind": "anomaly",
        "severity": "warning",
        "metric": "ctr",
        "channel": "douyin",
        "campaign": None,
        "owner": None,
        "fired_at": "2026-11-24T10:10:03+08:00",
        "summary": "CTR fell 52 %",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # first route matches and continues; the budget route does not match; the third adds console
        ({}, [("douyin-team", ("@zhang.wei", "@wang.fang")), ("console", ("@wang.fang",))]),
        # info severity skips the first route
        ({"severity": "info"}, [("douyin-team", ("@wang.fang",)), ("console", ("@wang.fang",))]),
        # a budget alert of another channel: the budget route, owner from the alert
        (
            {"channel": "taobao", "kind": "budget", "owner": "@chen.jie"},
            [("budget-desk", ("@chen.jie",)), ("douyin-team", ("@chen.jie",))],
        ),
        # nothing matches: the default targets
        ({"channel": "jd"}, [("ops-hook", ())]),
    ],
)
def test_plan_follows_routes_in_order(
    fields: dict[str, object], expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    assert [(p.target, p.owners) for p in plan(alert(**fields), CONFIG)] == expected


def test_plan_carries_escalation_and_quiet_hours_of_the_route() -> None:
    first = plan(alert(severity="critical"), CONFIG)[0]
    assert (
        first.escalate is not None
        and first.escalate.after_s == 600
        and first.escalate.targets == ["ops-hook"]
    )
    budget = plan(alert(channel="taobao", kind="budget"), CONFIG)[0]
    assert budget.quiet_hours is not None and budget.escalate is None


def test_secrets_come_from_the_environment_and_a_missing_one_is_named_not_shown() -> None:
    assert CONFIG.spec("douyin-team").secret == "canary-feishu-secret"
    with pytest.raises(RoutesError) as caught:
        parse_routes(ROUTES, {k: v for k, v in ENV.items() if k != "OPS_SECRET"})
    assert "OPS_SECRET" in str(caught.value)
    assert not any(value in str(caught.value) for value in ENV.values())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("targets: {a: {type: pager, url: x}}\n", "targets.a.type"),
        ("targets: {a: {type: feishu}}\n", "needs a url"),
        ("targets: {a: {type: console}}\nroutes: [{targets: [b]}]\n", "unknown target"),
        ("targets: {a: {type: console}}\ndefault_targets: [nope]\n", "unknown target"),
        ("targets: {a: {type: console}}\nroutes: [{match: {severity: [loud]}, targets: [a]}]\n", "severity"),
        ("targets: {a: {type: console, colour: red}}\n", "colour"),
        ("- just a list\n", "must be a mapping"),
        ("targets: [\n", "not valid YAML"),
    ],
)
def test_a_wrong_routes_file_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(RoutesError, match=problem):
        parse_routes(text, {})


def test_a_secret_with_yaml_syntax_stays_a_plain_string() -> None:
    config = parse_routes(
        "targets: {h: {type: webhook, url: '${U}', secret: '${S}'}}\n",
        {"U": "http://x/{a: b}", "S": "#not: a comment"},
    )
    assert config.spec("h").secret == "#not: a comment" and config.spec("h").url == "http://x/{a: b}"


SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp()


@pytest.mark.parametrize(
    ("now", "severity", "until"),
    [
        ("2026-11-24 23:30", "warning", "2026-11-25 08:00"),
        ("2026-11-24 03:00", "warning", "2026-11-24 08:00"),
        ("2026-11-24 08:00", "warning", None),
        ("2026-11-24 21:59", "warning", None),
        ("2026-11-24 23:30", "critical", None),  # critical alerts are never held
    ],
)
def test_quiet_hours_hold_non_critical_alerts_until_they_end(
    now: str, severity: str, until: str | None
) -> None:
    quiet = plan(alert(channel="taobao", kind="budget"), CONFIG)[0].quiet_hours
    held = quiet_until(quiet, alert(severity=severity), at(now))
    assert held == (at(until) if until else None)


def test_quiet_hours_within_one_day() -> None:
    config = parse_routes(
        "targets: {c: {type: console}}\nroutes: [{targets: [c], quiet_hours: "
        "{start: '12:00', end: '14:00', tz: Asia/Shanghai}}]\n",
        {},
    )
    quiet = config.routes[0].quiet_hours
    assert quiet_until(quiet, alert(), at("2026-11-24 13:00")) == at("2026-11-24 14:00")
    assert quiet_until(quiet, alert(), at("2026-11-24 14:00")) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"severity": "critical"}, True),
        ({"severity": "warning"}, False),
        ({"severity": "critical", "change": "repeat"}, False),
        ({"severity": "critical", "status": "resolved"}, False),
    ],
)
def test_only_new_critical_alerts_escalate(fields: dict[str, object], expected: bool) -> None:
    escalate = plan(alert(severity="critical"), CONFIG)[0].escalate
    assert needs_escalation(alert(**fields), escalate) is expected
    assert needs_escalation(alert(**fields), None) is False


def test_a_burst_of_one_channel_is_one_message_per_target() -> None:
    a, b, c = alert(id="1"), alert(id="2", metric="cvr"), alert(id="3", channel="jd")
    groups = grouped([("t", a), ("t", b), ("t", c), ("u", a)])
    assert {k: [x["id"] for x in v] for k, v in groups.items()} == {
        ("t", "douyin"): ["1", "2"],
        ("t", "jd"): ["3"],
        ("u", "douyin"): ["1"],
    }


KEY = b"token-key"


def test_action_links_are_signed_and_expire() -> None:
    links = ActionLinks(KEY, "http://router:6067/", ttl_s=60).for_alert(alert(), now_s=1000.0)
    assert set(links) == {"ack", "snooze"}
    token = links["ack"].rsplit("/a/", 1)[1]
    action = verify(token, KEY, now_s=1030.0)
    assert (action.action, action.fingerprint, action.fired_at) == (
        "ack",
        "anomaly/ctr/douyin/-",
        "2026-11-24T10:10:03+08:00",
    )
    with pytest.raises(TokenError, match="expired"):
        verify(token, KEY, now_s=1061.0)
    with pytest.raises(TokenError, match="not valid"):
        verify(token, b"another key", now_s=1030.0)
    payload, _, mac = token.partition(".")
    with pytest.raises(TokenError, match="not valid"):
        verify(payload[:-2] + "AA." + mac, KEY, now_s=1030.0)


def test_budget_warnings_get_an_approve_link_and_resolved_alerts_none() -> None:
    warning = alert(
        kind="budget", metric="spend", window_start="2026-11-24T00:00:00+08:00", evidence={"period": "day"}
    )
    links = ActionLinks(KEY, "http://r").for_alert(warning, now_s=0.0)
    action = verify(links["approve"].rsplit("/a/", 1)[1], KEY, now_s=1.0)
    assert (
        action.budget
        == approvable_budget(warning)
        == {
            "channel": "douyin",
            "campaign": None,
            "period": "day",
            "period_start": "2026-11-24T00:00:00+08:00",
        }
    )
    assert approvable_budget({**warning, "severity": "critical"}) == {}
    assert ActionLinks(KEY, "http://r").for_alert(alert(status="resolved"), now_s=0.0) == {}


def test_a_forged_action_name_is_refused() -> None:
    with pytest.raises(TokenError, match="unknown action"):
        verify(sign(Action("delete", "fp", "id", None, 100.0), KEY), KEY, now_s=0.0)


def test_log_redaction_covers_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    redacting = RedactingFilter(["canary-feishu-secret", "x"])
    handler = logging.StreamHandler()
    handler.addFilter(redacting)
    record = logger.makeRecord(
        "t", logging.ERROR, __file__, 1, "posting to %s failed", ("canary-feishu-secret",), None
    )
    redacting.filter(record)
    assert "canary" not in record.getMessage() and "***" in record.getMessage()
    try:
        raise RuntimeError("boom at https://hook/canary-feishu-secret")
    except RuntimeError:
        import sys

        record = logger.makeRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    redacting.filter(record)
    assert (
        record.exc_info is None
        and "canary" not in (record.exc_text or "")
        and "***" in (record.exc_text or "")
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("targets: {a: {type: console, locale: '${LOCALE}'}}\n", "targets.a.locale"),
        (
            "targets: {a: {type: console}}\nroutes: [{owners: ['${ONCALL}'], targets: [a]}]\n",
            "routes.0.owners.0",
        ),
        (
            "targets: {a: {type: console}}\nroutes: [{match: {channel: ['${CH}']}, targets: [a]}]\n",
            "routes.0.match",
        ),
        ("targets: {a: {type: console}}\ndefault_owners: ['${HOME}']\n", "default_owners.0"),
    ],
)
def test_variables_are_expanded_only_in_a_targets_url_and_secret(text: str, where: str) -> None:
    env = {"LOCALE": "canary-en", "ONCALL": "@canary-boss", "CH": "canary-ch", "HOME": "/canary-home"}
    with pytest.raises(RoutesError) as caught:
        parse_routes(text, env)
    message = str(caught.value)
    assert where in message and "only in a target's url or secret" in message
    assert not any(value in message for value in env.values()), "no value is shown"


def test_every_missing_variable_is_named_with_its_field() -> None:
    text = "targets: {a: {type: webhook, url: 'https://h/${HOOK_PATH}', secret: '${HOOK_SECRET}'}}\n"
    with pytest.raises(RoutesError) as caught:
        parse_routes(text, {})
    message = str(caught.value)
    assert "targets.a.url uses ${HOOK_PATH}" in message and "targets.a.secret uses ${HOOK_SECRET}" in message
    assert "not set in the environment" in message
    config = parse_routes(text, {"HOOK_PATH": "p/canary-77", "HOOK_SECRET": "s-canary-77"})
    assert config.spec("a").url == "https://h/p/canary-77" and config.spec("a").secret == "s-canary-77"


def test_action_links_live_a_day_by_default_and_never_more_than_a_week() -> None:
    assert DEFAULT_TTL_S == 86400.0
    links = ActionLinks(KEY, "http://r").for_alert(alert(), now_s=1000.0)
    token = links["snooze"].rsplit("/a/", 1)[1]
    assert verify(token, KEY, now_s=1000.0 + DEFAULT_TTL_S).action == "snooze"
    with pytest.raises(TokenError, match="expired"):
        verify(token, KEY, now_s=1001.0 + DEFAULT_TTL_S)
    with pytest.raises(ValueError, match="at most"):
        ActionLinks(KEY, "http://r", ttl_s=MAX_TTL_S + 1)
    # A token claiming a longer life (another router's setting, an old link) is refused, not honoured.
    lasting = sign(Action("ack", "fp", "id", None, expires_s=2 * MAX_TTL_S), KEY)
    with pytest.raises(TokenError, match="more than any adpulse link"):
        verify(lasting, KEY, now_s=0.0)


def test_a_snooze_from_a_link_is_bounded() -> None:
    with pytest.raises(ValueError, match="at most"):
        ActionLinks(KEY, "http://r", snooze_s=MAX_SNOOZE_S + 1)
    week = sign(Action("snooze", "fp", "id", "t0", expires_s=100.0, snooze_s=7 * 86400.0), KEY)
    assert verify(week, KEY, now_s=0.0).snooze_s == MAX_SNOOZE_S
    for nothing in (0.0, -60.0):
        with pytest.raises(TokenError, match="not valid"):
            verify(sign(Action("snooze", "fp", "id", "t0", expires_s=100.0, snooze_s=nothing), KEY), KEY, 0.0)


FIRST, SECOND = "2026-11-24T10:10:03+08:00", "2026-11-24T11:40:00+08:00"


@pytest.mark.parametrize(
    ("ack", "fired_at", "now_s", "muted"),
    [
        (Ack("@a", "t", FIRST), FIRST, 0.0, True),
        (Ack("@a", "t", FIRST), SECOND, 0.0, False),  # a new episode pages again
        (Ack("@a", "t", FIRST, until=3600.0), FIRST, 3599.0, True),
        (Ack("@a", "t", FIRST, until=3600.0), FIRST, 3600.0, False),  # the snooze is over
        (Ack("@a", "t", FIRST, until=3600.0), SECOND, 60.0, False),  # a snooze does not mute a new episode
        (Ack("@a", "t", None, until=3600.0), SECOND, 60.0, False),  # nor one of an unknown episode
        (Ack("@a", "t", None), None, 0.0, False),
    ],
)
def test_an_ack_or_snooze_holds_for_its_own_episode_only(
    ack: Ack, fired_at: str | None, now_s: float, muted: bool
) -> None:
    assert ack.mutes(alert(fired_at=fired_at, change="repeat"), now_s) is muted
