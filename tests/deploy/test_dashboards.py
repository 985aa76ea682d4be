"""deploy/grafana without a Grafana: the provisioning, the dashboards' structure, every query parsed by the
real Prometheus parser (promtool), and the alerts' dashboard_url landing on the channels dashboard.
test_live.py runs every query against a real Prometheus scraping a real worker and router.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from alerts.payload import Links, dashboard_url
from tests.deploy.queries import (
    DEPLOY,
    ROOT,
    dashboard_queries,
    dashboards,
    panels,
    substitute,
)

pytestmark = pytest.mark.deploy

PROVISIONING = DEPLOY / "grafana" / "provisioning"
DATASOURCE_UID = "prometheus"


def _datasource() -> dict[str, Any]:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert isinstance(source, dict)
    return source


def _board(uid: str) -> dict[str, Any]:
    (board,) = [b for b in dashboards().values() if b["uid"] == uid]
    return board


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def _values(board: dict[str, Any]) -> dict[str, str]:
    """Each variable's default, as Grafana would substitute it (All = the variable's allValue)."""
    values = {}
    for name, variable in _variables(board).items():
        current = variable.get("current", {}).get("value")
        current = current[0] if isinstance(current, list) else current
        values[name] = variable.get("allValue", ".*") if current in (None, "$__all") else current
    return values


def test_the_datasource_is_provisioned_with_the_uid_every_panel_uses() -> None:
    source = _datasource()
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    for name, board in dashboards().items():
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, (
                name,
                panel["title"],
            )
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID, (name, panel["title"])
        for item in [*board["annotations"]["list"], *board["templating"]["list"]]:
            if "expr" in item or item.get("type") == "query":
                assert item["datasource"]["uid"] == DATASOURCE_UID, (name, item["name"])


def test_the_dashboards_are_provisioned_from_the_folder_compose_mounts() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "adpulse.yml").read_text())["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning/datasources:/etc/grafana/provisioning/datasources:ro" in mounts
    assert "./deploy/grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards:ro" in mounts
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/adpulse-channels.json"


def test_each_dashboard_has_its_uid_title_and_a_sound_layout() -> None:
    boards = dashboards()
    assert {(b["uid"], b["title"]) for b in boards.values()} == {
        ("adpulse-channels", "adpulse · channels"),
        ("adpulse-pipeline", "adpulse · pipeline"),
    }
    for name, board in boards.items():
        assert name == f"{board['uid']}.json"
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        taken: set[tuple[int, int]] = set()
        for panel in panels(board):
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, (name, panel["title"])
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & taken, f"{name}: panel {panel['title']!r} overlaps another"
            taken |= cells
            if panel["type"] != "row":
                assert panel["targets"] and panel.get("description"), (name, panel["title"])


def test_every_variable_a_query_uses_is_defined() -> None:
    for query in dashboard_queries():
        board = next(b for n, b in dashboards().items() if query.source.startswith(n))
        substitute(query.expr, _values(board))  # raises on an unknown variable


def test_every_dashboard_query_parses_in_prometheus(tool: Callable[[str], str], tmp_path: Path) -> None:
    """The real parser: every query (variables substituted as Grafana would) as a rule, through promtool."""
    queries = dashboard_queries()
    by_name = {}
    rules = []
    for i, query in enumerate(queries):
        board = next(b for n, b in dashboards().items() if query.source.startswith(n))
        by_name[f"dashboard_query_{i}"] = query.source
        rules.append({"record": f"dashboard_query_{i}", "expr": query.promql(_values(board))})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = result.stdout + result.stderr
    for name, source in by_name.items():
        report = report.replace(f'"{name}"', f"{name} ({source})")
    assert result.returncode == 0, report
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_channels_dashboard_has_a_channel_variable_and_the_targets_as_lines() -> None:
    board = _board("adpulse-channels")
    variables = _variables(board)
    channel = variables["channel"]
    assert channel["query"] == channel["definition"] == "label_values(adpulse_kpi_ratio, channel)"
    assert channel["multi"] and channel["includeAll"] and channel["allValue"] == ".*"
    assert "campaign" in variables and variables["window"]["current"]["value"] in ("1m", "1h", "1d")
    by_title = {panel["title"]: panel for panel in panels(board)}

    def lines(title: str) -> list[float]:
        defaults = by_title[title]["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", title
        return [step["value"] for step in defaults["thresholds"]["steps"] if step["value"] is not None]

    assert lines("CTR per channel ($window windows)") == [0.02]
    assert lines("CVR per channel ($window windows)") == [0.05]
    assert lines("ROI per channel ($window windows)") == [1]
    assert lines("AOV per channel ($window windows)") == [300]
    assert {"CPC per channel ($window windows)", "CPA per channel ($window windows)"} <= by_title.keys()
    assert lines("Spend against budget")[0] == 0.8
    assert any("adpulse_alerts_firing" in t["expr"] for t in by_title["Firing alerts"]["targets"])
    (annotation,) = [a for a in board["annotations"]["list"] if "expr" in a]
    assert "adpulse_alerts_firing" in annotation["expr"] and "$channel" in annotation["expr"]
    for title in ("CTR", "CVR", "ROI", "AOV", "CPC", "CPA"):
        (target,) = by_title[f"{title} per channel ($window windows)"]["targets"]
        assert f'kpi="{title.lower()}"' in target["expr"] and 'channel=~"$channel"' in target["expr"]


def test_the_pipeline_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = " ".join(
        t["expr"] for panel in panels(_board("adpulse-pipeline")) for t in panel.get("targets", [])
    )
    for needed in (
        "adpulse_events_total",
        "adpulse_dlq_records_total",
        'outcome="late"',
        "adpulse_event_time_lag_seconds",
        "adpulse_alert_latency_seconds_bucket",
        "adpulse_notifications_total",
        "sum by (target, outcome)",
        "sum by (topic, outcome)",
    ):
        assert needed in exprs, needed


@pytest.mark.parametrize("campaign", [None, "spring_sale"])
def test_an_alerts_dashboard_url_opens_the_channels_dashboard_on_its_channel_and_time(
    campaign: str | None,
) -> None:
    board = _board("adpulse-channels")
    fired = datetime(2026, 11, 24, 2, 5, tzinfo=UTC)
    url = dashboard_url(
        "douyin",
        campaign,
        "2026-11-24T01:00:00+00:00",
        "2026-11-24T02:00:00+00:00",
        fired,
        None,
        Links(grafana_url="http://grafana.example:3000"),
    )
    assert url is not None
    parts = urlsplit(url)
    assert parts.path == f"/d/{board['uid']}/{board['uid']}"
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    variables = _variables(board)
    for key in params:
        if key.startswith("var-"):
            assert key[4:] in variables, f"dashboard_url sets {key}, which the dashboard does not define"
    assert params["var-channel"] == "douyin"
    assert params.get("var-campaign") == campaign
    start, end = int(params["from"]), int(params["to"])
    assert start < datetime(2026, 11, 24, 1, tzinfo=UTC).timestamp() * 1000 < end
    assert start < datetime(2026, 11, 24, 2, tzinfo=UTC).timestamp() * 1000 < end
