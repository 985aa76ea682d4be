"""alerts.lifecycle.AlertBook: firing, hysteresis, repeats, escalation, resolution, restarts; properties."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.lifecycle import Alert, AlertBook, Policy
from alerts.model import Finding

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def ctr_low(channel: str = "douyin", value: float = 0.012, severity: str = "warning") -> Finding:
    return Finding(
        kind="threshold",
        metric="ctr",
        severity=severity,  # type: ignore[arg-type]
        channel=channel,
        campaign=None,
        value=value,
        summary=f"{channel} CTR {value:.2%} < 2 %",
        description="CTR below target",
        threshold=0.02,
        evidence={"clicks": 120, "impressions": 10_000},
        window="1m",
    )


FP = ctr_low().fingerprint


def run(book: AlertBook, rounds: Iterable[str], start: datetime = T0, step: timedelta = MINUTE) -> list[str]:
    """Feed rounds to the book: 'W'/'C' = a warning/critical finding, '.' = judged OK (value 0.03),
    '-' = not judged. Returns the changes it caused, as 'round:change'."""
    out = []
    for i, code in enumerate(rounds):
        now = start + i * step
        if code in "WC":
            alerts = book.evaluate([ctr_low(severity="warning" if code == "W" else "critical")], [FP], now)
        elif code == ".":
            alerts = book.evaluate([], {FP: 0.03}, now)
        else:
            alerts = book.evaluate([], {}, now)
        out += [f"{i}:{a.change}" for a in alerts]
    return out


@pytest.mark.parametrize(
    ("policy", "rounds", "expected"),
    [
        pytest.param(Policy(), "W", ["0:fired"], id="fires-on-first-finding"),
        pytest.param(Policy(), "WWWWW", ["0:fired"], id="fires-once-while-it-holds"),
        pytest.param(Policy(), "....", [], id="ok-never-fires"),
        pytest.param(Policy(), "W.W.W.W.", ["0:fired"], id="no-flapping-around-threshold"),
        pytest.param(Policy(), "WW..", ["0:fired", "3:resolved"], id="resolves-after-two-ok"),
        pytest.param(Policy(), "W.-.", ["0:fired", "3:resolved"], id="not-judged-keeps-state"),
        pytest.param(
            Policy(), "W..W..", ["0:fired", "2:resolved", "3:fired", "5:resolved"], id="new-episode"
        ),
        pytest.param(
            Policy(resolve_after=1),
            "W.W.",
            ["0:fired", "1:resolved", "2:fired", "3:resolved"],
            id="resolve-after-one",
        ),
        pytest.param(Policy(resolve_after=3), "W..W...", ["0:fired", "6:resolved"], id="resolve-after-three"),
        pytest.param(Policy(for_evaluations=3), "WW.WW.", [], id="pending-needs-consecutive"),
        pytest.param(Policy(for_evaluations=3), "WWW..", ["2:fired", "4:resolved"], id="fires-after-three"),
        pytest.param(Policy(for_evaluations=2), "W-W", ["2:fired"], id="pending-survives-unjudged"),
        pytest.param(Policy(), "WCCC", ["0:fired", "1:escalated"], id="escalates-once"),
        pytest.param(Policy(), "CWC", ["0:fired"], id="no-deescalation-notice"),
        pytest.param(Policy(), "WCW..", ["0:fired", "1:escalated", "4:resolved"], id="escalated-resolves"),
        pytest.param(
            Policy(repeat_interval_s=180), "WWWWWWW", ["0:fired", "3:repeat", "6:repeat"], id="repeats"
        ),
        pytest.param(
            Policy(repeat_interval_s=180),
            "WWCWWWW",
            ["0:fired", "2:escalated", "5:repeat"],
            id="escalation-restarts-repeat-clock",
        ),
        pytest.param(
            Policy(repeat_interval_s=180), "W.WW", ["0:fired", "3:repeat"], id="repeat-across-one-ok"
        ),
    ],
)
def test_sequences(policy: Policy, rounds: str, expected: list[str]) -> None:
    assert run(AlertBook(policy), rounds) == expected


def test_default_repeat_interval_is_four_hours() -> None:
    book = AlertBook()
    assert run(book, "WWWWW", step=timedelta(hours=1)) == ["0:fired", "4:repeat"]


def test_fired_alert_carries_the_finding() -> None:
    book = AlertBook()
    finding = ctr_low(value=0.011)
    [alert] = book.evaluate([finding], [], T0)
    assert alert.status == "firing" and alert.change == "fired"
    assert alert.finding == finding and alert.value == 0.011
    assert alert.fingerprint == FP and alert.severity == "warning"
    assert alert.fired_at == T0 and alert.resolved_at is None


def test_resolution_reports_the_recovered_value_and_the_last_firing_finding() -> None:
    book = AlertBook()
    book.evaluate([ctr_low(value=0.012)], [], T0)
    book.evaluate([ctr_low(value=0.009)], [], T0 + MINUTE)
    assert book.evaluate([], {FP: 0.024}, T0 + 2 * MINUTE) == []
    [resolved] = book.evaluate([], {FP: 0.031}, T0 + 3 * MINUTE)
    assert resolved.status == "resolved"
    assert resolved.value == 0.031
    assert resolved.finding.value == 0.009
    assert resolved.fired_at == T0 and resolved.resolved_at == T0 + 3 * MINUTE
    assert book.firing() == []


def test_plain_iterable_of_judged_fingerprints_resolves_with_no_value() -> None:
    book = AlertBook(Policy(resolve_after=1))
    book.evaluate([ctr_low()], [], T0)
    [resolved] = book.evaluate([], [FP], T0 + MINUTE)
    assert resolved.change == "resolved" and resolved.value is None


def test_ids_are_distinct_per_change_and_stable() -> None:
    book = AlertBook(Policy(repeat_interval_s=60))
    changes = [
        book.evaluate([ctr_low()], [], T0),
        book.evaluate([ctr_low(severity="critical")], [], T0 + MINUTE),
        book.evaluate([ctr_low(severity="critical")], [], T0 + 2 * MINUTE),
        book.evaluate([ctr_low(severity="critical")], [], T0 + 3 * MINUTE),
        book.evaluate([], {FP: 0.03}, T0 + 4 * MINUTE),
        book.evaluate([], {FP: 0.03}, T0 + 5 * MINUTE),
        book.evaluate([ctr_low()], [], T0 + 6 * MINUTE),
    ]
    alerts = [a for round_ in changes for a in round_]
    assert [a.change for a in alerts] == ["fired", "escalated", "repeat", "repeat", "resolved", "fired"]
    assert len({a.id for a in alerts}) == len(alerts)


def test_one_alert_per_fingerprint_per_round_most_severe_wins() -> None:
    book = AlertBook()
    alerts = book.evaluate([ctr_low(severity="critical"), ctr_low(severity="warning")], [], T0)
    assert [(a.change, a.severity) for a in alerts] == [("fired", "critical")]


def test_fingerprints_are_independent_and_ordered() -> None:
    book = AlertBook(Policy(resolve_after=1))
    alerts = book.evaluate([ctr_low("wechat"), ctr_low("douyin")], [], T0)
    assert [a.channel for a in alerts] == ["douyin", "wechat"]
    alerts = book.evaluate([ctr_low("wechat")], {ctr_low("douyin").fingerprint: 0.05}, T0 + MINUTE)
    assert [(a.channel, a.change) for a in alerts] == [("douyin", "resolved")]
    assert [f.channel for f in book.firing()] == ["wechat"]


def test_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AlertBook().evaluate([ctr_low()], [], datetime(2026, 1, 1))


@pytest.mark.parametrize("kwargs", [{"for_evaluations": 0}, {"resolve_after": 0}, {"repeat_interval_s": 0.0}])
def test_policy_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_state_is_json_and_restores_exactly() -> None:
    book = AlertBook(Policy(for_evaluations=2))
    finding = Finding(
        kind="budget",
        metric="spend",
        severity="warning",
        channel="taobao",
        campaign="c-9",
        value=8100.0,
        summary="80 %",
        description="d",
        threshold=8000.0,
        evidence={"owner": "@li", "used": 0.81},
        window="1d",
        window_start="2026-11-24T00:00:00+08:00",
        window_end="2026-11-25T00:00:00+08:00",
        extra_key=("day",),
    )
    book.evaluate([finding, ctr_low()], [], T0)
    book.evaluate([finding], [], T0 + MINUTE)
    state = json.loads(json.dumps(book.to_state()))
    restored = AlertBook.from_state(state, Policy(for_evaluations=2))
    assert restored.to_state() == book.to_state()
    assert restored.firing() == book.firing()
    assert restored.firing()[0].finding == finding


def test_unknown_state_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        AlertBook.from_state({"version": 99, "entries": {}})


def test_changes_name_written_and_removed_entries() -> None:
    book = AlertBook(Policy(resolve_after=1, reopen_s=0))
    other = ctr_low("wechat").fingerprint
    book.evaluate([ctr_low(), ctr_low("wechat")], [], T0)
    delta = book.pop_changes()
    assert set(delta.upserts) == {FP, other} and not delta.deletes
    assert not book.pop_changes()
    book.evaluate([], {FP: 0.05}, T0 + MINUTE)
    delta = book.pop_changes()
    assert delta.upserts == {} and delta.deletes == {FP}
    assert set(book.to_state()["entries"]) == {other}


def test_pending_that_goes_ok_is_deleted_from_the_state() -> None:
    book = AlertBook(Policy(for_evaluations=2))
    book.evaluate([ctr_low()], [], T0)
    assert set(book.pop_changes().upserts) == {FP}
    book.evaluate([], {FP: 0.04}, T0 + MINUTE)
    assert book.pop_changes().deletes == {FP}
    assert book.to_state()["entries"] == {}


def test_a_refire_within_the_hour_continues_the_episode() -> None:
    book = AlertBook()
    [fired] = book.evaluate([ctr_low()], [], T0)
    book.evaluate([], {FP: 0.03}, T0 + MINUTE)
    [resolved] = book.evaluate([], {FP: 0.03}, T0 + 2 * MINUTE)
    assert resolved.change == "resolved" and resolved.duration_s == 120.0
    assert book.firing() == []
    [again] = book.evaluate([ctr_low()], [], T0 + 50 * MINUTE)
    assert again.change == "fired" and again.fired_at == T0 and again.reopened == 1
    assert again.duration_s == 50 * 60.0
    assert [f.fired_at for f in book.firing()] == [T0]
    book.evaluate([], {FP: 0.03}, T0 + 51 * MINUTE)
    [over] = book.evaluate([], {FP: 0.03}, T0 + 52 * MINUTE)
    assert over.fired_at == T0 and over.reopened == 1 and over.duration_s == 52 * 60.0
    assert len({fired.id, resolved.id, again.id, over.id}) == 4


def test_a_refire_after_the_hour_is_a_new_episode_and_the_old_one_is_forgotten() -> None:
    book = AlertBook()
    book.evaluate([ctr_low()], [], T0)
    book.evaluate([], {FP: 0.03}, T0 + MINUTE)
    book.evaluate([], {FP: 0.03}, T0 + 2 * MINUTE)
    book.pop_changes()
    assert FP in book.to_state()["entries"], "kept for an hour, in case it fires again"
    book.evaluate([], {}, T0 + 62 * MINUTE)
    assert book.pop_changes().deletes == {FP} and book.to_state()["entries"] == {}
    [fired] = book.evaluate([ctr_low()], [], T0 + 63 * MINUTE)
    assert fired.fired_at == T0 + 63 * MINUTE and fired.reopened == 0


def test_a_refire_needs_consecutive_findings_like_a_first_firing() -> None:
    book = AlertBook(Policy(for_evaluations=2, resolve_after=1))
    assert run(book, "WW.W.WW") == ["1:fired", "2:resolved", "6:fired"]
    assert book.firing()[0].fired_at == T0 + MINUTE


# -- properties ----------------------------------------------------------------------------------

CHANNELS = ("douyin", "taobao", "wechat")
# One round: per channel, None = not judged, 0.0 = judged OK, "warning"/"critical" = a finding.
rounds_strategy = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=300),  # seconds since the previous round
        st.fixed_dictionaries({c: st.sampled_from([None, 0.0, "warning", "critical"]) for c in CHANNELS}),
    ),
    max_size=40,
)
policies = st.builds(
    Policy,
    for_evaluations=st.integers(1, 3),
    resolve_after=st.integers(1, 3),
    repeat_interval_s=st.sampled_from([60.0, 600.0, 4 * 3600.0]),
    reopen_s=st.sampled_from([0.0, 120.0, 3600.0]),
)


def step(book: AlertBook, now: datetime, round_: dict[str, object]) -> list[Alert]:
    findings = [ctr_low(c, severity=v) for c, v in round_.items() if isinstance(v, str)]
    judged = {ctr_low(c).fingerprint: 0.03 for c, v in round_.items() if v == 0.0}
    return book.evaluate(findings, judged, now)


@settings(max_examples=300, deadline=None)
@given(policy=policies, rounds=rounds_strategy)
def test_state_changes_alternate_and_ids_are_unique_and_reproducible(
    policy: Policy, rounds: list[tuple[int, dict[str, object]]]
) -> None:
    book = AlertBook(policy)
    now = T0
    seen: list[Alert] = []
    for gap_s, round_ in rounds:
        now += timedelta(seconds=gap_s)
        before = json.loads(json.dumps(book.to_state()))
        alerts = step(book, now, round_)
        # A worker that crashed before saving re-evaluates the same round from the saved state.
        again = step(AlertBook.from_state(before, policy), now, round_)
        assert again == alerts
        assert len({a.fingerprint for a in alerts}) == len(alerts)
        seen += alerts
    assert len({a.id for a in seen}) == len(seen)
    for channel in CHANNELS:
        fp = ctr_low(channel).fingerprint
        states = [a.status for a in seen if a.fingerprint == fp and a.change in ("fired", "resolved")]
        assert states == ["firing", "resolved"] * (len(states) // 2) + ["firing"] * (len(states) % 2)
        notices = [a for a in seen if a.fingerprint == fp]
        # Repeats and escalations only ever happen inside an episode that fired.
        open_episode = False
        for alert in notices:
            if alert.change == "fired":
                open_episode = True
            elif alert.change == "resolved":
                open_episode = False
            else:
                assert open_episode
        firing_now = {f.fingerprint for f in book.firing()}
        assert (fp in firing_now) == (bool(states) and states[-1] == "firing")


@settings(max_examples=200, deadline=None)
@given(policy=policies, rounds=rounds_strategy, cut=st.integers(0, 40))
def test_restart_at_any_round_gives_the_same_decisions(
    policy: Policy, rounds: list[tuple[int, dict[str, object]]], cut: int
) -> None:
    def play(restart_at: int | None) -> list[Alert]:
        book = AlertBook(policy)
        now, out = T0, []
        for i, (gap_s, round_) in enumerate(rounds):
            if i == restart_at:
                book = AlertBook.from_state(json.loads(json.dumps(book.to_state())), policy)
            now += timedelta(seconds=gap_s)
            out += step(book, now, round_)
        return out

    assert play(cut) == play(None)


@settings(max_examples=200, deadline=None)
@given(policy=policies, rounds=rounds_strategy)
def test_incremental_changes_rebuild_the_full_state(
    policy: Policy, rounds: list[tuple[int, dict[str, object]]]
) -> None:
    book = AlertBook(policy)
    stored: dict[str, object] = {}
    now = T0
    for gap_s, round_ in rounds:
        now += timedelta(seconds=gap_s)
        step(book, now, round_)
        delta = book.pop_changes()
        stored.update(delta.upserts)
        for fp in delta.deletes:
            stored.pop(fp, None)
        assert stored == book.to_state()["entries"]
