"""Threshold rules: table-driven cases and the validated rules file."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.rules import Match, RulesConfig, ThresholdRule, default_rules, evaluate_thresholds, load_rules

BOUNDS = ("2026-11-24T10:00:00+08:00", "2026-11-24T11:00:00+08:00")


def counts(**kw: float) -> dict[str, float]:
    base = {"impressions": 0, "clicks": 0, "visits": 0, "carts": 0, "orders": 0, "gmv": 0.0, "spend": 0.0}
    return {**base, **kw}


CASES = [
    # (name, counts, expected metrics firing)
    ("on target", counts(impressions=100_000, clicks=2_500, orders=150, gmv=60_000, spend=20_000), set()),
    (
        "ctr below 2 %",
        counts(impressions=100_000, clicks=1_500, orders=150, gmv=60_000, spend=20_000),
        {"ctr"},
    ),
    (
        "ctr exactly 2 % is fine",
        counts(impressions=100_000, clicks=2_000, orders=120, gmv=48_000, spend=1),
        set(),
    ),
    ("ctr low but too few impressions", counts(impressions=4_000, clicks=10), set()),
    (
        "cvr below 5 %",
        counts(impressions=100_000, clicks=2_500, orders=100, gmv=40_000, spend=20_000),
        {"cvr"},
    ),
    ("roi below 1", counts(impressions=100_000, clicks=2_500, orders=150, gmv=45_000, spend=50_000), {"roi"}),
    (
        "roi low but spend below the minimum",
        counts(impressions=10_000, clicks=250, orders=13, gmv=300, spend=400),
        set(),
    ),
    (
        "aov below 300",
        counts(impressions=100_000, clicks=2_500, orders=150, gmv=40_000, spend=20_000),
        {"aov"},
    ),
    ("no clicks: cvr is no data, not 0", counts(impressions=100_000, clicks=0), {"ctr"}),
]


@pytest.mark.parametrize(("name", "window_counts", "firing"), CASES, ids=[c[0] for c in CASES])
def test_seed_targets(name: str, window_counts: dict[str, float], firing: set[str]) -> None:
    findings, judged = evaluate_thresholds(default_rules(), "douyin", None, "1h", window_counts, BOUNDS)
    assert {f.metric for f in findings} == firing
    assert {f.fingerprint for f in findings} <= set(judged)
    for finding in findings:
        assert finding.kind == "threshold" and finding.channel == "douyin" and finding.campaign is None
        assert finding.summary and finding.description and finding.threshold is not None


def test_roi_below_one_is_critical_and_says_pause() -> None:
    findings, _ = evaluate_thresholds(
        default_rules(),
        "jd",
        "jd-1111",
        "1h",
        counts(impressions=50_000, clicks=1_200, orders=80, gmv=30_000, spend=40_000),
        BOUNDS,
    )
    roi = next(f for f in findings if f.metric == "roi")
    assert roi.severity == "critical" and "pausing" in roi.description
    assert roi.value == pytest.approx(0.75) and roi.campaign == "jd-1111"


def test_only_configured_windows_channels_and_levels_are_judged() -> None:
    rule = ThresholdRule(
        metric="ctr", below=0.02, windows=("1d",), match=Match(channel=("wechat",)), level="channel"
    )
    low = counts(impressions=100_000, clicks=100)
    assert evaluate_thresholds([rule], "wechat", None, "1h", low, BOUNDS) == ([], {})
    assert evaluate_thresholds([rule], "douyin", None, "1d", low, BOUNDS) == ([], {})
    assert evaluate_thresholds([rule], "wechat", "c1", "1d", low, BOUNDS) == ([], {})
    findings, judged = evaluate_thresholds([rule], "wechat", None, "1d", low, BOUNDS)
    assert len(findings) == 1 and len(judged) == 1


def test_above_rules_fire_on_high_values() -> None:
    rule = ThresholdRule(metric="cpc", above=5.0)
    findings, _ = evaluate_thresholds([rule], "baidu", None, "1h", counts(clicks=100, spend=800.0), BOUNDS)
    assert [f.metric for f in findings] == ["cpc"] and "above" in findings[0].summary


def test_rules_file_is_validated_with_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text("rules:\n  - metric: ctr\n    below: 0.015\n    windows: [1m, 1h]\n")
    assert load_rules(good).rules[0].windows == ("1m", "1h")
    assert load_rules(None) == RulesConfig()
    for text, needle in [
        ("rules:\n  - metric: ctr\n", "exactly one of"),
        ("rules:\n  - metric: ctr\n    below: 0.02\n    min_volume: {views: 3}\n", "unknown min_volume"),
        ("rules:\n  - metric: ctx\n    below: 0.02\n", "rules.0.metric"),
        ("rules: [\n", "not valid YAML"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=needle) as info:
            load_rules(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_rules(tmp_path / "missing.yaml")
