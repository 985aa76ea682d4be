"""The dashboards and rules against the real thing: a real Prometheus (the Debian package's server) scrapes a
real worker and a real router on loopback, fed by ``adpulse simulate`` through a real broker (the embedded
Tansu, then Apache Kafka) and Redis, with deploy/prometheus/prometheus.yml (targets pointed at loopback, 1 s
intervals) and its rules loaded. Every dashboard query (variables as Grafana substitutes them) and every
recording rule must return data.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from adpulse.metrics_page import metric_sum
from adpulse.settings import Settings
from adpulse.stack import BROKERS, KAFKA, ensure_topics, free_port
from tests.conftest import own_stack, require_kafka
from tests.deploy.queries import (
    DEPLOY,
    PROMETHEUS_SERIES,
    RULES,
    Query,
    dashboard_queries,
    exported_names,
    is_router_metric,
    metric_names,
    recorded_names,
    rule_queries,
)
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.integration, pytest.mark.kafka]

SIMULATED = ("--scenario", "bad-records", "--scenario", "late-events", "--scenario", "duplicates")


class Prometheus:
    """A real ``prometheus`` server on a loopback port, with its HTTP API."""

    def __init__(self, binary: str, config: dict[str, Any], workdir: Path, port: int) -> None:
        self.binary, self.port, self.workdir = binary, port, workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise AssertionError(f"Prometheus answers {exc.code} to {url}: {text[:300]!r}") from None
        if body["status"] != "success":
            raise AssertionError(f"Prometheus says {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query now: the result vector (a parse or evaluation error raises)."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data["resultType"]
        vector: list[dict[str, Any]] = data["result"]
        return vector

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def prometheus_config(ports: dict[str, int]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with every job pointed at its loopback port, scraping and evaluating
    every second, the same rule files, and no Alertmanager (nor any DNS lookup of compose service names)."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config.pop("alerting")
    assert config["rule_files"] == ["rules/*.yml"]
    config["rule_files"] = [str(RULES / "*.yml")]
    assert {job["job_name"] for job in config["scrape_configs"]} == ports.keys()
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    assert isinstance(config, dict)
    return config


def adpulse(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, with ``settings`` in its environment; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "adpulse", *args],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def finite(result: list[dict[str, Any]]) -> bool:
    """Whether a query result has a sample that is a number (not NaN, as a quantile of no change is)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


@dataclass
class Live:
    settings: Settings
    worker: WorkerProcess
    prometheus: Prometheus
    workdir: Path

    def set_budget_and_wait_for_its_alert(self, channel: str, series: str) -> None:
        """A day budget of 1 for ``channel`` (far below what it spent today), so its alerts fire at once;
        returns when Prometheus has scraped a change of ``series`` (summed) that the alert caused."""

        def total() -> float | None:
            result = self.prometheus.query(f"sum({series})")
            return float(result[0]["value"][1]) if result else None

        before = total()
        adpulse(self.settings, "budget", "set", channel, "1", "--period", "day", "--owner", "@ops")
        try:
            wait_for(
                lambda: total() not in (None, before), 60, f"Prometheus to see the {channel} budget alert"
            )
        except AssertionError:
            raise AssertionError(
                f"{series} stays at {before}; the worker's:\n{self.worker.metrics()}\n"
                f"{self.worker.log_tail()}"
            ) from None


@pytest.fixture(scope="module", params=BROKERS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tool: Callable[[str], str]
) -> Iterator[Live]:
    """A broker (each of the two in turn) and Redis, one worker, Prometheus scraping it, two hours of
    backfill and live traffic with rejected, late and duplicate records, and a budget alert."""
    if request.param == KAFKA:
        require_kafka()
    prometheus_bin = tool("prometheus")
    workdir = tmp_path_factory.mktemp("live")
    ports = _distinct_ports(3)
    job_ports = {"adpulse-worker": ports[0], "adpulse-router": ports[1], "prometheus": ports[2]}
    # own_stack retries on other ports when the broker loses its port race.
    with own_stack(
        workdir / "home",
        web_port=ports[0],
        router_port=ports[1],
        grace_s=5.0,
        idle_partition_s=3.0,
        tick_s=0.5,
        flush_interval_s=0.25,
        broker=request.param,
    ) as (settings, _stack):
        ensure_topics(settings)
        worker = WorkerProcess(settings, workdir / "worker.log").start()
        prometheus = Prometheus(prometheus_bin, prometheus_config(job_ports), workdir, ports[2]).start()
        traffic: subprocess.Popen[bytes] | None = None
        try:
            worker.wait_ready()
            wait_for(prometheus.ready, 30, "Prometheus to be ready")
            adpulse(
                settings,
                "simulate",
                "--start",
                "-2h",
                "--speed",
                "max",
                "--rate",
                "10",
                "--flat",
                "--seed",
                "7",
                "--quiet",
                *SIMULATED,
            )
            with open(workdir / "traffic.log", "ab") as log:
                traffic = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "adpulse",
                        "simulate",
                        "--rate",
                        "100",
                        "--seed",
                        "8",
                        "--quiet",
                        *SIMULATED,
                    ],
                    env={**os.environ, **settings.to_env()},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            state = Live(settings, worker, prometheus, workdir)
            # Caught up with the backfill: alerts from now on are live (their latency is measured).
            wait_for(
                lambda: 0 < metric_sum(worker.metrics(), "adpulse_event_time_lag_seconds") < 30,
                90,
                "the worker to catch up with the backfill",
            )
            # Two budget alerts a few scrapes apart, so that the latency histogram has an increase to show.
            state.set_budget_and_wait_for_its_alert(
                "taobao", 'adpulse_alert_latency_seconds_count{kind="budget"}'
            )
            state.set_budget_and_wait_for_its_alert(
                "jd", 'adpulse_alert_latency_seconds_count{kind="budget"}'
            )
            yield state
        finally:
            if traffic is not None:
                traffic.terminate()
                traffic.wait(timeout=20)
            prometheus.stop()
            worker.stop()


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _returns_data(prometheus: Prometheus, queries: list[Query], timeout_s: float) -> None:
    """Wait until every query returns a sample with a number; fail naming those that never did."""
    waiting = {query.source: query for query in queries}
    last: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for source, query in list(waiting.items()):
            if query.kind == "variable":
                values = prometheus.api(f"label/{query.label()}/values", **{"match[]": query.promql()})
                last[source] = values
                if values:
                    del waiting[source]
                continue
            result = prometheus.query(query.promql())
            last[source] = result
            if finite(result):
                del waiting[source]
        if waiting:
            time.sleep(1.0)
    assert not waiting, "no data from:\n" + "\n".join(
        f"  {source}: {waiting[source].promql()}\n    last result: {last.get(source)}" for source in waiting
    )


def _uses_router(query: Query) -> bool:
    return any(is_router_metric(name) for name in metric_names(query.promql()))


def test_prometheus_scrapes_the_worker_and_evaluates_every_rule_without_error(live: Live) -> None:
    def worker_up() -> bool:
        targets = live.prometheus.api("targets")["activeTargets"]
        return any(t["labels"]["job"] == "adpulse-worker" and t["health"] == "up" for t in targets)

    wait_for(worker_up, 30, "the worker target to be up")
    groups = live.prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules} == {q.source.split(": ", 1)[1] for q in rule_queries()}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_the_worker_exports_every_metric_the_dashboards_and_rules_read(live: Live) -> None:
    exported = exported_names(live.worker.metrics() or "")
    recorded = recorded_names()
    missing = {}
    for query in dashboard_queries() + rule_queries():
        names = metric_names(query.promql()) - recorded - PROMETHEUS_SERIES
        absent = {name for name in names if not is_router_metric(name)} - exported
        if absent:
            missing[query.source] = absent
    assert not missing, f"read but not exported by a running worker: {missing}"


def test_every_worker_dashboard_query_and_recording_rule_returns_data(live: Live) -> None:
    queries = [q for q in dashboard_queries() if not _uses_router(q)]
    queries += [Query(f"recording rule {name}", name, "record") for name in sorted(recorded_names())]
    _returns_data(live.prometheus, queries, timeout_s=60)


class _Hook:
    """A webhook target on loopback that accepts every notification."""

    def __init__(self) -> None:
        self.received = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                hook.received += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet: the router's log tells what was sent."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_router_exports_what_the_pipeline_dashboard_and_rules_read(live: Live) -> None:
    hook = _Hook()
    routes = live.workdir / "routes.yml"
    routes.write_text(
        yaml.safe_dump(
            {
                "targets": {
                    "ops-hook": {
                        "type": "webhook",
                        "url": "${LIVE_HOOK_URL}",
                        "secret": "${LIVE_HOOK_SECRET}",
                    },
                    "log": {"type": "console", "locale": "en"},
                },
                "default_targets": ["ops-hook", "log"],
            }
        )
    )
    env = {**os.environ, **live.settings.to_env(), "LIVE_HOOK_URL": hook.url, "LIVE_HOOK_SECRET": "live-test"}
    with open(live.workdir / "router.log", "ab") as log:
        router = subprocess.Popen(
            [sys.executable, "-m", "adpulse", "router", "--config", str(routes)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    metrics_url = f"http://127.0.0.1:{live.settings.router_port}/metrics"

    def router_metrics() -> str | None:
        assert router.poll() is None, (live.workdir / "router.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as response:
                page: str = response.read().decode()
                return page
        except OSError:
            return None

    try:
        wait_for(router_metrics, 30, "the router's /metrics")
        # New alerts while the router runs, a few scrapes apart: deliveries and their latency to show.
        live.set_budget_and_wait_for_its_alert("wechat", 'adpulse_notifications_total{outcome="sent"}')
        live.set_budget_and_wait_for_its_alert("xiaohongshu", 'adpulse_notifications_total{outcome="sent"}')
        assert hook.received > 0

        exported = exported_names(router_metrics() or "")
        read = {
            name
            for q in dashboard_queries() + rule_queries()
            for name in metric_names(q.promql())
            if is_router_metric(name)
        }
        assert read and read <= exported, f"read but not exported by a running router: {read - exported}"
        queries = [q for q in dashboard_queries() if _uses_router(q)]
        queries.append(Query("router target", 'up{job="adpulse-router"} == 1', "panel"))
        _returns_data(live.prometheus, queries, timeout_s=60)
    finally:
        router.terminate()
        router.wait(timeout=20)
        hook.close()
