"""Soak: one worker under simulated traffic with scenarios for a long time, sampled every few seconds.

A fresh embedded stack (Tansu or Kafka, and valkey, on loopback ports), ONE ``python -m adpulse worker`` and
``python -m adpulse simulate`` in processes of their own: the first backfills ``--history`` minutes at full
speed (so the anomaly detectors have a baseline); once the worker has folded them, the second runs live at
``--rate`` records/s for ``--minutes``, with scenarios spread over the live part: a CTR drop, a spend surge, a
site-tracker outage (clicks stop, spend goes on), a burst of malformed records, late events and duplicates.
Every ``--interval`` seconds the script samples the worker's resident memory (VmRSS), CPU, events/s
(``adpulse_events_total``), the fold group's uncommitted records (end offsets of the source topics − its
committed offsets), the event-time lag, the DLQ count (``adpulse_dlq_records_total``) and the alerts
(``adpulse_alerts_total``: firing state changes). The samples go to a CSV and a PNG plot under ``--out``
(default ``benchmarks/results/``, git-ignored), the figures to a section of BENCHMARKS.md.

    python benchmarks/soak.py --minutes 30          # or: make soak
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (
    REPO,
    Started,
    add_report_args,
    broker_env,
    command_and_machine,
    free_ports,
    publish,
    section_head,
    section_markers,
)
from procstat import cpu_seconds, status_kb

from adpulse.metrics_page import metric_sum, read_metrics
from adpulse.settings import Settings, redacted_url

SOURCES = ("clicks", "orders", "spend")
#: Scenarios of the live part: (simulate scenario, start and length as fractions of the live minutes).
SCENARIOS: tuple[tuple[str, float, float], ...] = (
    ("ctr-drop:channel=douyin", 0.10, 0.20),
    ("bad-records:fraction=0.05", 0.25, 0.05),
    ("spend-surge:channel=taobao", 0.35, 0.20),
    ("late-events:fraction=0.02", 0.50, 0.10),
    ("tracker-outage:channel=wechat,spend=keep", 0.65, 0.10),
    ("duplicates:fraction=0.02", 0.80, 0.10),
)


#: The event-time lag (s) under which the worker has caught up with the history.
CAUGHT_UP_LAG_S = 10.0


def markers(broker: str) -> tuple[str, str]:
    """The generated section's markers: one section per broker."""
    return section_markers("soak.py", broker)


# --------------------------------------------------------------------------------------------- pure helpers


def scenario_args(live_s: float) -> list[tuple[str, float, float]]:
    """``(--scenario value, start s, end s)`` of every scenario of a live run of ``live_s`` seconds, its
    times counted from the run's start."""
    out = []
    for spec, at, length in SCENARIOS:
        start = at * live_s
        end = start + length * live_s
        sep = "," if ":" in spec else ":"
        out.append((f"{spec}{sep}at={start:.0f}s,for={end - start:.0f}s", start, end))
    return out


def sent_records(log: str) -> int | None:
    """The records a finished ``adpulse simulate`` says it sent (its summary line), or None."""
    found = re.search(r"^sent (\d+) records in", log, re.MULTILINE)
    return int(found[1]) if found else None


def folded(events: float, history_log: Path) -> bool:
    """Whether the worker counted every record the (finished) history run sent."""
    sent = sent_records(history_log.read_text(errors="replace")) if history_log.exists() else None
    return sent is not None and events >= sent


def per_second(before: float, after: float, seconds: float) -> float:
    """The growth of a counter per second (0 when no time passed or the counter was reset)."""
    return (after - before) / seconds if seconds > 0 and after >= before else 0.0


def consumer_lag(ends: dict[tuple[str, int], int], committed: dict[tuple[str, int], int]) -> int:
    """Records the group has not committed yet over all partitions (a partition without a commit lags by
    its whole log)."""
    return sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())


def growth_per_hour(times_s: list[float], values: list[float]) -> float:
    """The least-squares slope of ``values`` over ``times_s``, per hour (0 with fewer than two points)."""
    if len(times_s) < 2:
        return 0.0
    mt, mv = statistics.fmean(times_s), statistics.fmean(values)
    var = sum((t - mt) ** 2 for t in times_s)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in zip(times_s, values, strict=True)) / var * 3600


# --------------------------------------------------------------------------------------------- sampling


@dataclass
class Row:
    """One sample (a CSV row)."""

    t_s: float
    phase: str
    rss_mb: float
    cpu_cores: float
    events_total: float
    events_per_s: float
    consumer_lag: int
    event_time_lag_s: float
    dlq_total: float
    alerts_total: float


@dataclass
class Facts:
    """What the run learnt besides the samples."""

    #: Seconds after the traffic started when the live part began (the history was folded).
    live_from_s: float
    peak_mb: float
    #: The scenarios as (spec, start, end) on the plot's clock (seconds since the traffic started).
    spans: list[tuple[str, float, float]]


async def committed_lag(settings: Settings) -> int:
    """The fold stage's consumer lag over every source partition."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.metadata import topic_partitions

    options = settings.kafka_client_options()
    admin = AIOKafkaAdminClient(**options)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        tps = [tp for s in SOURCES for tp in await topic_partitions(options, settings.topic(s))]
        ends = {(tp.topic, tp.partition): offset for tp, offset in (await consumer.end_offsets(tps)).items()}
        offsets = await admin.list_consumer_group_offsets(f"{settings.app_id}-fold", partitions=tps)
        committed = {
            (tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0
        }
    finally:
        await consumer.stop()
        await admin.close()
    return consumer_lag(ends, committed)


def plot(rows: list[Row], spans: list[tuple[str, float, float]], live_from_s: float, path: Path) -> None:
    """The sampled series, one panel each, with the scenarios shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r.t_s / 60 for r in rows]
    panels = (
        ("worker RSS (MiB)", [r.rss_mb for r in rows]),
        ("events/s", [r.events_per_s for r in rows]),
        ("uncommitted records\n(fold group)", [float(r.consumer_lag) for r in rows]),
        ("event-time lag (s)", [r.event_time_lag_s for r in rows]),
        ("DLQ records (total)", [r.dlq_total for r in rows]),
        ("alerts fired (total)", [r.alerts_total for r in rows]),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.0 * len(panels)), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (label, values) in zip(axes, panels, strict=True):
        ax.plot(minutes, values, linewidth=1.2)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.axvline(live_from_s / 60, color="grey", linestyle="--", linewidth=0.8)
        for i, (_name, start, end) in enumerate(spans):
            ax.axvspan(start / 60, end / 60, color=colours[i % len(colours)], alpha=0.12)
    for i, (name, start, _end) in enumerate(spans):
        axes[0].annotate(
            name.split(":")[0],
            (start / 60, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color=colours[i % len(colours)],
            va="bottom",
        )
    axes[-1].set_xlabel(
        "minutes since the history's traffic started (dashed: the worker caught up; live traffic with "
        "scenarios from here)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- the run


def run(args: argparse.Namespace, workdir: Path, started: Started, out: Path) -> tuple[list[Row], Facts]:
    """The stack, the worker, the traffic, the sampling; everything stopped again."""
    from adpulse.stack import EmbeddedStack

    kafka_port, redis_port, worker_port = free_ports(3)
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        web_port=worker_port,
        home=workdir / "home",
        partitions=args.partitions,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADPULSE_")}
    env.update(settings.to_env())
    env.update(broker_env(args.broker))
    env["ADPULSE_ENV_FILE"] = str(workdir / "no.env")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    live_s = args.minutes * 60.0
    spans = scenario_args(live_s)
    embedded = EmbeddedStack(settings, broker=args.broker)
    status = embedded.up(timeout_s=120.0 if args.broker == "kafka" else 30.0)
    try:
        print(f"broker {redacted_url(settings.kafka_bootstrap)}, redis {redacted_url(settings.redis_url)}")

        def spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
            return started.add(
                subprocess.Popen(
                    [sys.executable, "-m", "adpulse", *argv],
                    cwd=workdir,
                    env=env,
                    stdout=(out / f"{name}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

        worker = spawn("worker", ["worker"])
        began = time.monotonic()
        while read_metrics(f"http://127.0.0.1:{worker_port}/metrics") is None:
            if worker.poll() is not None or time.monotonic() - began > 120:
                raise RuntimeError(f"the worker did not start; see {out / 'worker.log'}")
            time.sleep(0.5)
        base = ["simulate", "--rate", str(args.rate), "--flat"]
        t0 = time.monotonic()
        # The history first, as fast as the broker takes it (simulate stops once it reaches the present);
        # the live traffic with the scenarios once the worker has folded it (event-time lag back near zero),
        # so that the scenarios' times, counted from the live run's start, are times on the plot too.
        traffic = (
            spawn("history", [*base, "--seed", str(args.seed + 1), "--start", f"-{args.history:g}m"])
            if args.history > 0
            else None
        )
        rows: list[Row] = []
        live_from: float | None = None
        prev: tuple[float, float, float] | None = None
        end_at: float | None = None
        caught_up = False
        while end_at is None or time.monotonic() < end_at:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}; see {out / 'worker.log'}")
            # The history's simulate ends by itself (exit 0); the live one runs until it is stopped.
            if (
                traffic is not None
                and traffic.poll() is not None
                and (live_from is not None or traffic.returncode)
            ):
                raise RuntimeError(f"simulate exited with {traffic.returncode}; see the logs in {out}")
            text = read_metrics(f"http://127.0.0.1:{worker_port}/metrics")
            now = time.monotonic()
            cpu = cpu_seconds(worker.pid) or 0.0
            events = metric_sum(text, "adpulse_events_total")
            lag_s = metric_sum(text, "adpulse_event_time_lag_seconds")
            if live_from is None and (traffic is None or folded(events, out / "history.log")):
                live_from = now - t0
                end_at = now + live_s
                scenarios = [arg for spec, _s, _e in spans for arg in ("--scenario", spec)]
                traffic = spawn("simulate", [*base, "--seed", str(args.seed), *scenarios])
                print(f"history folded after {live_from:.0f} s; live for {args.minutes:g} min")
            # Counted is not caught up: the fold stage counts a record before the Faust agent has merged
            # its partial, and event time moves only once that is done. Until it is near the present, the
            # samples are the history's backlog, not the live traffic's figures.
            caught_up = caught_up or (live_from is not None and lag_s <= CAUGHT_UP_LAG_S)
            rate = per_second(prev[1], events, now - prev[0]) if prev else 0.0
            cores = per_second(prev[2], cpu, now - prev[0]) if prev else 0.0
            prev = (now, events, cpu)
            row = Row(
                t_s=round(now - t0, 1),
                phase="history" if live_from is None else "live" if caught_up else "catch-up",
                rss_mb=round((status_kb(worker.pid, "VmRSS") or 0) / 1024, 1),
                cpu_cores=round(cores, 3),
                events_total=events,
                events_per_s=round(rate, 1),
                consumer_lag=asyncio.run(committed_lag(settings)),
                event_time_lag_s=round(lag_s, 2),
                dlq_total=metric_sum(text, "adpulse_dlq_records_total"),
                alerts_total=metric_sum(text, "adpulse_alerts_total"),
            )
            rows.append(row)
            print(
                f"  {row.t_s:7.0f} s {row.phase:7} RSS {row.rss_mb:6.0f} MiB  {row.events_per_s:9,.0f} ev/s  "
                f"lag {row.consumer_lag:8,} rec / {row.event_time_lag_s:6.1f} s  DLQ {row.dlq_total:7,.0f}  "
                f"alerts {row.alerts_total:4.0f}",
                flush=True,
            )
            if end_at is None and now - t0 > args.history_timeout:
                raise TimeoutError(f"the history was not folded in {args.history_timeout:.0f} s")
            time.sleep(max(0.0, args.interval - (time.monotonic() - now)))
        if traffic is not None:
            started.stop(traffic, signal.SIGTERM)
        peak_mb = (status_kb(worker.pid, "VmHWM") or 0) / 1024
        started.stop(worker, signal.SIGTERM)
    finally:
        for proc in list(started.procs):
            started.stop(proc)
        embedded.down(components=status.started)
    shifted = [(spec, start + (live_from or 0.0), end + (live_from or 0.0)) for spec, start, end in spans]
    return rows, Facts(live_from or 0.0, peak_mb, shifted)


# --------------------------------------------------------------------------------------------- report


def markdown(
    rows: list[Row], facts: Facts, info: dict[str, str], command: str, args: argparse.Namespace, out: Path
) -> str:
    """The generated section: what ran, and the figures of the live part."""
    live = [r for r in rows if r.phase == "live"]
    catch_up = [r for r in rows if r.phase == "catch-up"]
    t = [r.t_s for r in live]
    rss = [r.rss_mb for r in live]
    rates = [r.events_per_s for r in live[1:]] or [0.0]
    first, last = (live[0], live[-1]) if live else (rows[0], rows[-1])
    growth = growth_per_hour(t, rss)
    lags = [r.event_time_lag_s for r in live] or [0.0]
    rel = out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out
    lines = [
        *section_head(markers(args.broker)[0], "Soak", command, info),
        f"A fresh embedded stack ({args.broker}), ONE `python -m adpulse worker`, and `python -m adpulse "
        f"simulate --rate {args.rate:g} --flat` (6 channels × 3 campaigns) with scenarios: "
        f"{args.history:g} minutes of history backfilled at full speed first (folded in "
        f"{facts.live_from_s:.0f} s), then {args.minutes:g} minutes live; the figures below leave out the "
        f"{len(catch_up) * args.interval:g} s of samples before the worker had caught up with the history "
        f"(event-time lag back under {CAUGHT_UP_LAG_S:g} s). Scenarios (minutes into the live part): "
        + "; ".join(
            f"`{spec.split(',at=')[0]}` {at * args.minutes:.1f}–{(at + length) * args.minutes:.1f}"
            for spec, at, length in SCENARIOS
        )
        + f". Sampled every {args.interval:g} s: {len(rows)} samples, {len(live)} live; CSV and plot in "
        f"`{rel}/` (git-ignored).",
        "",
        "| figure (live part) | value |",
        "|---|---|",
        f"| worker RSS first / last / peak (VmHWM) | {first.rss_mb:.0f} / {last.rss_mb:.0f} / "
        f"{facts.peak_mb:.0f} MiB |",
        f"| RSS trend (least squares) | {growth:+.1f} MiB per hour |",
        f"| events/s median (min – max) | {statistics.median(rates):,.0f} ({min(rates):,.0f} – "
        f"{max(rates):,.0f}) |",
        f"| worker CPU median | {statistics.median([r.cpu_cores for r in live] or [0.0]):.2f} cores |",
        f"| consumer lag median / max | {statistics.median([r.consumer_lag for r in live] or [0]):,.0f} / "
        f"{max([r.consumer_lag for r in live] or [0]):,} records |",
        f"| event-time lag median / max | {statistics.median(lags):.1f} / {max(lags):.1f} s |",
        f"| DLQ records (whole run; during the live part) | {last.dlq_total:,.0f}; "
        f"{last.dlq_total - first.dlq_total:,.0f} |",
        f"| alerts fired (whole run; during the live part) | {last.alerts_total:,.0f}; "
        f"{last.alerts_total - first.alerts_total:,.0f} |",
        "",
        "*RSS* is VmRSS of the worker process; *events/s* the growth of `adpulse_events_total` (every "
        "outcome) between samples; *consumer lag* the end offsets of the source topics minus the fold "
        "group's committed offsets (the fold stage commits when a block closes, every "
        "`ADPULSE_BLOCK_RECORDS` records of a partition, so up to that many per partition rest "
        "uncommitted at low rates: the event-time lag is the finer measure of keeping up); *alerts* "
        "`adpulse_alerts_total` (firing state changes).",
        markers(args.broker)[1],
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One worker under simulated traffic with scenarios for a long time; CSV, PNG, figures.",
        epilog="Example: python benchmarks/soak.py --minutes 30",
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="live minutes (default 30)")
    parser.add_argument(
        "--history", type=float, default=60.0, help="minutes of history backfilled first (default 60)"
    )
    parser.add_argument("--rate", type=float, default=2000.0, help="records/s of simulated traffic")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the adpulse topics")
    parser.add_argument("--seed", type=int, default=3, help="seed of the traffic")
    add_report_args(parser)
    parser.add_argument(
        "--history-timeout", type=float, default=1800.0, help="give up if the history takes longer (s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="directory of the CSV, the PNG and the logs (default benchmarks/results, git-ignored)",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.history < 0 or args.interval <= 0 or args.rate <= 0:
        parser.error("--minutes, --interval and --rate must be positive, --history ≥ 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM stops the run like Ctrl-C: the processes it started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command, info = command_and_machine("soak.py", argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    out = args.out / f"soak-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="adpulse-soak-"))
    started = Started()
    try:
        rows, facts = run(args, workdir, started, out)
    finally:
        started.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    with (out / "soak.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    plot(rows, facts.spans, facts.live_from_s, out / "soak.png")
    print(f"wrote {out / 'soak.csv'} and {out / 'soak.png'}")
    publish(markdown(rows, facts, info, command, args, out), args, markers(args.broker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
