"""alerts.backtest and ``adpulse backtest``: folding event files, series detectors, episodes, the CLI."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from adpulse.backtest_cli import backtest_cli, sniff_format
from adpulse.settings import Settings
from adpulse.traffic.generator import TrafficGenerator
from adpulse.traffic.scenarios import CtrDrop
from alerts.backtest import (
    backtest_events,
    backtest_series,
    fold_events,
    parse_window,
    read_series_csv,
)
from alerts.detectors import Detectors
from alerts.series import RollingZScore, SeasonalShift, SeriesDetector, SeriesFlag, SeriesPoint
from streams.windows import Calendar

SHANGHAI = ZoneInfo("Asia/Shanghai")
HOUR = 3600
T0 = int(datetime(2026, 3, 2, tzinfo=SHANGHAI).timestamp())  # a Monday, 00:00 in Shanghai

_serial = iter(range(10**9))


def ev(ts_s: float, channel: str = "douyin", **fields: object) -> bytes:
    """One event line; the shape (``type``, ``order_id``, ``cost``) tells the topic."""
    doc = {"event_id": f"e{next(_serial)}", "ts": int(ts_s * 1000), "channel": channel, **fields}
    return orjson.dumps(doc)


def hour_of_traffic(
    start_s: int, channel: str, impressions: int, clicks: int, orders: int, spend: float
) -> list[bytes]:
    """A pre-aggregated hour (trackers may send ``count``), spread over the hour."""
    lines = [ev(start_s + 60, channel, type="impression", count=impressions)]
    if clicks:
        lines.append(ev(start_s + 120, channel, type="click", count=clicks))
    for k in range(orders):
        lines.append(ev(start_s + 180 + k, channel, order_id=f"o{next(_serial)}", amount=300))
    if spend:
        lines.append(ev(start_s + 3599, channel, cost=spend))
    return lines


# -- windows --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m", 60), ("10m", 600), ("15min", 900), ("1h", 3600), ("2h", 7200), ("1d", 86_400)],
)
def test_parse_window(text: str, seconds: int) -> None:
    assert parse_window(text) == (text, seconds)


@pytest.mark.parametrize("text", ["", "1", "0m", "90s", "90m", "1w", "-1h", "25h"])
def test_parse_window_rejects_what_does_not_tile_the_day(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


def test_fold_events_counts_each_event_once_and_every_rejection() -> None:
    calendar = Calendar(SHANGHAI)
    duplicate = ev(T0 + 10, type="click")
    lines = [
        ev(T0 + 5, type="impression", count=1000),
        duplicate,
        duplicate,
        ev(T0 + 20, order_id="o1", amount=199.5),
        ev(T0 + 30, cost=12.25),
        ev(T0 + 40, topic="adpulse.orders", order_id="o2", amount=0.5),  # explicit topic
        ev(T0 + HOUR + 5, "taobao", type="visit"),
        b"not json",
        b"",
        ev(T0 + 50, cost=-1),  # negative money
        orjson.dumps({"event_id": "x", "ts": (T0 + 60) * 1000, "channel": "douyin"}),  # no topic shape
    ]
    folded = fold_events(lines, "1h", calendar)
    assert dict(folded.notes) == {
        "accepted": 6,
        "duplicate": 1,
        "rejected not_json": 1,
        "rejected invalid": 1,
        "rejected unknown_topic": 1,
    }
    rows = folded.observations(calendar)
    assert list(rows) == ["douyin", "taobao"]
    first = rows["douyin"][0]
    assert (first.start_s, first.end_s) == (T0, T0 + HOUR)
    assert first.counts["impressions"] == 1000 and first.counts["clicks"] == 1
    assert first.counts["orders"] == 2 and first.counts["gmv"] == pytest.approx(200.0)
    assert first.counts["spend"] == pytest.approx(12.25)


def test_observations_fill_silent_windows_and_leave_out_the_unfinished_one() -> None:
    calendar = Calendar(SHANGHAI)
    lines = [
        ev(T0 + 1, type="click"),
        ev(T0 + 3 * HOUR + 1, type="click"),
        ev(T0 + 4 * HOUR + 1800, type="click"),
    ]
    rows = fold_events(lines, "1h", calendar).observations(calendar)["douyin"]
    assert [o.start_s - T0 for o in rows] == [0, HOUR, 2 * HOUR, 3 * HOUR]  # 04:00 is still open
    assert [o.counts["clicks"] for o in rows] == [1, 0, 0, 1]
    closing = [*lines, ev(T0 + 5 * HOUR - 0.5, type="click")]  # the file ends in the hour's last second
    assert len(fold_events(closing, "1h", calendar).observations(calendar)["douyin"]) == 5


def test_day_windows_follow_the_zones_midnight() -> None:
    calendar = Calendar(SHANGHAI)
    lines = [
        ev(T0 + 23 * HOUR, type="click"),
        ev(T0 + 25 * HOUR, type="click"),
        ev(T0 + 48 * HOUR, type="click"),
    ]
    rows = fold_events(lines, "1d", calendar).observations(calendar)["douyin"]
    assert [(o.start_s - T0) // HOUR for o in rows] == [0, 24]
    assert [o.counts["clicks"] for o in rows] == [1, 1]


# -- events through the detectors -----------------------------------------------------------------------


def two_days(drop_at: int | None = None, silent: range = range(0)) -> list[bytes]:
    """douyin and taobao, 20k impressions an hour at 2 % CTR; douyin's CTR halves from ``drop_at``."""
    lines: list[bytes] = []
    for h in range(48):
        start = T0 + h * HOUR
        ctr = 0.01 if drop_at is not None and h >= drop_at else 0.02
        lines += hour_of_traffic(start, "douyin", 20_000, int(20_000 * ctr), 0, 0)
        if h not in silent:
            lines += hour_of_traffic(start, "taobao", 20_000, 400, 0, 0)
    return lines


def test_backtest_events_finds_the_ctr_drop_once_and_nothing_else() -> None:
    calendar = Calendar(SHANGHAI)
    observations = fold_events(two_days(drop_at=30), "1h", calendar).observations(calendar)
    result = backtest_events(observations, "1h", Detectors(), SHANGHAI)
    assert [(a.finding.channel, a.finding.metric) for a in result.alerts] == [("douyin", "ctr")]
    alert = result.alerts[0]
    assert alert.timestamp == "2026-03-03T06:00:00+08:00"  # hour 30
    assert alert.windows >= 1
    assert result.judged == 2 * 47  # the file ends two minutes into its last hour: that one is open
    assert result.per_day(SHANGHAI) == {"2026-03-02": 0, "2026-03-03": 1}
    assert "1 alerts over 2 days" in result.summary(SHANGHAI)


def test_backtest_events_reports_an_outage_once_however_long() -> None:
    calendar = Calendar(SHANGHAI)
    observations = fold_events(two_days(silent=range(30, 33)), "1h", calendar).observations(calendar)
    result = backtest_events(observations, "1h", Detectors(), SHANGHAI)
    assert [(a.finding.channel, a.finding.kind, a.windows) for a in result.alerts] == [
        ("taobao", "data_health", 3)
    ]
    assert result.alerts[0].to_json()["last_timestamp"] == "2026-03-03T08:00:00+08:00"
    assert backtest_events(observations, "1h", Detectors(), SHANGHAI, metrics=("ctr",)).alerts == []


# -- series ---------------------------------------------------------------------------------------------


def hourly(values: list[float | None], start_s: int = T0) -> list[SeriesPoint]:
    return [
        SeriesPoint(start_s + i * HOUR, v, datetime.fromtimestamp(start_s + i * HOUR, UTC).isoformat())
        for i, v in enumerate(values)
    ]


def daily_curve_series(days: int, seed: int, noise: float = 0.15) -> list[float]:
    """A CPC-like series: a daily shape ×3 from night to peak, multiplicative noise."""
    rng = np.random.default_rng(seed)
    hours = np.arange(days * 24)
    shape = 0.1 * np.exp(0.55 * np.sin(2 * np.pi * (hours % 24 - 8) / 24))
    return (shape * np.exp(rng.normal(0, noise, size=hours.size))).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_seasonal_shift_is_quiet_on_a_daily_cycle_and_finds_a_spike(seed: int) -> None:
    values = daily_curve_series(14, seed)
    quiet = backtest_series(hourly(values), SeasonalShift())
    assert quiet.alerts == []
    spiked = list(values)
    spiked[24 * 10 + 13] *= 4
    alerts = backtest_series(hourly(spiked), SeasonalShift()).alerts
    assert [a.ts_s - T0 for a in alerts] == [(24 * 10 + 13) * HOUR]
    assert alerts[0].finding.change_pct is not None and alerts[0].finding.change_pct > 200


@pytest.mark.parametrize("seed", range(6))
def test_one_spike_blinds_the_rolling_z_score_but_not_the_seasonal_detector(seed: int) -> None:
    """The comparison in one picture: a spike inflates the rolling standard deviation for a day."""
    values = daily_curve_series(10, seed, noise=0.1)
    first, second = 24 * 8 + 2, 24 * 8 + 9
    values[first] *= 20
    values[second] *= 4
    robust = [(a.ts_s - T0) // HOUR for a in backtest_series(hourly(values), SeasonalShift()).alerts]
    zscore = [(a.ts_s - T0) // HOUR for a in backtest_series(hourly(values), RollingZScore()).alerts]
    assert robust == [first, second]
    assert first in zscore and second not in zscore


def test_seasonal_shift_direction_and_missing_values() -> None:
    values: list[float | None] = list(daily_curve_series(10, 1))
    values[24 * 8 + 3] = values[24 * 8 + 3] / 5  # type: ignore[operator]
    values[24 * 8 + 10] = None
    values[24 * 8 + 11] = 0.0
    points = hourly(values)
    flags = SeasonalShift().scan(points)
    assert [i for i, f in enumerate(flags) if f is not None] == [24 * 8 + 3]
    assert flags[24 * 8 + 3].change < -0.5  # type: ignore[union-attr]
    assert all(f is None for f in SeasonalShift(direction="up").scan(points))
    assert SeasonalShift().scan(hourly([1.0] * 10)) == [None] * 10  # less than a day of history


def test_seasonal_shift_requires_the_change_against_recent_values_too() -> None:
    """After a lasting level shift, the days before stop being the yardstick once recent values agree."""
    values = [0.1] * (24 * 5) + [0.3] * (24 * 3)
    rng = np.random.default_rng(0)
    noisy = (np.array(values) * np.exp(rng.normal(0, 0.05, len(values)))).tolist()
    alerts = backtest_series(hourly(noisy), SeasonalShift()).alerts
    assert len(alerts) == 1 and alerts[0].ts_s == T0 + 24 * 5 * HOUR
    assert alerts[0].windows < 24


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(-1e3, 1e3)), min_size=0, max_size=80),
    st.integers(2, 30),
    st.floats(1.0, 4.0),
)
def test_rolling_z_score_is_the_textbook_rule(values: list[float | None], window: int, sigmas: float) -> None:
    flags = RollingZScore(window=window, sigmas=sigmas).scan(hourly(values))
    seen: list[float] = []
    for value, flag in zip(values, flags, strict=True):
        if value is None:
            assert flag is None
            continue
        expected = False
        if len(seen) >= window:
            recent = np.array(seen[-window:])
            std = recent.std()
            expected = bool(std > 0 and abs(value - recent.mean()) > sigmas * std)
            if expected != (flag is not None):
                assert math.isclose(abs(value - recent.mean()), sigmas * std, rel_tol=1e-9)  # float tie
        else:
            assert flag is None
        seen.append(value)


class _Flags(SeriesDetector):
    """A stub detector flagging chosen points, to test how flags become alerts."""

    def __init__(self, indices: set[int]) -> None:
        self.indices = indices

    def scan(self, points: Sequence[SeriesPoint]) -> list[SeriesFlag | None]:
        flag = SeriesFlag(expected=1.0, z=9.0, change=1.0, evidence={})
        return [flag if i in self.indices else None for i in range(len(points))]


def test_episodes_merge_consecutive_points_only() -> None:
    result = backtest_series(hourly([2.0] * 12), _Flags({5, 6, 8}), name="x", metric="cpc")
    assert [((a.ts_s - T0) // HOUR, a.windows) for a in result.alerts] == [(5, 2), (8, 1)]
    assert result.alerts[0].last_timestamp == hourly([2.0] * 12)[6].timestamp
    assert result.judged == 12


# -- CSV and files --------------------------------------------------------------------------------------


def test_read_series_csv_reads_the_usual_timestamp_shapes() -> None:
    text = [
        "timestamp,value\n",
        "2011-07-01 01:00:01,0.2\n",
        "2011-07-01 00:00:01,0.1\n",
        "2011-07-01T02:00:01Z,null\n",
        "1309489201,0.4\n",
        "1309492801000,0.5\n",
    ]
    points = read_series_csv(text, UTC)
    assert [p.value for p in points] == [0.1, 0.2, None, 0.4, 0.5]
    assert [p.ts_s - points[0].ts_s for p in points] == [0, 3600, 7200, 10800, 14400]
    assert points[0].timestamp == "2011-07-01 00:00:01"
    shanghai = read_series_csv(["2011-07-01 08:00:00,1\n"], SHANGHAI)
    assert shanghai[0].ts_s == int(datetime(2011, 7, 1, tzinfo=UTC).timestamp())


@pytest.mark.parametrize("rows", [["timestamp,value", "yesterday,1"], ["2011-07-01 00:00:01"]])
def test_read_series_csv_names_the_bad_line(rows: list[str]) -> None:
    with pytest.raises(ValueError, match="line"):
        read_series_csv(rows, UTC)


def test_sniff_format(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"\n" + ev(T0, type="click") + b"\n")
    (tmp_path / "b.csv").write_text("timestamp,value\n")
    (tmp_path / "c").write_text("")
    assert sniff_format(tmp_path / "a.jsonl") == "events"
    assert sniff_format(tmp_path / "b.csv") == "series"
    with pytest.raises(ValueError, match="empty"):
        sniff_format(tmp_path / "c")


# -- the command ----------------------------------------------------------------------------------------


def run(*args: str, tz: str = "UTC") -> object:
    return CliRunner().invoke(backtest_cli, list(args), obj=Settings(tz=tz))


def test_cli_prints_series_alerts_as_jsonl_with_the_rows_timestamp(tmp_path: Path) -> None:
    values = daily_curve_series(12, 3)
    values[24 * 9 + 5] *= 6
    points = hourly(values)
    csv_file = tmp_path / "exchange_cpc.csv"
    csv_file.write_text("timestamp,value\n" + "".join(f"{p.timestamp},{p.value}\n" for p in points))
    result = run(str(csv_file), "--json", "--metric", "cpc")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]  # type: ignore[attr-defined]
    assert [line["timestamp"] for line in lines] == [points[24 * 9 + 5].timestamp]
    assert lines[0]["metric"] == "cpc" and lines[0]["channel"] == "exchange_cpc"
    assert lines[0]["evidence"]["method"] == "robust"
    assert "1 alerts over 13 days" in result.stderr  # 12 × 24 h from 16:00 UTC touch 13 dates
    zscore = run(str(csv_file), "--method", "zscore", "--z-window", "24")
    assert zscore.exit_code == 0  # type: ignore[attr-defined]
    assert "alerts over 13 days" in zscore.stdout  # type: ignore[attr-defined]


def test_cli_replays_events(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(two_days(drop_at=30)) + b"\n")
    result = run(str(events), "--window", "1h", tz="Asia/Shanghai")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    out = result.stdout  # type: ignore[attr-defined]
    assert "2026-03-03T06:00:00+08:00  warning  anomaly/ctr douyin: CTR fell 50 %" in out
    assert "1 alerts over 2 days" in out and "input: accepted" in out
    as_json = run(str(events), "--json", "--metric", "cvr", "--window", "1h", tz="Asia/Shanghai")
    assert as_json.exit_code == 0 and as_json.stdout == ""  # type: ignore[attr-defined]
    zscore = run(str(events), "--method", "zscore", "--metric", "ctr", tz="Asia/Shanghai")
    assert zscore.exit_code == 0 and ", zscore)" in zscore.stdout  # type: ignore[attr-defined]


def test_cli_replays_events_through_the_worker_judge_by_default(tmp_path: Path) -> None:
    """Without --window the file goes minute by minute through the worker's own judge and lifecycle: the
    alerts are the alert JSON the worker would have written, a fired and a resolved one per episode."""
    start_ms = T0 * 1000
    generator = TrafficGenerator(
        seed=3,
        daily_curve=False,
        zone=ZoneInfo("Asia/Shanghai"),
        scenarios=[CtrDrop(channel="douyin", at_s=3 * HOUR, for_s=1800, factor=0.2)],
    )
    events = tmp_path / "events.jsonl"
    with events.open("wb") as out:
        for topic, _key, value, _sent, _partition in generator.records(
            start_ms, start_ms + 5 * HOUR * 1000, 3.0
        ):
            out.write(orjson.dumps({**orjson.loads(value), "topic": topic}) + b"\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    result = CliRunner().invoke(
        backtest_cli, [str(events), "--json"], obj=Settings(tz="Asia/Shanghai", rules_file=rules)
    )
    assert result.exit_code == 0, result.output
    alerts = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(a["change"], a["kind"], a["metric"], a["channel"]) for a in alerts] == [
        ("fired", "anomaly", "ctr", "douyin"),
        ("resolved", "anomaly", "ctr", "douyin"),
    ]
    fired, resolved = alerts
    assert fired["fingerprint"] == resolved["fingerprint"] and fired["fired_at"] == resolved["fired_at"]
    assert T0 + 3 * HOUR < datetime.fromisoformat(fired["fired_at"]).timestamp() < T0 + 3 * HOUR + 1800
    assert datetime.fromisoformat(resolved["resolved_at"]).timestamp() > T0 + 3 * HOUR + 1800
    assert resolved["duration_s"] > 0 and "sequential" in fired["evidence"]["test"]
    assert "1 alerts fired, 1 resolved, over 300 minutes" in result.stderr
    text = CliRunner().invoke(backtest_cli, [str(events)], obj=Settings(tz="Asia/Shanghai", rules_file=rules))
    assert "anomaly/ctr douyin: CTR fell" in text.stdout and "+08:00  fired" in text.stdout
    refused = CliRunner().invoke(backtest_cli, [str(events), "--min-change", "0.3"], obj=Settings(tz="UTC"))
    assert refused.exit_code == 2 and "--window or a CSV" in refused.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "aov"], "aov"),
        (["--window", "7s"], "window"),
    ],
)
def test_cli_explains_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(ev(T0, type="click") + b"\n")
    result = run(str(events), *args)
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert message in result.output  # type: ignore[attr-defined]


def test_cli_names_a_broken_csv_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_text("timestamp,value\n2011-07-01 00:00:01,1\nsoon,2\n")
    result = run(str(broken))
    assert result.exit_code == 1 and "line 3" in result.output  # type: ignore[attr-defined]
