"""The CLI as a user runs it: simulate a backfill with bad, duplicate and late records, run a worker,
read every closed 1-minute window back with ``adpulse kpis --json --since`` and compare with the
simulator's ground truth.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from adpulse.cli import cli
from adpulse.settings import Settings
from adpulse.stack import free_port
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FIELDS = ("impressions", "clicks", "visits", "carts", "orders", "gmv", "spend")
CONTRACT_KEYS = {
    "channel",
    "campaign",
    "window",
    "window_start",
    "window_end",
    "complete",
    "impressions",
    "clicks",
    "visits",
    "carts",
    "orders",
    "gmv",
    "spend",
    "ctr",
    "cvr",
    "roi",
    "aov",
    "cpc",
    "cpa",
}


def adpulse(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "adpulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _closed_minutes(settings: Settings) -> dict[tuple[str, str, int], dict[str, Any]]:
    result = adpulse(settings, "kpis", "--json", "--window", "1m", "--since", "-40m")
    assert result.returncode == 0, result.stderr
    rows = orjson.loads(result.stdout)
    return {
        (r["channel"], r["campaign"], int(datetime.fromisoformat(r["window_start"]).timestamp() * 1000)): r
        for r in rows
        if r["complete"]
    }


def _differences(truth: dict[str, Any], got: dict[tuple[str, str, int], dict[str, Any]]) -> list[str]:
    problems = []
    for cell in truth["minutes"]:
        row = got.get((cell["channel"], cell["campaign"], cell["window_start_ms"]))
        if row is None:
            problems.append(f"missing {cell['channel']}/{cell['campaign']} {cell['window_start']}")
            continue
        for name in FIELDS:
            if round(row[name] * 100) != round(cell[name] * 100):
                problems.append(
                    f"{cell['channel']}/{cell['campaign']} {cell['window_start']} {name}: "
                    f"{row[name]} != {cell[name]}"
                )
    return problems


@pytest.mark.kafka
def test_simulated_backfill_reads_back_exactly_through_the_cli(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        grace_s=30.0,
        idle_partition_s=3.0,
        tick_s=0.5,
        flush_interval_s=0.3,
        web_port=free_port(),
        home=tmp_path / "home",
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        truth_path = tmp_path / "truth.json"
        sim = adpulse(
            settings,
            "simulate",
            "--start",
            "-25m",
            "--duration",
            "10m",
            "--speed",
            "max",
            "--rate",
            "60",
            "--flat",
            "--seed",
            "11",
            "--scenario",
            "bad-records",
            "--scenario",
            "duplicates",
            "--scenario",
            "late-events",
            "--truth",
            str(truth_path),
            "--quiet",
        )
        assert sim.returncode == 0, sim.stderr
        truth = orjson.loads(truth_path.read_bytes())
        assert sum(t["invalid"] for t in truth["records"].values()) > 0
        assert sum(t["duplicate"] for t in truth["records"].values()) > 0

        last: list[str] = ["nothing read yet"]

        def matches() -> bool:
            nonlocal last
            assert worker.alive(), worker.log_tail()
            last = _differences(truth, _closed_minutes(settings))
            return not last

        try:
            wait_for(matches, 120, "every simulated minute to read back exactly", interval_s=2.0)
        except AssertionError:
            raise AssertionError("\n".join(last[:20]) + "\n" + worker.log_tail()) from None

        rows = orjson.loads(adpulse(settings, "kpis", "--json").stdout)
        assert rows and all(row.keys() >= CONTRACT_KEYS for row in rows)
        assert {row["window"] for row in rows} == {"1m", "1h", "1d"}
        table = adpulse(settings, "kpis", "--window", "1h")
        assert table.returncode == 0 and "CTR" in table.stdout
    finally:
        worker.stop()


def test_help_is_there_for_every_command() -> None:
    for command in (
        [],
        ["worker"],
        ["kpis"],
        ["simulate"],
        ["demo"],
        ["stack"],
        ["stack", "up"],
        ["router"],
        ["alerts"],
        ["alerts", "ack"],
        ["alerts", "snooze"],
        ["report"],
        ["report", "daily"],
        ["report", "weekly"],
        ["schema"],
        ["validate"],
        ["dlq"],
    ):
        # In process (a Python start per command took ~9 s in all); the entry point itself is run below.
        result = CliRunner().invoke(cli, [*command, "--help"], prog_name="adpulse")
        assert result.exit_code == 0, (command, result.output)
        assert "Usage: adpulse" in result.stdout, command
    started = subprocess.run(
        [sys.executable, "-m", "adpulse", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert started.returncode == 0, started.stderr
    assert "Usage: adpulse" in started.stdout


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "ADPULSE_TZ": "Mars/Olympus", "ADPULSE_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "adpulse", "kpis"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "ADPULSE_TZ" in result.stderr and "IANA" in result.stderr


def test_a_wrong_routes_file_is_a_clear_error_that_shows_no_secret(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yml"
    routes.write_text(
        "targets:\n  team: {type: feishu, url: '${TEAM_URL}', secret: '${TEAM_SECRET}'}\n"
        "routes:\n  - {targets: [team, nobody]}\n"
    )
    env = {
        **os.environ,
        "ADPULSE_HOME": str(tmp_path),
        "TEAM_URL": "https://hook/canary-url-4242",
        "TEAM_SECRET": "canary-secret-4242",
    }
    result = subprocess.run(
        [sys.executable, "-m", "adpulse", "router", "--config", str(routes), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "unknown target" in result.stderr and "'nobody'" in result.stderr
    assert "canary" not in result.stderr + result.stdout
    del env["TEAM_SECRET"]
    result = subprocess.run(
        [sys.executable, "-m", "adpulse", "router", "--config", str(routes), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "TEAM_SECRET" in result.stderr and "canary" not in result.stderr
