"""adpulse's series detector against the rolling 3-sigma z-score on NAB's real ad-exchange series.

The Numenta Anomaly Benchmark (github.com/numenta/NAB, MIT licence) ships hourly CPC and CPM series of an
online ad exchange (``data/realAdExchange/exchange-{2,3,4}_{cpc,cpm}_results.csv``) with labelled
anomaly windows (``labels/combined_windows.json``). Its data stays outside this repository: pass the
path of a checkout, or of a bare mirror (read with ``git show``).

Each method runs through ``alerts.backtest.backtest_series`` exactly as ``adpulse backtest`` does; an
alert (one episode of consecutive flagged points) counts as *inside* when its first point lies in a
labelled window (a caught anomaly) and *outside* otherwise (a false alert). Timestamps are read as UTC.

    python benchmarks/backtest_nab.py /path/to/NAB                 # the CPC series
    python benchmarks/backtest_nab.py /path/to/NAB --kpi cpc --kpi cpm
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Imported after the path set-up, so that the script runs from a checkout without installing.
from alerts.backtest import backtest_series, read_series_csv
from alerts.series import RollingZScore, SeasonalShift, SeriesDetector

SERIES = ("exchange-2", "exchange-3", "exchange-4")


class Nab:
    """Files of a NAB checkout (a directory with ``data/``) or of a bare git mirror (``HEAD``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bare = not (path / "data").is_dir() and (path / "HEAD").is_file()
        if not self.bare and not (path / "data").is_dir():
            raise SystemExit(f"{path}: not a NAB checkout (no data/) nor a git mirror (no HEAD)")

    def read(self, name: str) -> str:
        if not self.bare:
            return (self.path / name).read_text(encoding="utf-8")
        return subprocess.run(
            ["git", f"--git-dir={self.path}", "show", f"HEAD:{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def revision(self) -> str:
        git_dir = ["--git-dir", str(self.path)] if self.bare else ["-C", str(self.path)]
        done = subprocess.run(
            ["git", *git_dir, "rev-parse", "HEAD"], check=False, capture_output=True, text=True
        )
        return done.stdout.strip() or "unknown"


@dataclass
class Score:
    inside: int = 0
    outside: int = 0
    caught: int = 0
    windows: int = 0

    def add(self, other: Score) -> None:
        self.inside += other.inside
        self.outside += other.outside
        self.caught += other.caught
        self.windows += other.windows


def _utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def score(nab: Nab, key: str, detector: SeriesDetector, labels: dict[str, list[list[str]]]) -> Score:
    points = read_series_csv(nab.read(f"data/{key}").splitlines(), UTC)
    windows = [(_utc(a), _utc(b)) for a, b in labels[key]]
    result = backtest_series(points, detector, name=key, metric="cpc")
    starts = [alert.ts_s for alert in result.alerts]
    inside = sum(any(a <= t <= b for a, b in windows) for t in starts)
    caught = sum(any(a <= t <= b for t in starts) for a, b in windows)
    return Score(inside, len(starts) - inside, caught, len(windows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nab", type=Path, help="a checkout of numenta/NAB, or its bare git mirror")
    parser.add_argument("--kpi", action="append", choices=("cpc", "cpm"), help="series to run (default: cpc)")
    parser.add_argument(
        "--grid", action="store_true", help="also the robust detector's totals for other min_change × z_min"
    )
    args = parser.parse_args()
    nab = Nab(args.nab)
    labels = json.loads(nab.read("labels/combined_windows.json"))
    methods: dict[str, SeriesDetector] = {
        "adpulse robust seasonal (defaults)": SeasonalShift(),
        "rolling 3-sigma z-score, 24 h": RollingZScore(window=24),
        "rolling 3-sigma z-score, 168 h": RollingZScore(window=168),
    }
    print(f"NAB revision {nab.revision()}")
    for kpi in args.kpi or ["cpc"]:
        keys = [f"realAdExchange/{s}_{kpi}_results.csv" for s in SERIES]
        print(f"\n{kpi.upper()}: alerts inside labelled windows / outside (false) / windows caught\n")
        print("| method | " + " | ".join(key.split("/")[1].split("_")[0] for key in keys) + " | total |")
        print("|---|" + "---|" * (len(keys) + 1))
        for name, detector in methods.items():
            total = Score()
            cells = []
            for key in keys:
                one = score(nab, key, detector, labels)
                total.add(one)
                cells.append(f"{one.inside} / {one.outside} / {one.caught} of {one.windows}")
            cells.append(f"**{total.inside} / {total.outside} / {total.caught} of {total.windows}**")
            print(f"| {name} | " + " | ".join(cells) + " |")
        if args.grid:
            print(f"\nSensitivity of the robust detector ({kpi.upper()} totals: inside / outside / caught)\n")
            print("| min_change | z_min 4 | z_min 5 | z_min 6 |")
            print("|---|---|---|---|")
            for min_change in (0.3, 0.5, 1.0):
                cells = []
                for z_min in (4.0, 5.0, 6.0):
                    total = Score()
                    for key in keys:
                        total.add(score(nab, key, SeasonalShift(min_change=min_change, z_min=z_min), labels))
                    cells.append(f"{total.inside} / {total.outside} / {total.caught} of {total.windows}")
                print(f"| {min_change:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
