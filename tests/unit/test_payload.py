"""alerts.payload.build_alert: the CONTRACT.md §3 alert JSON, links into the runbook and Grafana."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from alerts.lifecycle import AlertBook, Policy
from alerts.model import Finding, Kind
from alerts.payload import AlertJson, Links, build_alert
from alerts.wording import format_value

T0 = datetime(2026, 11, 24, 2, 5, tzinfo=UTC)
RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
CONTRACT_FIELDS = {
    "id",
    "fingerprint",
    "status",
    "kind",
    "severity",
    "metric",
    "channel",
    "campaign",
    "region",
    "window_start",
    "window_end",
    "value",
    "baseline",
    "threshold",
    "change_pct",
    "evidence",
    "summary",
    "description",
    "owner",
    "runbook_url",
    "dashboard_url",
    "fired_at",
    "resolved_at",
}


def ctr_drop(campaign: str | None = None, **changes: object) -> Finding:
    fields: dict[str, object] = {
        "kind": "anomaly",
        "metric": "ctr",
        "severity": "critical",
        "channel": "douyin",
        "campaign": campaign,
        "value": 0.011,
        "summary": "douyin CTR dropped 52 % (2.30 % → 1.10 %)",
        "description": "CTR of the 1-minute window is 52 % below its baseline.",
        "baseline": 0.023,
        "change_pct": -52.2,
        "evidence": {"clicks": 110, "impressions": 10_000, "p_value": 1e-9, "region": "east"},
        "window": "1m",
        "window_start": "2026-11-24T10:03:00+08:00",
        "window_end": "2026-11-24T10:04:00+08:00",
    }
    fields.update(changes)
    return Finding(**fields)  # type: ignore[arg-type]


def fired(finding: Finding) -> AlertJson:
    [alert] = AlertBook().evaluate([finding], [], T0)
    return build_alert(
        alert,
        Links(
            runbook_base="https://git.example/adpulse/docs/runbook.md", grafana_url="https://grafana.example/"
        ),
    )


def test_firing_payload_has_every_contract_field() -> None:
    payload = fired(ctr_drop())
    assert payload.keys() >= CONTRACT_FIELDS
    assert payload.keys() == AlertJson.__required_keys__  # the type says what the JSON holds
    assert payload["status"] == "firing" and payload["change"] == "fired"
    assert payload["fingerprint"] == "anomaly:ctr:douyin:-"
    assert payload["campaign"] is None and payload["region"] == "east"
    assert (payload["value"], payload["baseline"], payload["change_pct"]) == (0.011, 0.023, -52.2)
    assert payload["evidence"]["p_value"] == 1e-9
    assert payload["summary"] == "douyin CTR dropped 52 % (2.30 % → 1.10 %)"
    assert payload["fired_at"] == "2026-11-24T02:05:00+00:00" and payload["resolved_at"] is None
    assert payload["owner"] is None
    assert payload["runbook_url"] == "https://git.example/adpulse/docs/runbook.md#anomaly"
    assert orjson.loads(orjson.dumps(payload)) == payload


def test_dashboard_url_filters_the_channel_around_the_window() -> None:
    url = urlsplit(str(fired(ctr_drop(campaign="c-1"))["dashboard_url"]))
    assert (
        f"{url.scheme}://{url.netloc}{url.path}"
        == "https://grafana.example/d/adpulse-channels/adpulse-channels"
    )
    query = parse_qs(url.query)
    assert query["var-channel"] == ["douyin"] and query["var-campaign"] == ["c-1"]
    start = datetime.fromisoformat("2026-11-24T10:03:00+08:00").timestamp() * 1000
    end = datetime.fromisoformat("2026-11-24T10:04:00+08:00").timestamp() * 1000
    # A 1-minute window is padded by 15 minutes: 45 minutes before, 15 after.
    assert int(query["from"][0]) == start - 45 * 60_000
    assert int(query["to"][0]) == end + 15 * 60_000


def test_no_grafana_no_dashboard_url() -> None:
    [alert] = AlertBook().evaluate([ctr_drop()], [], T0)
    assert build_alert(alert, Links(grafana_url=None))["dashboard_url"] is None


def test_campaign_dash_means_channel_level() -> None:
    assert fired(ctr_drop(campaign="-"))["campaign"] is None
    assert fired(ctr_drop(campaign="spring"))["campaign"] == "spring"


def test_owner_from_argument_or_evidence() -> None:
    finding = ctr_drop(evidence={"owner": "@zhang.wei"})
    [alert] = AlertBook().evaluate([finding], [], T0)
    assert build_alert(alert)["owner"] == "@zhang.wei"
    assert build_alert(alert, owner="@li.na")["owner"] == "@li.na"


def test_resolved_payload_says_what_it_recovered_to() -> None:
    book = AlertBook(Policy(resolve_after=1))
    book.evaluate([ctr_drop()], [], T0)
    [alert] = book.evaluate([], {ctr_drop().fingerprint: 0.0225}, T0 + timedelta(minutes=3))
    payload = build_alert(alert)
    assert payload["status"] == "resolved" and payload["change"] == "resolved"
    assert payload["value"] == 0.0225
    assert payload["evidence"]["last_firing_value"] == 0.011
    assert "2.25 %" in payload["summary"] and "douyin" in payload["summary"]
    assert "\n" not in payload["summary"]
    assert payload["fired_at"] == "2026-11-24T02:05:00+00:00"
    assert payload["resolved_at"] == "2026-11-24T02:08:00+00:00"
    assert payload["id"] != build_alert(AlertBook().evaluate([ctr_drop()], [], T0)[0])["id"]


def test_escalation_and_repeat_are_marked_in_the_summary() -> None:
    book = AlertBook(Policy(repeat_interval_s=60))
    book.evaluate([ctr_drop(severity="warning")], [], T0)
    [escalated] = book.evaluate([ctr_drop()], [], T0 + timedelta(minutes=1))
    [repeat] = book.evaluate([ctr_drop()], [], T0 + timedelta(minutes=2))
    assert build_alert(escalated)["summary"].startswith("ESCALATED to critical")
    assert build_alert(escalated)["severity"] == "critical"
    assert "still firing since" in build_alert(repeat)["summary"]


def test_the_payload_says_how_long_the_episode_lasted_and_a_refire_is_the_same_episode() -> None:
    book = AlertBook(Policy(resolve_after=1))
    [first] = book.evaluate([ctr_drop()], [], T0)
    [resolved] = book.evaluate([], {ctr_drop().fingerprint: 0.0225}, T0 + timedelta(minutes=40))
    [again] = book.evaluate([ctr_drop()], [], T0 + timedelta(minutes=55))
    payloads = [build_alert(a) for a in (first, resolved, again)]
    assert [p["duration_s"] for p in payloads] == [0.0, 40 * 60.0, 55 * 60.0]
    assert [p["reopened"] for p in payloads] == [0, 0, 1]
    assert payloads[2]["fired_at"] == payloads[0]["fired_at"] == "2026-11-24T02:05:00+00:00"
    assert "40 min" in payloads[1]["description"]
    assert "again: one episode since 2026-11-24T02:05+00:00, 55 min" in payloads[2]["summary"]
    assert len({p["id"] for p in payloads}) == 3


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        ("ctr", 0.0123, "1.23 %"),
        ("roi", 0.84, "0.84"),
        ("spend", 12345.0, "12,345"),
        ("aov", 299.5, "299.50"),
        ("cvr", None, "no data"),
    ],
)
def test_format_value(metric: str, value: float | None, text: str) -> None:
    assert format_value(metric, value) == text


def _anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the level-2 headings."""
    return {
        re.sub(r"[^\w\- ]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in markdown.splitlines()
        if line.startswith("## ")
    }


@pytest.mark.parametrize("kind", get_args(Kind))
def test_every_kind_has_a_runbook_section(kind: str) -> None:
    finding = ctr_drop(kind=kind)
    anchor = str(fired(finding)["runbook_url"]).split("#", 1)[1]
    assert anchor in _anchors(RUNBOOK.read_text(encoding="utf-8"))
