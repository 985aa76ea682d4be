"""Reading a /metrics page: the samples the demo, the tests and the benchmarks count."""

from __future__ import annotations

from adpulse.metrics_page import label, metric_samples, metric_sum, sums_by

PAGE = """\
# HELP adpulse_events_total Source records by outcome.
# TYPE adpulse_events_total counter
adpulse_events_total{topic="clicks",outcome="accepted"} 3.0
adpulse_events_total{topic="orders",outcome="accepted"} 2.0
adpulse_events_total{topic="orders",outcome="late"} 1.0
adpulse_events_total_created{topic="orders",outcome="late"} 1.7e+09
adpulse_alerts_firing{kind="anomaly",subkind="x",channel="douyin"} 4.0
adpulse_event_time_lag_seconds 0.5
"""


def test_samples_are_of_exactly_the_name() -> None:
    assert [v for _, v in metric_samples(PAGE, "adpulse_events_total")] == [3.0, 2.0, 1.0]
    assert list(metric_samples(PAGE, "adpulse_event_time_lag_seconds")) == [("", 0.5)]
    assert list(metric_samples(None, "adpulse_events_total")) == []


def test_sums_match_whole_labels() -> None:
    assert metric_sum(PAGE, "adpulse_events_total") == 6.0
    assert metric_sum(PAGE, "adpulse_events_total", outcome="late") == 1.0
    assert metric_sum(PAGE, "adpulse_alerts_firing", kind="anomaly", channel="douyin") == 4.0
    assert metric_sum(PAGE, "adpulse_alerts_firing", kind="x") == 0.0  # not a match of `subkind`
    assert metric_sum(None, "adpulse_events_total") == 0.0
    assert sums_by(PAGE, "adpulse_events_total", "outcome") == {"accepted": 5.0, "late": 1.0}
    assert label('{kind="anomaly",subkind="x"}', "subkind") == "x"
