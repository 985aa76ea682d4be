"""The traffic generator: determinism, realistic rates, scenarios, and a ground truth that matches a recount.

The recount below is an independent reading of CONTRACT.md §1 (validation, dedup by ``event_id``, lateness
per partition against the newest accepted ``ts``), so the generator's bookkeeping is checked from outside.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adpulse.traffic.generator import Record, TrafficGenerator, partition_for
from adpulse.traffic.profiles import DEFAULT_CHANNELS, daily_curve
from adpulse.traffic.scenarios import (
    BadRecords,
    CtrDrop,
    Duplicates,
    LateEvents,
    SpendSurgeScenario,
    TrackerOutage,
    parse_duration_s,
    parse_scenario,
)
from adpulse.traffic.truth import Totals

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: 2024-06-18 02:00:00 UTC (10:00 in Shanghai), on a minute boundary.
T0 = 1_718_676_000_000
MAX_BYTES = 64 * 1024
_FUNNEL_FIELDS = {"impression": "impressions", "click": "clicks", "visit": "visits", "cart": "carts"}
SKEW_MS = 3_600_000


def generate(gen: TrafficGenerator, seconds: float, rate: float, start_ms: int = T0) -> list[Record]:
    return list(gen.records(start_ms, start_ms + int(seconds * 1000), rate))


# ------------------------------------------------------------------------------------------ reference recount


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value: Any, longest: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= longest


_REQUIRED = {
    "clicks": ("event_id", "ts", "channel", "type"),
    "orders": ("event_id", "ts", "channel", "order_id", "amount"),
    "spend": ("event_id", "ts", "channel", "cost"),
}


def rejection(topic: str, value: bytes, sent_ms: int, currency: str = "CNY") -> str | None:
    """Why the contract rejects this record (named like the generator's reasons), or None."""
    if len(value) > MAX_BYTES:
        return "oversized"
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not_json"
    if not isinstance(doc, dict):
        return "not_json"
    if any(name not in doc for name in _REQUIRED[topic]):
        return "missing_field"
    money = {"orders": "amount", "spend": "cost"}.get(topic)
    well_typed = (
        _is_text(doc["event_id"], 128)
        and _is_int(doc["ts"])
        and _is_text(doc["channel"], 64)
        and _is_text(doc.get("campaign", "-"), 128)
        and (topic != "clicks" or (_is_int(doc.get("count", 1)) and doc.get("count", 1) >= 1))
        and (topic != "orders" or isinstance(doc["order_id"], str))
        and (money is None or _is_number(doc[money]))
    )
    if not well_typed:
        return "mistyped_field"
    if topic == "clicks" and doc["type"] not in ("impression", "click", "visit", "cart"):
        return "unknown_type"
    if money is not None and not (math.isfinite(doc[money]) and doc[money] >= 0):
        return "negative_amount"
    if money is not None and doc.get("currency", currency) != currency:
        return "wrong_currency"
    if doc["ts"] > sent_ms + SKEW_MS:
        return "future_ts"
    return None


def recount(records: list[Record], grace_s: float) -> dict[str, Any]:
    """Totals per (channel, campaign), kinds per topic, reasons, records per partition: per the contract."""
    totals: dict[tuple[str, str], Totals] = {}
    kinds = {topic: Counter[str]() for topic in ("clicks", "orders", "spend")}
    reasons: Counter[str] = Counter()
    per_partition: Counter[tuple[str, int]] = Counter()
    newest: dict[tuple[str, int], int] = {}
    seen: set[str] = set()
    for topic, _key, value, sent_ms, partition in records:
        per_partition[topic, partition] += 1
        reason = rejection(topic, value, sent_ms)
        if reason is not None:
            kinds[topic]["invalid"] += 1
            reasons[reason] += 1
            continue
        doc = orjson.loads(value)
        window_end = doc["ts"] // 60_000 * 60_000 + 60_000
        if window_end + grace_s * 1000 <= newest.get((topic, partition), -math.inf):
            kinds[topic]["late"] += 1
            continue
        if doc["event_id"] in seen:
            kinds[topic]["duplicate"] += 1
            continue
        seen.add(doc["event_id"])
        newest[topic, partition] = max(doc["ts"], newest.get((topic, partition), doc["ts"]))
        kinds[topic]["valid"] += 1
        _fold(totals.setdefault((doc["channel"], doc.get("campaign", "-")), Totals()), topic, doc)
    return {"totals": totals, "kinds": kinds, "reasons": reasons, "partitions": per_partition}


def _fold(totals: Totals, topic: str, doc: dict[str, Any]) -> None:
    if topic == "orders":
        totals.orders += 1
        totals.gmv_cents += round(doc["amount"] * 100)
    elif topic == "spend":
        totals.spend_cents += round(doc["cost"] * 100)
    else:
        name = _FUNNEL_FIELDS[doc["type"]]
        setattr(totals, name, getattr(totals, name) + doc.get("count", 1))


def assert_truth_matches(gen: TrafficGenerator, records: list[Record], grace_s: float) -> dict[str, Any]:
    counted = recount(records, grace_s)
    truth = gen.truth
    assert counted["totals"] == truth.totals()
    for topic, kinds in truth.kinds.items():
        assert {k: n for k, n in kinds.items() if n} == dict(counted["kinds"][topic]), topic
    assert counted["reasons"] == Counter(truth.invalid_reasons)
    assert counted["partitions"] == Counter(truth.partition_records)
    return counted


# ------------------------------------------------------------------------------------------------- determinis


def test_same_seed_and_start_give_the_same_records() -> None:
    scenarios = [BadRecords(fraction=0.05), LateEvents(fraction=0.05), Duplicates(fraction=0.05)]
    first = generate(TrafficGenerator(7, scenarios=scenarios), 30, 500)
    again = generate(TrafficGenerator(7, scenarios=scenarios), 30, 500)
    other = generate(TrafficGenerator(8, scenarios=scenarios), 30, 500)
    assert first == again
    assert first != other


def test_event_ids_are_unique_except_for_duplicates() -> None:
    gen = TrafficGenerator(3)
    records = generate(gen, 60, 1000)
    ids = [orjson.loads(value)["event_id"] for _, _, value, _, _ in records]
    assert len(ids) == len(set(ids)) == gen.truth.sent


def test_records_are_keyed_by_channel_on_the_kafka_default_partition() -> None:
    gen = TrafficGenerator(1, partitions={"clicks": 4, "orders": 3, "spend": 2})
    for topic, key, value, _, partition in generate(gen, 20, 500):
        doc = orjson.loads(value)
        assert key == doc["channel"].encode()
        assert partition == partition_for(key, {"clicks": 4, "orders": 3, "spend": 2}[topic])


def test_intervals_must_move_forward() -> None:
    gen = TrafficGenerator(1)
    generate(gen, 10, 100)
    with pytest.raises(ValueError, match="back in event time"):
        generate(gen, 10, 100, start_ms=T0 + 5_000)
    with pytest.raises(ValueError, match="rate"):
        generate(gen, 10, 0, start_ms=T0 + 10_000)


def test_consecutive_intervals_continue_the_same_run() -> None:
    gen = TrafficGenerator(2, scenarios=[LateEvents(fraction=0.05), Duplicates(fraction=0.05)])
    records = [r for lo in range(T0, T0 + 60_000, 250) for r in gen.records(lo, lo + 250, 800)]
    assert gen.truth.start_ms == T0 and gen.truth.end_ms == T0 + 60_000
    assert_truth_matches(gen, records, 60)


# ------------------------------------------------------------------------------------------------------- rate


@pytest.mark.parametrize(("rate", "seconds"), [(20, 600), (1000, 60), (5000, 20)])
def test_volume_follows_the_rate(rate: float, seconds: float) -> None:
    gen = TrafficGenerator(4, daily_curve=False)
    records = generate(gen, seconds, rate)
    assert len(records) == pytest.approx(rate * seconds, rel=0.1)


def test_volume_follows_the_daily_curve() -> None:
    def volume(local_hour: int) -> int:
        start = int(datetime(2024, 6, 18, local_hour, tzinfo=SHANGHAI).timestamp() * 1000)
        return len(generate(TrafficGenerator(5, zone=SHANGHAI), 60, 1000, start_ms=start))

    night, morning = volume(4), volume(10)
    assert morning > 3 * night
    assert morning == pytest.approx(1000 * 60 * daily_curve(T0, SHANGHAI), rel=0.1)


def test_daily_curve_is_quiet_at_night_peaks_twice_and_averages_one() -> None:
    def at(hour: float, zone: ZoneInfo = SHANGHAI) -> float:
        midnight = datetime(2024, 6, 18, tzinfo=zone).timestamp()
        return daily_curve(int((midnight + hour * 3600) * 1000), zone)

    assert sum(at(m / 60) for m in range(1440)) / 1440 == pytest.approx(1.0, abs=1e-3)
    assert at(4) < 0.4 < 1.2 < at(10) and at(20.5) > at(10)
    assert at(10) > at(14) < at(20.5)
    assert at(10, ZoneInfo("UTC")) == pytest.approx(at(10)) and daily_curve(T0, ZoneInfo("UTC")) < 1.0


def _z(observed: float, expected: float, variance: float) -> float:
    return abs(observed - expected) / math.sqrt(variance)


def test_funnel_rates_match_the_campaign_profiles() -> None:
    """Per channel, CTR, CVR, AOV and CPC stay within 5 standard errors of what the profiles say."""
    gen = TrafficGenerator(11, daily_curve=False)
    # Impressions are reported a second late: leave the run's first and last minute out.
    for _ in gen.records(T0, T0 + 4 * 60_000, 800):
        pass
    profiles = {p.campaign: p for p in gen.campaigns}
    minutes = gen.truth.minute_totals().items()
    middle = [(key, t) for key, t in minutes if T0 + 60_000 <= key[2] < T0 + 180_000]
    for channel in DEFAULT_CHANNELS:
        cells = [(profiles[campaign], t) for (ch, campaign, _), t in middle if ch == channel]
        clicks = sum(t.clicks for _, t in cells)
        orders = sum(t.orders for _, t in cells)
        expected_clicks = sum(t.impressions * p.ctr for p, t in cells)
        clicks_variance = sum(t.impressions * p.ctr * (1 - p.ctr) for p, t in cells)
        assert _z(clicks, expected_clicks, clicks_variance) < 5, channel
        expected_orders = sum(t.clicks * p.cvr for p, t in cells)
        assert _z(orders, expected_orders, sum(t.clicks * p.cvr * (1 - p.cvr) for p, t in cells)) < 5, channel
        gmv = sum(t.gmv for _, t in cells)
        spread = math.exp(0.6**2) - 1  # variance of the lognormal amount, relative to AOV²
        gmv_variance = sum(t.orders * (p.aov**2) * spread for p, t in cells)
        assert _z(gmv, sum(t.orders * p.aov for p, t in cells), gmv_variance) < 5, channel
        spend = sum(t.spend for _, t in cells)
        assert spend == pytest.approx(sum(t.clicks * p.cpc for p, t in cells), rel=0.03), channel


def test_channels_look_like_real_marketing() -> None:
    """CTR 1.5–3 %, CVR 4–6 %, AOV 250–400, ROI mostly above 1 with one channel a little below."""
    gen = TrafficGenerator(12, daily_curve=False)
    generate(gen, 120, 1500)
    rois = {}
    for channel, t in gen.truth.channel_totals().items():
        assert 0.014 <= t.clicks / t.impressions <= 0.032, channel
        assert 0.035 <= t.orders / t.clicks <= 0.065, channel
        assert 230 <= t.gmv / t.orders <= 430, channel
        rois[channel] = t.gmv / t.spend
    below = [channel for channel, roi in rois.items() if roi < 1]
    assert len(below) == 1 and 0.75 <= rois[below[0]] < 1, rois


def test_impressions_are_pre_aggregated() -> None:
    records = generate(TrafficGenerator(13), 60, 1000)
    impressions = [orjson.loads(v) for t, _, v, _, _ in records if t == "clicks" and b'"impression"' in v]
    clicks = sum(1 for t, _, v, _, _ in records if t == "clicks" and b'"type":"click"' in v)
    assert all(doc["count"] >= 1 for doc in impressions)
    assert len(impressions) < clicks < sum(doc["count"] for doc in impressions) / 20


def test_orders_and_spend_carry_money_with_two_decimals() -> None:
    records = generate(TrafficGenerator(14), 60, 1000)
    orders = [orjson.loads(v) for t, _, v, _, _ in records if t == "orders"]
    spend = [orjson.loads(v) for t, _, v, _, _ in records if t == "spend"]
    assert orders and spend
    for doc in orders:
        assert doc["amount"] == round(doc["amount"], 2) > 0
        assert isinstance(doc["new_customer"], bool) and doc["order_id"] and doc["click_id"]
    assert all(doc["cost"] == round(doc["cost"], 2) > 0 for doc in spend)
    assert 0.15 < sum(doc["new_customer"] for doc in orders) / len(orders) < 0.45


# --------------------------------------------------------------------------------------------------- scenario


def _per_phase(gen: TrafficGenerator, channel: str, bounds_s: list[float]) -> list[Totals]:
    """Totals of ``channel`` for each stretch between consecutive run offsets in ``bounds_s``."""
    phases = [Totals() for _ in bounds_s[:-1]]
    for (ch, _campaign, window), totals in gen.truth.minute_totals().items():
        offset_s = (window - T0) / 1000
        for index, (lo, hi) in enumerate(itertools.pairwise(bounds_s)):
            if ch == channel and lo <= offset_s < hi:
                phases[index].add(totals)
    return phases


def test_ctr_drop_cuts_one_channels_ctr_and_recovers() -> None:
    drop = CtrDrop(channel="wechat", at_s=120, for_s=120, factor=0.4)
    gen = TrafficGenerator(21, daily_curve=False, scenarios=[drop])
    generate(gen, 6 * 60, 500)
    before, during, after = _per_phase(gen, "wechat", [60, 120, 240, 300])
    baseline = before.clicks / before.impressions
    assert during.clicks / during.impressions == pytest.approx(0.4 * baseline, rel=0.15)
    assert after.clicks / after.impressions == pytest.approx(baseline, rel=0.15)
    other = _per_phase(gen, "douyin", [60, 120, 240])
    other_ctr = [phase.clicks / phase.impressions for phase in other]
    assert other_ctr[1] == pytest.approx(other_ctr[0], rel=0.15)


def test_spend_surge_triples_spend_per_click() -> None:
    gen = TrafficGenerator(22, daily_curve=False, scenarios=[SpendSurgeScenario(channel="taobao", at_s=120)])
    generate(gen, 4 * 60, 500)
    before, during = _per_phase(gen, "taobao", [0, 120, 240])
    assert (during.spend / during.clicks) / (before.spend / before.clicks) == pytest.approx(3.0, rel=0.1)
    assert during.clicks / during.impressions == pytest.approx(before.clicks / before.impressions, rel=0.15)


def test_tracker_outage_silences_one_channel_for_its_period() -> None:
    outage = TrackerOutage(channel="jd", at_s=60, for_s=60)
    gen = TrafficGenerator(23, daily_curve=False, scenarios=[outage])
    records = generate(gen, 180, 1000)
    jd_sent = [sent for _, key, _, sent, _ in records if key == b"jd"]
    assert not [s for s in jd_sent if T0 + 60_000 <= s < T0 + 120_000]
    assert any(s < T0 + 60_000 for s in jd_sent) and any(s >= T0 + 120_000 for s in jd_sent)
    others = [sent for _, key, _, sent, _ in records if key != b"jd" and T0 + 60_000 <= sent < T0 + 120_000]
    assert len(others) > 10_000


def test_bad_records_are_really_malformed_in_every_way() -> None:
    gen = TrafficGenerator(24, scenarios=[BadRecords(fraction=0.05)])
    records = generate(gen, 60, 1000)
    counted = assert_truth_matches(gen, records, 60)
    assert set(counted["reasons"]) == {
        "not_json",
        "missing_field",
        "mistyped_field",
        "unknown_type",
        "negative_amount",
        "wrong_currency",
        "future_ts",
        "oversized",
    }
    assert sum(counted["reasons"].values()) == pytest.approx(0.05 * len(records), rel=0.1)


def test_late_events_arrive_both_within_and_beyond_the_grace_period() -> None:
    gen = TrafficGenerator(25, scenarios=[LateEvents(fraction=0.04, beyond_share=0.5)], grace_s=60)
    records = generate(gen, 120, 500)
    assert_truth_matches(gen, records, 60)
    late = sum(k["late"] for k in gen.truth.kinds.values())
    within = sum(gen.truth.late_within_grace.values())
    assert late == pytest.approx(within, rel=0.2) and late > 500
    backdated = [orjson.loads(v)["ts"] < sent - 1000 for t, _, v, sent, _ in records if t == "clicks"]
    assert sum(backdated) == pytest.approx(late + within, rel=0.05)


def test_duplicates_are_byte_identical_resends_on_the_same_partition() -> None:
    gen = TrafficGenerator(26, scenarios=[Duplicates(fraction=0.03)])
    records = generate(gen, 60, 1000)
    first_seen: dict[bytes, tuple[int, tuple[str, bytes, int]]] = {}
    resends = 0
    for position, (topic, key, value, _, partition) in enumerate(records):
        if value in first_seen:
            earlier, where = first_seen[value]
            assert where == (topic, key, partition) and earlier < position
            resends += 1
        first_seen.setdefault(value, (position, (topic, key, partition)))
    assert resends == sum(k["duplicate"] for k in gen.truth.kinds.values()) > 0
    assert_truth_matches(gen, records, 60)


def test_scenarios_combine() -> None:
    scenarios = [CtrDrop(channel="baidu", at_s=0, factor=0.5), CtrDrop(channel="baidu", at_s=0, factor=0.5)]
    effects = TrafficGenerator(1, scenarios=scenarios).effects_at(T0)
    assert effects.ctr == {"baidu": 0.25}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    grace_s=st.sampled_from([0.0, 5.0, 30.0, 60.0, 300.0]),
    partitions=st.integers(1, 5),
    fraction=st.sampled_from([0.01, 0.05, 0.2]),
    outage=st.booleans(),
)
def test_ground_truth_equals_a_recount_of_what_was_sent(
    seed: int, grace_s: float, partitions: int, fraction: float, outage: bool
) -> None:
    scenarios = [
        BadRecords(fraction=fraction),
        LateEvents(fraction=fraction),
        Duplicates(fraction=fraction),
        CtrDrop(at_s=30),
        SpendSurgeScenario(at_s=40),
        *([TrackerOutage(at_s=20, for_s=40)] if outage else []),
    ]
    gen = TrafficGenerator(seed, scenarios=scenarios, grace_s=grace_s, partitions=partitions)
    records = generate(gen, 120, 200)
    assert_truth_matches(gen, records, grace_s)


def test_ground_truth_json_rolls_up_consistently() -> None:
    gen = TrafficGenerator(31, scenarios=[BadRecords(), LateEvents(), Duplicates()])
    generate(gen, 150, 300)
    data = orjson.loads(gen.truth.to_json())
    assert data["start_ms"] == T0 and data["end_ms"] == T0 + 150_000
    assert data["channels"] == list(DEFAULT_CHANNELS)
    kinds = ("valid", "invalid", "late", "duplicate")
    assert data["sent"] == sum(counts[k] for counts in data["records"].values() for k in kinds)
    assert data["sent"] == sum(n for parts in data["partitions"].values() for n in parts.values())
    by_campaign = {(t["channel"], t["campaign"]): t for t in data["totals"]}
    for channel_total in data["channel_totals"]:
        rows = [t for (ch, _), t in by_campaign.items() if ch == channel_total["channel"]]
        for name in ("impressions", "clicks", "visits", "carts", "orders"):
            assert channel_total[name] == sum(r[name] for r in rows)
        assert channel_total["gmv"] == pytest.approx(sum(r["gmv"] for r in rows), abs=0.005)
    minute_clicks = sum(m["clicks"] for m in data["minutes"])
    assert minute_clicks == sum(t["clicks"] for t in data["totals"])


# ------------------------------------------------------------------------------------------------- parsing


def test_parse_scenario_reads_names_and_parameters() -> None:
    drop = parse_scenario("ctr-drop:channel=wechat,at=2m,for=90s,factor=0.3")
    assert drop == CtrDrop(channel="wechat", at_s=120, for_s=90, factor=0.3)
    assert parse_scenario("late-events:fraction=0.1,beyond=0.2") == LateEvents(fraction=0.1, beyond_share=0.2)
    assert parse_scenario("tracker-outage:for=end") == TrackerOutage(for_s=None)
    for bad in ("nope", "ctr-drop:fraction=0.1", "duplicates:fraction=2", "ctr-drop:at=soon"):
        with pytest.raises(ValueError):
            parse_scenario(bad)


def test_scenarios_bind_to_the_runs_channels() -> None:
    gen = TrafficGenerator(
        1, channels=["a", "b", "c"], scenarios=[CtrDrop(), SpendSurgeScenario(), TrackerOutage()]
    )
    assert [s.channel for s in gen.scenarios] == ["a", "b", "c"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="not simulated"):
        TrafficGenerator(1, channels=["a"], scenarios=[CtrDrop(channel="douyin")])


def test_phases_describe_where_each_scenario_stands() -> None:
    gen = TrafficGenerator(1, scenarios=[CtrDrop(channel="douyin", at_s=60, for_s=60)], origin_ms=T0)
    assert gen.phases(T0 + 30_000) == ["ctr-drop douyin: starts in 30s"]
    assert gen.phases(T0 + 90_000) == ["ctr-drop douyin: ACTIVE"]
    assert gen.phases(T0 + 150_000) == ["ctr-drop douyin: over"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("1.5d", 129600)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


def test_unknown_channels_get_plausible_profiles() -> None:
    gen = TrafficGenerator(1, channels=["kuaishou", "bilibili"], campaigns_per_channel=2, daily_curve=False)
    generate(gen, 120, 1000)
    assert {c.campaign for c in gen.campaigns} >= {"kuaishou-spring-sale", "bilibili-brand-awareness"}
    for t in gen.truth.channel_totals().values():
        assert 0.01 < t.clicks / t.impressions < 0.04 and t.gmv > t.spend
