"""Alert quality of the worker's own judge on simulated channels: what it catches, how fast, how often it
pages for nothing, whether it flaps; against a rolling 3-sigma z-score scored the same way.

Every simulated channel goes minute by minute through ``agents.replay.replay``: the worker's Evaluator
(sequential judge, rolling outage and spend detectors, lifecycle) and its data-health screen, exactly as it
judges after a backfill.

Traffic (per channel: three campaigns with 50/30/20 % of the volume):

- impressions per minute Poisson around ``--volumes`` impressions an hour, on a daily curve (±50 %);
- a nested funnel: clicks ~ Bin(impressions, 2.5 %), visits ~ Bin(clicks, 80 %), carts ~ Bin(visits,
  25 %), orders ~ Bin(carts, 25 %) (CVR 5 %); baskets of 300 on average (CV 0.66), CPC 0.6 (CV 0.2);
- over-dispersion: every campaign's CTR and each funnel stage move hour to hour beyond binomial noise
  (lognormal multipliers, σ 8 % for CTR and 6 % for the stages, drawn anew every hour);
- stationary weeks: two 20-minute tracker outages each (no click-tracker events at all);
- drop runs: a day of history, then drops of the whole channel (every campaign) of ``--drops`` (30/50/70 %)
  lasting ``--durations`` (20/40/90 min) on CTR, CVR (orders per cart) or the funnel (carts per visit),
  four per simulated day, six hours apart.

Scoring, the same for both methods:

- *caught*: the dropped KPI alerted (channel or campaign level) between the drop's start and 10 minutes
  after its end; *delay*: minutes from the start to that alert;
- *false alerts*: anomaly alerts on stationary weeks (outside the outages' hour), and data-health alerts
  outside outages, per channel-week;
- *flaps*: an alert that fired during a drop resolved while the drop still went on (then fired again or
  not); for the z-score, a second episode of the dropped KPI during one drop.

The z-score baseline judges each channel's CTR, CVR, ROI and funnel stages on 10-minute windows against
the previous 24 windows (``alerts.backtest.RollingZScore``, |x − mean| > 3 σ), counting drops only.

The attainable limit (``limit``): for each drop, an oracle that knows the baseline rate, the hour-to-hour
wobble and the minute the drop began tests the dropped KPI's counts pooled since then (beta-binomial:
binomial counts plus the wobble's variance, at the expected volume of each campaign and clock hour), at
the level one false page per channel-week allows were it to test disjoint windows as long as the drop on
every KPI of the channel and of each campaign (α = minutes / (10,080 × 24)). *attainable* is its expected
number of catches (the chance its test on the whole drop fires, summed) and the median of the minutes at
which that chance reaches 50 %; *expected* the numerator events the drop's minutes hold at the baseline
(clicks for CTR, orders for CVR, carts for the funnel), the drop's z-score over its whole length and the
z-score the level needs. The oracle's level is lenient (a judge that does not know when a drop begins
scans overlapping windows of every length, and must be stricter), so what it misses is beyond any judge
at that false-alarm rate; a judge may still beat it on a drop whose counts happened to fall deeper than
expected.

    python benchmarks/alert_quality.py                 # the full grid (~15 min on one core)
    python benchmarks/alert_quality.py --quick         # fewer seeds, for a quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO)]

from prometheus_client import CollectorRegistry  # noqa: E402

from agents.evaluate import EvaluationConfig, Evaluator  # noqa: E402
from agents.health import HealthConfig, HealthMonitor  # noqa: E402
from agents.replay import MemoryBuckets, replay  # noqa: E402
from alerts.budgets import BudgetBook  # noqa: E402
from alerts.kpi import RATIOS  # noqa: E402
from alerts.payload import AlertJson  # noqa: E402
from alerts.rules import RulesConfig  # noqa: E402
from alerts.sequential import SequentialConfig, Source, Verdict  # noqa: E402
from alerts.series import RollingZScore, SeriesPoint  # noqa: E402
from streams.codec import SLOT_NAMES  # noqa: E402
from streams.events import MICROS  # noqa: E402
from streams.redis_client import AsyncRedis  # noqa: E402
from streams.windows import Calendar  # noqa: E402

BEGIN = "<!-- benchmarks/alert_quality.py: begin (generated; rerun the script to refresh) -->"
END = "<!-- benchmarks/alert_quality.py: end -->"
ZONE = ZoneInfo("UTC")
ORIGIN_S = 1_780_000_000 - 1_780_000_000 % 86_400  # a midnight
DAY_MIN = 1440
WEEK_MIN = 7 * DAY_MIN
CHANNEL = "bench"
CAMPAIGNS = (("spring", 0.5), ("brand", 0.3), ("retarget", 0.2))
CTR, VISIT, CART, ORDER = 0.025, 0.8, 0.25, 0.25
TARGETS = {"ctr": "ctr", "cvr": "cvr", "funnel": "funnel_cart"}
WOBBLE = {"ctr": 0.08, "stage": 0.06}
Z_METRICS = ("ctr", "cvr", "roi", "funnel_visit", "funnel_cart", "funnel_order")
GRACE_MIN = 10


@dataclass(frozen=True)
class Drop:
    """A drop of the whole channel: ``kind`` (ctr | cvr | funnel) by ``size``, from minute ``start`` on."""

    kind: str
    size: float
    start: int  # minute index
    minutes: int


@dataclass(frozen=True)
class Outage:
    start: int
    minutes: int


def traffic(
    rng: np.random.Generator,
    per_hour: float,
    minutes: int,
    drops: Iterable[Drop] = (),
    outages: Iterable[Outage] = (),
    wobble: float = 1.0,
) -> dict[str, np.ndarray]:
    """Counter vectors per minute (rows) for each campaign, in the worker's slot order, money in micros."""
    hour_of_day = (np.arange(minutes) / 60.0) % 24
    level = 1.0 + 0.5 * np.sin(2 * math.pi * (hour_of_day - 9) / 24)
    hours = minutes // 60 + 1
    factors = {kind: np.ones(minutes) for kind in TARGETS}
    for drop in drops:
        factors[drop.kind][drop.start : drop.start + drop.minutes] *= 1.0 - drop.size
    silent = np.zeros(minutes, dtype=bool)
    for outage in outages:
        silent[outage.start : outage.start + outage.minutes] = True
    out = {}
    for campaign, share in CAMPAIGNS:

        def hourly(sigma: float) -> np.ndarray:
            spread = sigma * wobble
            return np.repeat(rng.lognormal(-(spread**2) / 2, spread, hours), 60)[:minutes]

        impressions = rng.poisson(per_hour / 60 * share * level)
        clicks = rng.binomial(impressions, np.clip(CTR * hourly(WOBBLE["ctr"]) * factors["ctr"], 0, 1))
        visits = rng.binomial(clicks, np.clip(VISIT * hourly(WOBBLE["stage"]), 0, 1))
        carts = rng.binomial(visits, np.clip(CART * hourly(WOBBLE["stage"]) * factors["funnel"], 0, 1))
        orders = rng.binomial(carts, np.clip(ORDER * hourly(WOBBLE["stage"]) * factors["cvr"], 0, 1))
        gmv = _sum_of(rng, orders, 300.0, 0.66)
        spend = _sum_of(rng, clicks, 0.6, 0.2)
        tracker = ~silent
        columns = {
            "impressions": impressions * tracker,
            "clicks": clicks * tracker,
            "visits": visits * tracker,
            "carts": carts * tracker,
            "orders": orders,
            "gmv": np.round(gmv * MICROS),
            "spend": np.round(spend * MICROS),
            "new_customers": orders // 3,
        }
        out[campaign] = np.stack([columns[name] for name in SLOT_NAMES], axis=1).astype(np.int64)
    return out


def _sum_of(rng: np.random.Generator, counts: np.ndarray, mean: float, cv: float) -> np.ndarray:
    """The sum of ``counts`` amounts of mean ``mean`` and variation ``cv``: a gamma with the same moments."""
    shape = np.maximum(counts, 1) / cv**2
    return np.where(counts > 0, rng.gamma(shape, mean * cv**2), 0.0)


def judge_of(config: SequentialConfig | None) -> Evaluator:
    """The worker's judge, offline; no threshold rules (a target missed is not an anomaly)."""
    return Evaluator(
        EvaluationConfig(rules=RulesConfig(rules=()), sequential=config or SequentialConfig()),
        sink=None,
        redis=None,
        redis_prefix="bench",
        calendar=Calendar(ZONE),
        budgets=BudgetBook(),
        max_channels=10,
        registry=CollectorRegistry(),
    )


@dataclass
class Run:
    """What one simulated channel produced: the worker's alerts, the z-score's, and the time it took (the
    worker's whole judge, and its sequential judge alone)."""

    alerts: list[AlertJson]
    zscore: list[tuple[int, str]]  # (minute the flagged window ended, metric)
    seconds: float
    minutes: int
    sequential_s: float = 0.0


def simulate(
    rng: np.random.Generator,
    per_hour: float,
    minutes: int,
    drops: Iterable[Drop] = (),
    outages: Iterable[Outage] = (),
    config: SequentialConfig | None = None,
    wobble: float = 1.0,
) -> Run:
    counts = traffic(rng, per_hour, minutes, drops, outages, wobble)
    buckets = MemoryBuckets(Calendar(ZONE))
    for campaign, rows in counts.items():
        for minute, vector in enumerate(rows):
            buckets.add_minute(CHANNEL, campaign, ORIGIN_S + minute * 60, vector)
    judge = judge_of(config)
    spent = [0.0]
    sequential = judge.sequential
    if sequential is not None:
        judged = sequential.minute

        def timed(channel: str, start_s: int, minutes: Source, hours: Source) -> Verdict:
            began = time.perf_counter()
            try:
                return judged(channel, start_s, minutes, hours)
            finally:
                spent[0] += time.perf_counter() - began

        sequential.minute = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    screen = HealthMonitor(HealthConfig(), cast(AsyncRedis, None), "bench", Calendar(ZONE))
    alerts = replay(judge, buckets, screen=screen, until_s=ORIGIN_S + minutes * 60)
    seconds = time.perf_counter() - started
    return Run(alerts, zscore_flags(counts, minutes), seconds, minutes, spent[0])


def zscore_flags(counts: dict[str, np.ndarray], minutes: int) -> list[tuple[int, str]]:
    """Drops the rolling 3-sigma z-score flags on the channel's 10-minute windows: (end minute, metric)."""
    whole: np.ndarray = np.sum(np.stack(list(counts.values())), axis=0)
    slot = {name: i for i, name in enumerate(SLOT_NAMES)}
    windows = whole[: minutes - minutes % 10].reshape(-1, 10, whole.shape[1]).sum(axis=1)
    flags = []
    for metric in Z_METRICS:
        numerator, denominator = RATIOS[metric]
        values = [
            SeriesPoint(
                i * 600, (w[slot[numerator]] / w[slot[denominator]]) if w[slot[denominator]] else None, ""
            )
            for i, w in enumerate(windows)
        ]
        episode = False
        for i, flag in enumerate(RollingZScore(window=24, sigmas=3.0).scan(values)):
            down = flag is not None and flag.z < 0
            if down and not episode:
                flags.append(((i + 1) * 10, metric))
            episode = down
    return flags


# -- the attainable limit ---------------------------------------------------------------------------------

#: Per target KPI: its denominator per impression, its baseline rate, and the variance of the hour-to-hour
#: multiplier of the rate (the product of the simulated stages' lognormal multipliers).
ORACLE_KPIS = {
    "ctr": (1.0, CTR, math.expm1(WOBBLE["ctr"] ** 2)),
    "cvr": (CTR, VISIT * CART * ORDER, math.expm1(3 * WOBBLE["stage"] ** 2)),
    "funnel": (CTR * VISIT, CART, math.expm1(WOBBLE["stage"] ** 2)),
}
#: What one false page a channel-week buys: every KPI the judge watches, on the channel and each campaign.
JUDGED_SERIES = len(Z_METRICS) * (1 + len(CAMPAIGNS))


@dataclass(frozen=True)
class Limit:
    """What an oracle could do with one drop (``limit``)."""

    power: float  # the chance its test on the whole drop's pooled counts fires
    delay: int | None  # the first minute of the drop at which that chance reaches 50 % (None: never)
    expected: float  # numerator events expected over the whole drop at the baseline rate
    z: float  # the drop's expected z-score over its whole length (hour-to-hour wobble included)
    z_needed: float  # the z-score the false-alarm budget requires of a window that long


def limit(per_hour: float, drop: Drop) -> Limit:
    """The best any judge could do with ``drop``: an oracle that knows the baseline rate, the hour-to-hour
    wobble and the minute the drop began, and tests the counts pooled since then.

    Its test is the most powerful one-sided test of those counts (their likelihood ratio falls with the
    count): beta-binomial, the binomial counts with the wobble's extra variance, at the expected volume of
    each campaign and clock hour. Its level is what one false page per channel-week allows, were it to
    test disjoint windows as long as the drop on every KPI of the channel and of each campaign: α =
    minutes / (a week's minutes × ``JUDGED_SERIES``). That is lenient (a monitor that does not know when a
    drop begins tests overlapping windows of every length, and pays for it with a stricter level), so
    what this oracle misses, no judge can catch at that false-alarm rate.
    """
    per_impression, p0, wobble = ORACLE_KPIS[drop.kind]

    def moments(minutes: int) -> tuple[int, float]:
        """The pooled denominator and Σ n² over (campaign, clock hour) pieces of the drop's first minutes."""
        at = np.arange(drop.start, drop.start + minutes)
        level = 1.0 + 0.5 * np.sin(2 * math.pi * ((at / 60.0) % 24 - 9) / 24)
        n = per_hour / 60 * level * per_impression
        pieces = np.array([np.sum(n[at // 60 == h]) for h in np.unique(at // 60)])
        shares = np.array([share for _, share in CAMPAIGNS])
        return max(1, round(float(np.sum(n)))), float(np.sum(np.outer(shares, pieces) ** 2))

    def counts(n: int, squares: float, p: float) -> Any:
        """The numerator's distribution: mean n p, variance n p (1 − p) + wobble p² Σ n²."""
        rho = wobble * p * squares / ((1.0 - p) * n * max(n - 1, 1))
        if rho <= 0:
            return stats.binom(n, p)
        spread = 1.0 / rho - 1.0
        return stats.betabinom(n, p * spread, (1.0 - p) * spread)

    def test(minutes: int) -> tuple[float, float, float, float]:
        n, squares = moments(minutes)
        alpha = minutes / (WEEK_MIN * JUDGED_SERIES)
        null, dropped = counts(n, squares, p0), counts(n, squares, p0 * (1.0 - drop.size))
        critical = null.ppf(alpha)
        if null.cdf(critical) > alpha:
            critical -= 1
        power = float(dropped.cdf(critical)) if critical >= 0 else 0.0
        z = (dropped.mean() - null.mean()) / null.std()
        return power, float(null.mean()), float(z), float(stats.norm.isf(alpha))

    power, expected, z, z_needed = test(drop.minutes)
    delay = None
    if power >= 0.5:
        low, high = 1, drop.minutes  # the chance grows with the minutes pooled: the first to reach 50 %
        while low < high:
            middle = (low + high) // 2
            low, high = (middle + 1, high) if test(middle)[0] < 0.5 else (low, middle)
        delay = low
    return Limit(power, delay, expected, z, z_needed)


# -- scoring ----------------------------------------------------------------------------------------------


def minute_of(stamp: str) -> int:
    return (int(datetime.fromisoformat(stamp).timestamp()) - ORIGIN_S) // 60


def fired(run: Run) -> list[tuple[int, AlertJson]]:
    """(minute, alert) of every alert that fired (first firing or again within the episode)."""
    return [
        (minute_of(a["fired_at"]) + int((a["duration_s"] or 0.0) // 60), a)
        for a in run.alerts
        if a["change"] == "fired"
    ]


@dataclass
class Cell:
    """One (volume, kind, size, duration) cell: per drop, caught or not and the delay."""

    caught: list[bool] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    z_caught: list[bool] = field(default_factory=list)
    z_delays: list[float] = field(default_factory=list)
    flaps: int = 0
    z_flaps: int = 0
    limits: list[Limit] = field(default_factory=list)

    def attainable(self) -> str:
        """The oracle's expected catches and median delay, as ``caught`` and ``delay`` show the judge's."""
        return _attainable(self.limits)

    def expected(self) -> str:
        """What the drop's counts say: the numerator expected at the baseline, the z-score and the bar."""
        if not self.limits:
            return "–"
        expected = statistics.mean(lim.expected for lim in self.limits)
        z = statistics.mean(lim.z for lim in self.limits)
        needed = statistics.mean(lim.z_needed for lim in self.limits)
        return f"{expected:,.0f}, z {z:.1f} / {needed:.1f}"


def _attainable(limits: list[Limit]) -> str:
    if not limits:
        return "–"
    power = sum(lim.power for lim in limits)
    return f"{power:.1f}/{len(limits)}, {_median([lim.delay for lim in limits if lim.delay is not None])}"


def score_drops(run: Run, drops: list[Drop], cell: dict[int, Cell], key: Any, per_hour: float) -> None:
    events = fired(run)
    for drop in drops:
        target = TARGETS[drop.kind]
        end = drop.start + drop.minutes
        hits = [m for m, a in events if a["metric"] == target and drop.start <= m <= end + GRACE_MIN]
        c = cell[key]
        c.limits.append(limit(per_hour, drop))
        c.caught.append(bool(hits))
        if hits:
            c.delays.append(min(hits) - drop.start)
        # A flap: an alert that fired for this drop resolved while the drop went on.
        c.flaps += sum(
            1
            for a in run.alerts
            if a["change"] == "resolved"
            and a["kind"] == "anomaly"
            and a["resolved_at"] is not None
            and drop.start <= minute_of(a["resolved_at"]) < end
            and minute_of(a["fired_at"]) >= drop.start
        )
        z_hits = [m for m, metric in run.zscore if metric == target and drop.start < m <= end + GRACE_MIN]
        c.z_caught.append(bool(z_hits))
        if z_hits:
            c.z_delays.append(min(z_hits) - drop.start)
        c.z_flaps += max(
            0, len([m for m, metric in run.zscore if metric == target and drop.start < m <= end]) - 1
        )


def false_alerts(run: Run, outages: list[Outage], warm: int) -> tuple[list[str], int, int]:
    """Anomaly and misplaced data-health alerts after warm-up; the z-score's drops; outages caught."""
    near = [(o.start, o.start + o.minutes + 60) for o in outages]
    false, caught = [], 0
    for minute, alert in fired(run):
        if minute < warm:
            continue
        in_outage = any(a <= minute <= b for a, b in near)
        if alert["kind"] == "data_health" and in_outage:
            caught += 1
        elif not (alert["kind"] == "anomaly" and in_outage and alert["metric"] == "spend"):
            false.append(
                f"{minute // DAY_MIN}d {minute % DAY_MIN // 60:02d}:{minute % 60:02d} {alert['summary']}"
            )
    z_false = sum(1 for m, _ in run.zscore if m >= warm and not any(a <= m <= b for a, b in near))
    return false, z_false, caught


# -- the grid ---------------------------------------------------------------------------------------------


def stationary(volumes: list[int], seeds: int, config: SequentialConfig | None) -> dict[int, dict[str, Any]]:
    result = {}
    for volume in volumes:
        weeks: dict[str, Any] = {
            "false": [],
            "z_false": 0,
            "outages": 0,
            "caught_outages": 0,
            "seconds": 0.0,
            "sequential_s": 0.0,
            "minutes": 0,
        }
        for seed in range(seeds):
            rng = np.random.default_rng([volume, seed, 1])
            warm = DAY_MIN
            outages = [Outage(int(warm + rng.integers(0, WEEK_MIN - 120)), 20) for _ in range(2)]
            run = simulate(rng, volume, warm + WEEK_MIN, outages=outages, config=config)
            false, z_false, caught = false_alerts(run, outages, warm)
            weeks["false"] += false
            weeks["z_false"] += z_false
            weeks["outages"] += len(outages)
            weeks["caught_outages"] += caught
            weeks["seconds"] += run.seconds
            weeks["sequential_s"] += run.sequential_s
            weeks["minutes"] += run.minutes
        weeks["weeks"] = seeds
        result[volume] = weeks
        print(
            f"stationary {volume}/h: {len(weeks['false'])} false in {seeds} channel-weeks "
            f"(z-score {weeks['z_false']}), outages {weeks['caught_outages']}/{weeks['outages']}",
            flush=True,
        )
        for line in weeks["false"]:
            print("   ", line, flush=True)
    return result


def drop_grid(
    volumes: list[int],
    kinds: list[str],
    sizes: list[float],
    durations: list[int],
    runs: int,
    config: SequentialConfig | None,
    history_min: int = DAY_MIN,
) -> dict[tuple[int, str, float, int], Cell]:
    cells: dict[Any, Cell] = defaultdict(Cell)
    for volume in volumes:
        for kind in kinds:
            for size in sizes:
                for duration in durations:
                    key = (volume, kind, size, duration)
                    for seed in range(runs):
                        rng = np.random.default_rng([volume, seed, int(size * 100), duration, len(kind)])
                        gap = 360
                        drops = [
                            Drop(kind, size, history_min + i * gap + int(rng.integers(30, 120)), duration)
                            for i in range(4 if history_min >= DAY_MIN else 1)
                        ]
                        minutes = drops[-1].start + duration + 120
                        run = simulate(rng, volume, minutes, drops=drops, config=config)
                        score_drops(run, drops, cells, key, volume)
                    c = cells[key]
                    print(
                        f"{volume}/h {kind} -{size:.0%} {duration} min: "
                        f"caught {sum(c.caught)}/{len(c.caught)} delay {_median(c.delays)}, flaps {c.flaps}; "
                        f"z-score {sum(c.z_caught)}/{len(c.z_caught)} delay {_median(c.z_delays)}; "
                        f"attainable {c.attainable()} ({c.expected()})",
                        flush=True,
                    )
    return cells


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "–"


# -- the report -------------------------------------------------------------------------------------------


def markdown(
    weeks: dict[int, dict[str, Any]],
    cells: dict[Any, Cell],
    cold: dict[Any, Cell],
    config: SequentialConfig,
    elapsed_s: float,
    argv: list[str],
) -> str:
    out = [
        BEGIN,
        "## Alert quality",
        "",
        f"`python benchmarks/alert_quality.py {' '.join(argv)}`, {datetime.now(UTC):%Y-%m-%d}, "
        f"{elapsed_s / 60:.0f} min on one core. Simulated channels judged minute by minute by the worker's "
        "own judge (`agents.replay`); the model, the scoring and the attainable limit are in the script's "
        "docstring. Sequential judge: CUSUMs for drops of "
        + " and ".join(f"{1 - r:.0%}" for r in config.ratios)
        + f", threshold h = ln(I × {config.alarm_minutes:,.0f}) between {config.min_threshold:g} and "
        f"{config.threshold:g}, size gate {config.min_drop:.0%}, "
        f"z gate {config.z_min_counting:g}–{config.z_min:g}.",
        "",
    ]
    out += _targets(weeks, cells)
    out += [
        "",
        "**Stationary traffic** (over-dispersed, two 20-minute tracker outages a week each):",
        "",
        "| impressions/h | channel-weeks | false alerts | per channel-week | z-score false drops "
        "| per channel-week | outages caught | worker judge per channel-minute | of which sequential |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for volume, w in weeks.items():
        cost = w["seconds"] / max(w["minutes"], 1) * 1e3
        sequential = w["sequential_s"] / max(w["minutes"], 1) * 1e3
        out.append(
            f"| {volume:,} | {w['weeks']} | {len(w['false'])} | {len(w['false']) / w['weeks']:.2f} | "
            f"{w['z_false']} | {w['z_false'] / w['weeks']:.1f} | {w['caught_outages']} of {w['outages']} | "
            f"{cost:.2f} ms | {sequential:.2f} ms |"
        )
    false_lines = [line for w in weeks.values() for line in w["false"]]
    if false_lines:
        out += ["", "The false alerts (day, time, summary):", ""] + [f"- {line}" for line in false_lines[:30]]
    for title, table in (
        ("Drops after a day of history", cells),
        ("Cold start: drops after 3 hours of history", cold),
    ):
        if not table:
            continue
        out += [
            "",
            f"**{title}**: caught / drops, median delay in minutes, flaps (adpulse; z-score); attainable: "
            "what an oracle that knows the baseline could catch at one false page per channel-week (expected "
            "catches, its median delay); expected: the numerator events the drop's minutes hold at the "
            "baseline, the drop's z-score over its whole length and the z-score that level needs "
            "(`limit` in the script):",
            "",
            "| impressions/h | KPI | drop | lasting | caught | delay | flaps "
            "| z-score caught | delay | flaps | attainable | expected, z / needed |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (volume, kind, size, duration), c in sorted(table.items()):
            out.append(
                f"| {volume:,} | {TARGETS[kind]} | {size:.0%} | {duration} min | "
                f"{sum(c.caught)}/{len(c.caught)} | {_median(c.delays)} | {c.flaps} | "
                f"{sum(c.z_caught)}/{len(c.z_caught)} | {_median(c.z_delays)} | {c.z_flaps} | "
                f"{c.attainable()} | {c.expected()} |"
            )
    out.append(END)
    return "\n".join(out) + "\n"


def _targets(weeks: dict[int, dict[str, Any]], cells: dict[Any, Cell]) -> list[str]:
    """The issue's targets, measured: a row each, adpulse against the z-score."""

    def pooled(keep: Any) -> tuple[str, str, str]:
        chosen = [c for key, c in cells.items() if keep(*key)]
        caught = [x for c in chosen for x in c.caught]
        z_caught = [x for c in chosen for x in c.z_caught]
        delays = [d for c in chosen for d in c.delays]
        z_delays = [d for c in chosen for d in c.z_delays]
        limits = [lim for c in chosen for lim in c.limits]
        ours = f"{sum(caught)}/{len(caught)} caught, median delay {_median(delays)} min"
        theirs = f"{sum(z_caught)}/{len(z_caught)} caught, median delay {_median(z_delays)} min"
        power = sum(lim.power for lim in limits)
        reached = [lim.delay for lim in limits if lim.delay is not None]
        best = f"{power:.1f}/{len(limits)} caught, median delay {_median(reached)} min"
        return ours, theirs, best

    rows = [
        "| target | adpulse | rolling 3-sigma z-score | attainable at ≤ 1 false page a week |",
        "|---|---|---|---|",
    ]
    if cells:
        checks: list[tuple[str, Any]] = [
            ("≥ 5k/h, ≥ 50 % drop, ≥ 20 min, all KPIs", lambda v, k, s, d: v >= 5_000 and s >= 0.5),
            ("≥ 20k/h, ≥ 30 % drop, ≥ 40 min, all KPIs", lambda v, k, s, d: v >= 20_000 and d >= 40),
        ]
        for volume in sorted({key[0] for key in cells}):
            if volume < 5_000:
                continue
            checks.append(
                (
                    f"{volume // 1000}k/h, ≥ 50 % CTR drop, ≥ 20 min",
                    lambda v, k, s, d, volume=volume: v == volume and k == "ctr" and s >= 0.5,
                )
            )
            if volume >= 20_000:
                checks.append(
                    (
                        f"{volume // 1000}k/h, ≥ 30 % CTR drop, ≥ 40 min",
                        lambda v, k, s, d, volume=volume: v == volume and k == "ctr" and d >= 40,
                    )
                )
            checks.append(
                (
                    f"{volume // 1000}k/h, ≥ 50 % CVR or funnel drop, ≥ 40 min",
                    lambda v, k, s, d, volume=volume: v == volume and k != "ctr" and s >= 0.5 and d >= 40,
                )
            )
        for title, keep in checks:
            ours, theirs, best = pooled(keep)
            rows.append(f"| {title} | {ours} | {theirs} | {best} |")
        flaps = sum(c.flaps for c in cells.values())
        z_flaps = sum(c.z_flaps for c in cells.values())
        rows.append(f"| flaps during an injected drop | {flaps} | {z_flaps} | 0 |")
    for volume, w in weeks.items():
        rows.append(
            f"| false alerts per channel-week at {volume:,}/h | {len(w['false']) / w['weeks']:.2f} | "
            f"{w['z_false'] / w['weeks']:.1f} | ≤ 1 (the budget) |"
        )
    return rows


def write_markdown(path: Path, section: str) -> None:
    """Replace the generated section of ``path`` (or append it), keeping everything else."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--volumes", type=int, nargs="+", default=[1_000, 5_000, 20_000, 100_000])
    parser.add_argument("--kinds", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--drops", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--durations", type=int, nargs="+", default=[20, 40, 90])
    parser.add_argument("--weeks", type=int, default=6, help="stationary channel-weeks per volume")
    parser.add_argument("--runs", type=int, default=2, help="simulated days per drop cell (4 drops each)")
    parser.add_argument("--threshold", type=float, default=None, help="override the CUSUM threshold h")
    parser.add_argument("--z-min", type=float, default=None)
    parser.add_argument("--no-drops", action="store_true")
    parser.add_argument("--no-weeks", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 weeks per volume, 1 day per cell")
    parser.add_argument("--markdown", type=Path, default=None, help="write the section into this file")
    args = parser.parse_args()
    if args.quick:
        args.weeks, args.runs = 2, 1
    config = SequentialConfig()
    overrides = {k: v for k, v in (("threshold", args.threshold), ("z_min", args.z_min)) if v is not None}
    if overrides:
        config = SequentialConfig(**overrides)
    started = time.perf_counter()
    weeks = {} if args.no_weeks else stationary(args.volumes, args.weeks, config)
    cells = (
        {}
        if args.no_drops
        else drop_grid(args.volumes, args.kinds, args.drops, args.durations, args.runs, config)
    )
    cold = (
        {}
        if args.no_drops
        else drop_grid([5_000, 20_000], ["ctr"], [0.5, 0.7], [40], args.runs * 4, config, history_min=180)
    )
    section = markdown(weeks, cells, cold, config, time.perf_counter() - started, sys.argv[1:])
    print(section)
    if args.markdown:
        write_markdown(args.markdown, section)


if __name__ == "__main__":
    main()
