"""Every PromQL expression the deploy files hold: Grafana panels, annotations and variables, and the
Prometheus recording and alerting rules; with Grafana's variables substituted and the metric names they read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
RULES = DEPLOY / "prometheus" / "rules"

#: Grafana's own variables the dashboards use, with the values a live test gives them.
BUILTINS = {"__rate_interval": "1m"}
#: Values of the dashboards' variables in the live test: every channel and campaign, the default window.
LIVE_VALUES = {"channel": ".*", "campaign": ".*", "window": "1h"}
#: Series Prometheus makes itself, not exported by any adpulse process.
PROMETHEUS_SERIES = frozenset({"up"})
#: Metric names the router exports (the rest come from the workers).
ROUTER_PREFIXES = ("adpulse_notification", "adpulse_router_", "adpulse_alerts_unacknowledged")

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\s*\)$")


@dataclass(frozen=True)
class Query:
    """One expression: where it is (``source``), its text as written, and what kind of query it is."""

    source: str
    expr: str
    kind: str  # "panel" | "annotation" | "variable" | "record" | "alert"

    def promql(self, values: Mapping[str, str] = LIVE_VALUES) -> str:
        """The expression with Grafana's variables replaced; for a label_values() variable query, its series
        selector."""
        text = substitute(self.expr, values)
        if self.kind == "variable":
            match = _LABEL_VALUES.match(text.strip())
            assert match and match.group(1), f"{self.source}: variables use label_values(selector, label)"
            return match.group(1)
        return text

    def label(self) -> str:
        """The label a label_values() variable query lists."""
        match = _LABEL_VALUES.match(self.expr.strip())
        assert match, self.source
        return match.group(2)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's ``$name``, ``${name}`` and ``[[name]]`` replaced; an unknown variable is an error."""
    known = {**BUILTINS, **values}

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in known:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return known[name]

    return _VARIABLE.sub(replace, expr)


def dashboards() -> dict[str, dict[str, Any]]:
    """The dashboards under deploy/grafana/dashboards by file name."""
    return {path.name: orjson.loads(path.read_bytes()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[Query]:
    """Every query of every dashboard: panel targets, annotations and query variables."""
    found = []
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                found.append(
                    Query(f"{name}: panel {panel['title']!r} {target['refId']}", target["expr"], "panel")
                )
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                found.append(
                    Query(f"{name}: annotation {annotation['name']!r}", annotation["expr"], "annotation")
                )
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]
                text = query["query"] if isinstance(query, dict) else query
                found.append(Query(f"{name}: variable ${variable['name']}", text, "variable"))
    return found


def rule_groups() -> dict[str, list[dict[str, Any]]]:
    """The rules of each rules file under deploy/prometheus/rules, by file name."""
    return {
        path.name: [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
        for path in sorted(RULES.glob("*.yml"))
    }


def rule_queries() -> list[Query]:
    """Every recording and alerting rule's expression."""
    return [
        Query(
            f"{name}: {rule.get('record') or rule.get('alert')}",
            rule["expr"],
            "record" if "record" in rule else "alert",
        )
        for name, rules in rule_groups().items()
        for rule in rules
    ]


def recorded_names() -> set[str]:
    """The series the recording rules write."""
    return {rule["record"] for rules in rule_groups().values() for rule in rules if "record" in rule}


def metric_names(promql: str) -> set[str]:
    """The metric names an expression reads (every vector selector), from a real PromQL parser's AST."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)

    promql_parser.walk(promql_parser.parse(promql), visit)
    return names


def exported_names(exposition: str) -> set[str]:
    """The sample names a /metrics page (Prometheus text format) offers, from its ``# TYPE`` lines, so a
    labelled metric with no sample yet still counts: a histogram's ``_bucket``, ``_sum`` and ``_count``, a
    counter's or gauge's own name (``adpulse_events_total``)."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.update(name + suffix for suffix in suffixes.get(kind.strip(), ("",)))
    return names


def is_router_metric(name: str) -> bool:
    return name.startswith(ROUTER_PREFIXES)
