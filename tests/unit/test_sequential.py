"""alerts.sequential: evidence that accumulates minute by minute, cold start, recovery, cost, suppression."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pytest

from alerts.model import Finding
from alerts.sequential import Counts, SequentialConfig, SequentialJudge, Verdict

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
    assert finding.evidence["cusum"] >= SequentialConfig().threshold
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
    """Binomial traffic at 50k impressions an hour, two campaigns, every KPI: 18 CUSUMs per channel. By
    Lorden's bound each pages by chance at most once in e^11 ≈ 60,000 minutes; the gates make it rarer."""
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
    assert 0.78 < SequentialConfig().midpoint < 0.79


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
