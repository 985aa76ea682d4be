"""alerts.sequential: evidence that accumulates minute by minute, cold start, recovery, cost, suppression."""

from __future__ import annotations

import gc
import math
import re
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
import pytest

from alerts.model import Finding
from alerts.sequential import (
    KPIS,
    Baseline,
    Counts,
    SequentialConfig,
    SequentialJudge,
    Verdict,
    _Cusum,
    _wobble,
    weigh,
)

ORIGIN = 1_780_000_000 - 1_780_000_000 % 86_400
CAMPAIGNS = (("spring", 0.6), ("brand", 0.4))


class Channel:
    """Minute counts of one channel's campaigns (nested funnel, CTR 2.5 %, CVR 5 %), and its buckets."""

    def __init__(self, seed: int, per_hour: float, minutes: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.per_hour = per_hour
        self.minutes: list[dict[str, dict[str, float]]] = [self._minute(i, {}) for i in range(minutes)]

    def _minute(self, i: int, factor: Mapping[tuple[str, str], float]) -> dict[str, dict[str, float]]:
        out = {}
        for campaign, share in CAMPAIGNS:
            impressions = self.rng.poisson(self.per_hour / 60 * share)
            clicks = self.rng.binomial(impressions, 0.025 * factor.get((campaign, "ctr"), 1.0))
            visits = self.rng.binomial(clicks, 0.8)
            carts = self.rng.binomial(visits, 0.25)
            orders = self.rng.binomial(carts, 0.25 * factor.get((campaign, "cvr"), 1.0))
            out[campaign] = {
                "impressions": float(impressions),
                "clicks": float(clicks),
                "visits": float(visits),
                "carts": float(carts),
                "orders": float(orders),
                "gmv": 300.0 * orders,
                "spend": 0.6 * clicks,
            }
        return out

    def drop(
        self,
        kpi: str,
        size: float,
        start: int,
        minutes: int,
        campaigns: tuple[str, ...] = ("spring", "brand"),
    ) -> None:
        factor = {(c, kpi): 1.0 - size for c in campaigns}
        for i in range(start, start + minutes):
            self.minutes[i] = self._minute(i, factor)

    def minute(self, start_s: int) -> Mapping[str, Counts] | None:
        i = (start_s - ORIGIN) // 60
        return self.minutes[i] if 0 <= i < len(self.minutes) else None

    def hour(self, start_s: int) -> Mapping[str, Counts] | None:
        i = (start_s - ORIGIN) // 60
        if i < 0 or i + 60 > len(self.minutes):
            return None
        out: dict[str, dict[str, float]] = {}
        for row in self.minutes[i : i + 60]:
            for campaign, counts in row.items():
                target = out.setdefault(campaign, {})
                for name, value in counts.items():
                    target[name] = target.get(name, 0.0) + value
        return out


def judge_all(
    channel: Channel, first: int, last: int, judge: SequentialJudge | None = None
) -> list[tuple[int, Verdict]]:
    judge = judge or SequentialJudge()
    return [
        (i, judge.minute("douyin", ORIGIN + i * 60, channel.minute, channel.hour)) for i in range(first, last)
    ]


def findings(verdicts: list[tuple[int, Verdict]], metric: str = "ctr") -> list[tuple[int, Finding]]:
    return [(i, f) for i, v in verdicts for f in v.findings if f.metric == metric]


def test_a_sustained_drop_is_caught_by_pooled_evidence_no_single_window_would_show() -> None:
    """5k impressions an hour, CTR −60 % for 40 minutes: ~2 clicks a minute where 5 were expected. No
    10-minute window is conclusive on its own; the evidence of the minutes together is."""
    channel = Channel(1, 5_000, 5 * 60)
    channel.drop("ctr", 0.6, 180, 40)
    verdicts = judge_all(channel, 0, 5 * 60)
    fired = findings(verdicts)
    assert fired, "the drop was never caught"
    first, finding = fired[0]
    assert 180 < first < 220
    assert finding.campaign is None and finding.kind == "anomaly"
    assert finding.change_pct is not None and finding.change_pct < -40
    # Three hours of history, but the hour the drop began in is its own, not its baseline's: the minutes
    # before the drop are.
    assert re.fullmatch(
        r"the previous 2 h|its own last \d+ min \(no hourly history yet\)", finding.evidence["baseline_from"]
    )
    assert finding.evidence["cusum"] >= finding.evidence["cusum_threshold"]
    assert finding.summary.startswith("CTR fell")
    assert all(f.campaign is None for _, f in fired), "the channel's alert covers its campaigns"
    assert not [f for _, v in verdicts for f in v.findings if f.metric != "ctr"], "nothing else fell"


def test_cold_start_judges_a_new_channel_against_its_own_earlier_minutes() -> None:
    channel = Channel(2, 20_000, 150)
    channel.drop("ctr", 0.7, 100, 40)
    fired = findings(judge_all(channel, 0, 150))
    assert fired and 100 < fired[0][0] < 120
    assert fired[0][1].evidence["baseline_from"].startswith("its own last ")


def test_nothing_is_judged_before_any_baseline_exists() -> None:
    channel = Channel(3, 20_000, 40)
    channel.drop("ctr", 0.9, 5, 30)
    assert findings(judge_all(channel, 0, 40)) == []  # 30 settled minutes are needed first


def test_while_the_drop_lasts_it_holds_and_it_recovers_only_on_good_data() -> None:
    channel = Channel(4, 20_000, 7 * 60)
    channel.drop("ctr", 0.8, 200, 90)
    verdicts = judge_all(channel, 0, 7 * 60)
    fp = "anomaly:ctr:douyin:-"
    fired = [i for i, v in verdicts if any(f.fingerprint == fp for f in v.findings)]
    recovered = [i for i, v in verdicts if fp in v.recovered and i > fired[0]]
    assert fired[0] < 215
    # Every minute of the drop after the first alert still finds it: nothing resolves a running drop.
    assert not [i for i in recovered if i < 290]
    assert recovered and 290 <= recovered[0] < 290 + 60, "good data brings the statistic back to 0"


def test_the_campaigns_of_a_channel_wide_drop_do_not_page_even_after_the_channel_resolved() -> None:
    """Every campaign's CTR falls 70 % for 90 minutes; then spring recovers and brand stays 60 % down for two
    hours. The channel's CTR is back near its baseline (−24 %) and its alert resolves; brand's part of the
    same incident does not page on its own (the channel's alert named it)."""
    channel = Channel(9, 100_000, 8 * 60)
    channel.drop("ctr", 0.7, 200, 90)
    channel.drop("ctr", 0.6, 290, 120, campaigns=("brand",))
    verdicts = judge_all(channel, 0, 8 * 60)
    fired = findings(verdicts)
    assert fired and {f.campaign for _, f in fired} == {None}


def test_a_drop_masked_for_a_while_is_still_the_same_drop() -> None:
    """200k impressions an hour: CTR −40 % for an hour, except 15 minutes in the middle when the hour's wobble
    hides most of it (−10 %). The evidence falls back to 0 there, but the rate is not back near its
    baseline: no recovery until the drop is over."""
    channel = Channel(10, 200_000, 7 * 60)
    channel.drop("ctr", 0.4, 200, 20)
    channel.drop("ctr", 0.1, 220, 15)
    channel.drop("ctr", 0.4, 235, 25)
    verdicts = judge_all(channel, 0, 7 * 60)
    fp = "anomaly:ctr:douyin:-"
    first = min(i for i, v in verdicts if any(f.fingerprint == fp for f in v.findings))
    recovered = [i for i, v in verdicts if fp in v.recovered and i > first]
    assert first < 215 and recovered and recovered[0] >= 260, recovered[:3]


def test_a_drop_of_one_campaign_is_that_campaigns_alert() -> None:
    channel = Channel(5, 60_000, 5 * 60)
    channel.drop("ctr", 0.8, 200, 60, campaigns=("brand",))
    fired = findings(judge_all(channel, 0, 5 * 60))
    assert {f.campaign for _, f in fired} >= {"brand"}
    assert "spring" not in {f.campaign for _, f in fired}
    assert next(f for _, f in fired if f.campaign == "brand").description.startswith("douyin/brand:")


def test_roi_that_fell_with_the_cvr_is_the_cvr_alert() -> None:
    channel = Channel(6, 200_000, 5 * 60)
    channel.drop("cvr", 0.7, 200, 60)
    verdicts = judge_all(channel, 0, 5 * 60)
    metrics = {f.metric for _, v in verdicts for f in v.findings if f.campaign is None}
    assert "cvr" in metrics and "roi" not in metrics


def test_a_restarted_judge_replays_the_minutes_before_and_decides_the_same() -> None:
    channel = Channel(7, 20_000, 6 * 60)
    channel.drop("ctr", 0.6, 250, 60)
    whole = judge_all(channel, 0, 6 * 60)
    resumed = judge_all(channel, 240, 6 * 60)  # a fresh judge: it replays the 90 minutes before 240 first
    assert [(i, [f.fingerprint for f in v.findings]) for i, v in whole if i >= 260] == [
        (i, [f.fingerprint for f in v.findings]) for i, v in resumed if i >= 260
    ]


def test_a_minute_costs_one_bucket_read_and_hours_are_read_once_an_hour() -> None:
    channel = Channel(8, 20_000, 8 * 60)
    reads = {"minute": 0, "hour": 0}

    def minute(start_s: int) -> Mapping[str, Counts] | None:
        reads["minute"] += 1
        return channel.minute(start_s)

    def hour(start_s: int) -> Mapping[str, Counts] | None:
        reads["hour"] += 1
        return channel.hour(start_s)

    judge = SequentialJudge()
    judge.minute("douyin", ORIGIN + 300 * 60, minute, hour)  # the first: replays 90 minutes
    reads.update(minute=0, hour=0)
    for i in range(301, 421):
        judge.minute("douyin", ORIGIN + i * 60, minute, hour)
    assert reads["minute"] == 120
    assert reads["hour"] <= 2 * 31  # two new hours, each reading its baseline hours once


def test_stationary_traffic_pages_at_most_once_in_six_channel_days() -> None:
    """Binomial traffic at 50k impressions an hour, two campaigns, every KPI: 36 CUSUMs per channel, each
    with a threshold for the information its counts carry (e^h minutes at least between false alarms by
    Lorden's bound; the gates make it rarer)."""
    alerts = set()
    for seed in range(6):
        channel = Channel(100 + seed, 50_000, 26 * 60)
        alerts |= {(seed, f.fingerprint) for _, v in judge_all(channel, 0, 26 * 60) for f in v.findings}
    assert len(alerts) <= 1, alerts


def test_the_config_is_checked() -> None:
    with pytest.raises(ValueError):
        SequentialConfig(design_ratio=1.0)
    with pytest.raises(ValueError):
        SequentialConfig(threshold=0.0)
    with pytest.raises(ValueError):
        SequentialConfig(min_threshold=13.0, threshold=12.0)
    with pytest.raises(ValueError):
        SequentialConfig(deep_ratio=0.7)  # not deeper than the main CUSUM's 0.6
    with pytest.raises(ValueError):
        SequentialConfig(alarm_minutes=0.0)
    assert 0.78 < SequentialConfig().midpoint < 0.79
    assert SequentialConfig().ratios == (0.6, 0.3)
    assert SequentialConfig(deep_ratio=None).ratios == (0.6,)


def test_the_dispersion_is_measured_again_once_a_drop_is_over() -> None:
    """The blocks of a found drop never count towards φ; those after its recovery do: when the channel's
    CTR turns lumpy after a first drop, the second drop's alert measures that, not the calm before."""
    channel = Channel(11, 20_000, 12 * 60)
    channel.drop("ctr", 0.8, 200, 30)
    rng = np.random.default_rng(16)
    for start in range(260, 560, 10):  # each 10-minute block its own CTR: φ of a few
        factor = rng.lognormal(0.0, 0.3)
        for i in range(start, start + 10):
            for counts in channel.minutes[i].values():
                counts["clicks"] = float(rng.binomial(int(counts["impressions"]), min(1.0, 0.025 * factor)))
    channel.drop("ctr", 0.9, 600, 60)
    verdicts = judge_all(channel, 0, 12 * 60)
    fired = [(i, f) for i, f in findings(verdicts) if f.campaign is None]
    first = [f for i, f in fired if 200 <= i < 240]
    second = [f for i, f in fired if 600 <= i < 660]
    assert first and second
    assert first[0].evidence["dispersion"] < 1.5 < second[0].evidence["dispersion"]


CTR = next(kpi for kpi in KPIS if kpi.name == "ctr")
CVR = next(kpi for kpi in KPIS if kpi.name == "cvr")


def test_the_threshold_follows_the_information_a_kpi_gathers() -> None:
    """h = ln(I × alarm_minutes): e times the denominator per minute is one nat more; a campaign that
    shares the false-alarm rate with two others needs ln 3 more than alone; always within the bounds."""
    config = SequentialConfig()
    baseline = Baseline(0.025, 5_000.0, 200_000.0, 0.0025, "test")

    def h(per_minute: float, peers: int = 1, phi: float = 1.0) -> float:
        return weigh(config, baseline, phi, per_minute, peers).terms[0][2]

    assert h(100.0 * math.e) == pytest.approx(h(100.0) + 1.0)
    assert h(100.0, peers=3) == pytest.approx(h(100.0) + math.log(3))
    # 100 impressions a minute (6k an hour): the main CUSUM loses ~0.28 nats a minute, h = ln(0.28 × 1e5).
    assert 9.5 < h(100.0) < 10.5
    assert h(1e6) == config.threshold
    assert h(0.01) == config.min_threshold
    # Over-dispersion: φ = 2 halves the evidence a minute gives, and the information.
    assert h(200.0, phi=2.0) == pytest.approx(h(100.0), abs=0.02)
    # The deep CUSUM loses more evidence a minute under the baseline: its threshold is higher.
    terms = weigh(config, baseline, 1.0, 100.0).terms
    assert terms[1][2] > terms[0][2]


def test_a_small_channel_is_judged_on_less_evidence_than_a_big_one() -> None:
    """The same 80 % CTR drop at 3k and at 100k impressions an hour: both caught, the small channel on a
    lower threshold; with the big channel's threshold the small one's drop is found later, if at all."""
    thresholds, first = {}, {}
    for per_hour in (3_000, 100_000):
        channel = Channel(12, per_hour, 6 * 60)
        channel.drop("ctr", 0.8, 240, 90)
        fired = [(i, f) for i, f in findings(judge_all(channel, 0, 6 * 60)) if f.campaign is None]
        assert fired, per_hour
        first[per_hour], finding = fired[0]
        thresholds[per_hour] = finding.evidence["cusum_threshold"]
    assert thresholds[3_000] < thresholds[100_000] - 1.0
    channel = Channel(12, 3_000, 6 * 60)
    channel.drop("ctr", 0.8, 240, 90)
    fixed = SequentialJudge(SequentialConfig(min_threshold=12.0, threshold=12.0))
    late = [i for i, f in findings(judge_all(channel, 0, 6 * 60, fixed)) if f.campaign is None]
    assert not late or late[0] > first[3_000]


def test_a_collapse_is_caught_sooner_by_the_cusum_tuned_for_deep_drops() -> None:
    channel = Channel(13, 6_000, 6 * 60)
    channel.drop("ctr", 0.9, 240, 60)
    deep = [(i, f) for i, f in findings(judge_all(channel, 0, 6 * 60)) if f.campaign is None]
    main_only = SequentialJudge(SequentialConfig(deep_ratio=None))
    moderate = [i for i, f in findings(judge_all(channel, 0, 6 * 60, main_only)) if f.campaign is None]
    assert deep and moderate
    assert deep[0][0] < moderate[0]
    assert deep[0][1].evidence["design_drop"] == pytest.approx(0.7)
    assert "tuned for a 70 % drop" in deep[0][1].description


def test_the_wobble_of_a_few_events_an_hour_is_not_read_from_their_lumpy_counts() -> None:
    """Hours of ~5 orders (Poisson, no wobble at all): their squared deviations are lumpy (the median of
    (x − 5)²/5 is 0.8, not χ²₁'s 0.45), and say next to nothing about a wobble: τ² stays near the prior."""
    rng = np.random.default_rng(14)
    hours = [{"orders": float(rng.poisson(5.0)), "clicks": 100.0} for _ in range(31)]
    prior = 0.05**2
    assert _wobble(CVR, hours, 0.05, prior) < 0.08**2  # a median-matching estimate: τ ≈ 40 %


def test_the_wobble_of_a_busy_kpi_is_measured_and_one_odd_hour_does_not_set_it() -> None:
    rng = np.random.default_rng(15)
    clicks = [float(rng.binomial(200_000, 0.025 * rng.lognormal(-0.005, 0.1))) for _ in range(31)]
    hours = [{"clicks": c, "impressions": 200_000.0} for c in clicks]
    measured = _wobble(CTR, hours, 0.025, 0.05**2)
    assert 0.006 < measured < 0.02  # τ = 10 %: τ² = 0.01, raised by its standard error
    hours[7] = {"clicks": 1_000.0, "impressions": 200_000.0}  # −80 %: a drop nobody caught
    assert _wobble(CTR, hours, 0.025, 0.05**2) < 1.5 * measured


def test_the_wobble_of_a_run_counts_each_clock_hour_as_its_own_draw() -> None:
    cusum = _Cusum(0.6, 10.0)
    for minute in range(50, 70):  # 10 minutes in one hour, 10 in the next
        cusum.add(1.0, 2.0, 80.0, ORIGIN + minute * 60)
    assert cusum.e == 40.0
    assert cusum.e2 == pytest.approx(20.0**2 + 20.0**2)
    cusum.reset()
    assert cusum.e2 == 0.0 and cusum.run_start is None


class Steady:
    """A channel without noise: 1,000 impressions and 25 clicks every minute, except where set."""

    def __init__(self, minutes: int) -> None:
        self.clicks = [25.0] * minutes

    def minute(self, start_s: int) -> Mapping[str, Counts] | None:
        i = (start_s - ORIGIN) // 60
        if not 0 <= i < len(self.clicks):
            return None
        return {"spring": {"impressions": 1_000.0, "clicks": self.clicks[i]}}

    def hour(self, start_s: int) -> Mapping[str, Counts] | None:
        i = (start_s - ORIGIN) // 60
        if i < 0 or i + 60 > len(self.clicks):
            return None
        return {"spring": {"impressions": 60_000.0, "clicks": sum(self.clicks[i : i + 60])}}


def test_a_likely_drop_that_was_never_confirmed_stays_out_of_the_baseline() -> None:
    """Clicks fall 60 % until the evidence passes three quarters of the threshold, then come back before it
    is reached: no alert, but that hour no longer counts as normal. A later drop's alert is judged on the
    hours without it."""
    steady = Steady(8 * 60)
    judge = SequentialJudge()
    for i in range(5 * 60):
        assert not judge.minute("douyin", ORIGIN + i * 60, steady.minute, steady.hour).findings
    # 60k impressions an hour: both CUSUMs' thresholds are at their highest (12). At 10 clicks where 25
    # are expected the main one gains ~4.9 nats a minute, the deep one ~5.4: two minutes reach three
    # quarters of the threshold, not all of it.
    for i in range(5 * 60, 5 * 60 + 2):
        steady.clicks[i] = 10.0
    for i in range(7 * 60, 8 * 60):
        steady.clicks[i] = 2.0
    fired = [
        f
        for i in range(5 * 60, 8 * 60)
        for f in judge.minute("douyin", ORIGIN + i * 60, steady.minute, steady.hour).findings
        if f.campaign is None and f.metric == "ctr"
    ]
    assert fired
    assert fired[0].window_start == datetime.fromtimestamp(ORIGIN + 7 * 3600, UTC).isoformat()
    # Hours 0–6 closed before the second drop; hour 5 held the likely one.
    assert fired[0].evidence["baseline_from"] == "the previous 6 h"


def sparse(channel: Channel, keep: float, seed: int) -> Channel:
    """``channel`` with each campaign's minutes left out at random (a campaign with data now and then)."""
    rng = np.random.default_rng(seed)
    channel.minutes = [
        {c: counts for c, counts in row.items() if rng.random() < keep} for row in channel.minutes
    ]
    return channel


def test_a_campaign_minute_without_data_changes_nothing_whether_it_is_judged_or_skipped() -> None:
    # The judge skips a campaign in minutes it has no data (the cost of a minute is its active campaigns):
    # what it decides must be what judging those minutes as empty would have decided.
    channel = sparse(Channel(11, 60_000, 8 * 60), keep=0.3, seed=3)
    channel.drop("ctr", 0.7, 300, 90, campaigns=("brand",))
    empty = Channel(11, 60_000, 8 * 60)
    empty.minutes = [{c: row.get(c, {}) for c, _ in CAMPAIGNS} for row in channel.minutes]
    skipped, judged = judge_all(channel, 0, 8 * 60), judge_all(empty, 0, 8 * 60)
    assert findings(skipped), "the sparse campaign's drop was caught"

    def decided(verdicts: list[tuple[int, Verdict]]) -> list[tuple[int, list[str]]]:
        # Judged as empty, a campaign whose drop was found repeats the finding in its empty minutes.
        return [
            (
                i,
                sorted(
                    f.fingerprint
                    for f in v.findings
                    if f.campaign is None or f.campaign in channel.minutes[i]
                ),
            )
            for i, v in verdicts
        ]

    assert decided(skipped) == decided(judged)
    assert [
        (i, {fp: value for fp, value in v.recovered.items() if value is not None}) for i, v in skipped
    ] == [(i, {fp: value for fp, value in v.recovered.items() if value is not None}) for i, v in judged]


def test_a_campaign_without_data_for_the_forget_time_is_forgotten() -> None:
    channel = Channel(12, 20_000, 10 * 60)
    for i in range(60, 10 * 60):
        channel.minutes[i] = {"spring": channel.minutes[i]["spring"]}  # brand stops after an hour
    judge = SequentialJudge(SequentialConfig(forget_minutes=120))
    judge_all(channel, 0, 2 * 60, judge)
    assert judge.campaigns("douyin") == {"spring", "brand"}
    judge_all(channel, 2 * 60, 10 * 60, judge)
    assert judge.campaigns("douyin") == {"spring"}


def tracked_state(judge: SequentialJudge) -> int:
    """The objects the garbage collector walks in ``judge``'s state (containers and the judge's own)."""
    gc.collect()  # tuples of atoms only are untracked by a collection
    seen: set[int] = set()
    todo: list[object] = [judge]
    tracked = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        tracked += gc.is_tracked(obj)
        own = type(obj).__module__ == "alerts.sequential" and not isinstance(obj, type)
        if own or isinstance(obj, dict | list | tuple | set | deque):
            todo += gc.get_referents(obj)
    return tracked


def test_the_objects_the_collector_walks_do_not_grow_with_the_minutes_kept() -> None:
    # A campaign keeps up to 6 hours of settled minutes for its cold-start baseline: packed, they are no
    # objects of their own (a dict and tuples per minute made every full collection walk them all).
    channel = Channel(13, 20_000, 7 * 60)
    judge = SequentialJudge()
    judge_all(channel, 0, 4 * 60, judge)  # hourly baselines from 3 h on: every structure exists by now
    early = tracked_state(judge)
    judge_all(channel, 4 * 60, 7 * 60, judge)  # 150 more minutes settle in each of the 3 subjects
    assert tracked_state(judge) < early + 20


def test_a_quiet_campaign_keeps_no_objects_of_its_own_in_its_tracks() -> None:
    # Most campaigns of a big account have data in a few minutes of their hours and no drop: their
    # tracks' CUSUMs, hours, blocks and drops are the defaults, and must not cost a set, lists and
    # CUSUM objects each (at 100,000 such campaigns they were 0.4 GB and most of the collector's work).
    channel = Channel(14, 20_000, 8 * 60)
    for i in range(len(channel.minutes)):
        if i % 30:
            channel.minutes[i] = {}  # the campaigns have data in one minute of 30
    judge = SequentialJudge()
    judge_all(channel, 0, 8 * 60, judge)
    judge.forget()
    empty = tracked_state(judge)
    judge_all(channel, 0, 8 * 60, judge)
    per_subject = (tracked_state(judge) - empty) / 3  # the channel and its two campaigns
    assert per_subject < 50  # 78 when each track had its own (45 now)
