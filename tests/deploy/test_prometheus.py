"""deploy/prometheus and deploy/alertmanager checked by the real tools: promtool check config / check rules /
test rules, amtool check-config and amtool's route tester. The live test (test_live.py) runs the same rules
in a real Prometheus against a real worker and router.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy.queries import DEPLOY, ROOT, metric_names, rule_groups

pytestmark = pytest.mark.deploy

PROMETHEUS = DEPLOY / "prometheus"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_config_and_the_rule_files_it_loads(tool: Callable[[str], str]) -> None:
    result = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    # The config loads every rules file there is: none is left out by its glob.
    loaded = set(re.findall(r"Checking (rules/\S+\.yml)", result.stdout))
    assert loaded == {f"rules/{name}" for name in rule_groups()}, result.stdout


def test_promtool_checks_the_rules(tool: Callable[[str], str]) -> None:
    files = sorted(str(path) for path in (PROMETHEUS / "rules").glob("*.yml"))
    result = run(tool("promtool"), "check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda path: path.name)
def test_promtool_rule_unit_tests_pass(tool: Callable[[str], str], test_file: Path) -> None:
    result = run(tool("promtool"), "test", "rules", test_file.name, cwd=test_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_a_unit_test() -> None:
    tested_alerts: set[str] = set()
    tested_records: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested_alerts.update(
                t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")
            )
            for expr_test in case.get("promql_expr_test", []):
                if expr_test.get("exp_samples"):
                    tested_records.update(metric_names(expr_test["expr"]))
    rules = [rule for rules in rule_groups().values() for rule in rules]
    untested = [
        rule.get("alert") or rule["record"]
        for rule in rules
        if (rule["alert"] not in tested_alerts if "alert" in rule else rule["record"] not in tested_records)
    ]
    assert not untested, f"rules with no promtool test that expects them to fire / return samples: {untested}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of a markdown document."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_says_what_it_is_how_bad_and_where_its_runbook_is() -> None:
    anchors = _anchors(OPERATIONS.read_text())
    alerts = [rule for rules in rule_groups().values() for rule in rules if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {
        "AdpulseWorkerDown",
        "AdpulseNoEvents",
        "AdpulseDLQRatioHigh",
        "AdpulseEventTimeLagHigh",
        "AdpulseRedisUnavailable",
        "AdpulseRouterDown",
        "AdpulseRouterDeliveryFailing",
        "AdpulseCriticalAlertUnacknowledged",
    }
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert alert["labels"]["service"] == "adpulse", name
        assert alert["labels"]["component"] in {"worker", "router", "pipeline"}, name
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys(), name
        url = alert["annotations"]["runbook_url"]
        assert url.startswith("https://github.com/adpulse/adpulse/blob/main/docs/operations.md#"), name
        assert url.split("#", 1)[1] in anchors, f"{name}: no heading for {url} in docs/operations.md"


def test_amtool_checks_the_alertmanager_example(tool: Callable[[str], str]) -> None:
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_each_monitor_alert_by_its_severity(tool: Callable[[str], str]) -> None:
    """Critical alerts page (and reach the ops chat too); warnings and info reach the ops chat only."""
    alerts = [rule for rules in rule_groups().values() for rule in rules if "alert" in rule]
    for alert in alerts:
        labels = [f"alertname={alert['alert']}", *(f"{k}={v}" for k, v in alert["labels"].items())]
        result = run(tool("amtool"), "config", "routes", "test", "--config.file", str(ALERTMANAGER), *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        expected = "ops-pager,ops-slack" if alert["labels"]["severity"] == "critical" else "ops-slack"
        assert result.stdout.strip() == expected, (alert["alert"], result.stdout)


def test_alertmanager_secrets_come_from_files() -> None:
    text = ALERTMANAGER.read_text()
    config = yaml.safe_load(text)
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack and slack["api_url_file"].startswith("/run/secrets/")
        for hook in receiver.get("webhook_configs", []):
            authorization = hook["http_config"]["authorization"]
            assert "credentials" not in authorization and authorization["credentials_file"].startswith(
                "/run/secrets/"
            )
