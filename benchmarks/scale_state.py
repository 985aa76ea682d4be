"""Worker memory, snapshot and judging time, and event-loop stalls over a simulated month of many campaigns.

One worker on a real broker and Redis (the embedded stack) counts traffic of ``--channels`` channels with
``--campaigns`` live campaigns each, over ``--days`` of event time that runs as fast as the worker keeps up:
the producer sends one simulated hour, then waits until the worker's watermark is close behind. Every day
``--churn`` of each channel's campaigns stop and as many new ones start, so the campaigns ever seen keep
growing while the live ones do not: retention has to bound what the worker keeps. At each simulated day's
end the script samples the worker's resident memory, its table size, the time its snapshots and judging
took (``adpulse_snapshot_seconds``, ``adpulse_judge_seconds``), its event-loop stalls
(``adpulse_event_loop_lag_seconds``) and Redis (memory, snapshot rows, judged marks). Results go to stdout
and to a section of BENCHMARKS.md.

    python benchmarks/scale_state.py --channels 10 --campaigns 10000 --days 30 --broker kafka  # the full run
    python benchmarks/scale_state.py --campaigns 200 --days 3 --no-write  # a quick one
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (
    REPO,
    Started,
    add_report_args,
    broker_env,
    command_and_machine,
    free_port,
    publish,
    section_head,
    section_markers,
)
from procstat import status_kb
from throughput import WORKER_CODE, create_topics, stack

from adpulse.metrics_page import metric_sum, read_metrics
from adpulse.settings import redacted_url
from streams.keys import Keys

DAY_S = 86_400
HOUR_S = 3_600
#: The worker may fall this far behind the producer (event time) before the producer waits.
AHEAD_S = 10 * 60
#: Event-loop lag above this is a stall (the issue's bound).
STALL_S = 0.1


@dataclass(frozen=True, slots=True)
class Day:
    """One sample, taken once the worker's event time passed the end of a simulated day."""

    day: int
    wall_s: float
    rss_mb: float
    bucket_keys: float
    snapshot_mean_ms: float
    snapshot_ticks: float
    judge_mean_ms: float
    stalls: float
    gc_pauses: float
    gc_freezes: float
    max_lag_s: float
    redis_mb: float
    kpi_rows: int
    judged_marks: int
    campaigns_seen: int


class Traffic:
    """The simulated trackers: records of one event-time minute, with campaigns that come and go."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.rng = random.Random(seed)
        self.channels = [f"ch{i:02d}" for i in range(args.channels)]
        self.campaigns = args.campaigns
        self.per_minute = args.records_per_minute
        self.turnover = max(0, round(args.campaigns * args.churn))
        self.seq = 0
        self.seen: set[str] = set()

    def live(self, day: int) -> range:
        """The campaign numbers live on ``day`` (each day the oldest ``turnover`` stop, as many start)."""
        first = day * self.turnover
        return range(first, first + self.campaigns)

    def minute(self, start_s: int, day: int, partitions: int) -> list[tuple[str, int, bytes, bytes]]:
        """(topic short name, partition, key, value) of one minute's records."""
        live = self.live(day)
        records = []
        for _ in range(self.per_minute):
            index = self.rng.randrange(len(self.channels))
            channel = self.channels[index]
            campaign = f"c{live[self.rng.randrange(len(live))]:06d}"
            self.seen.add(f"{channel}/{campaign}")
            self.seq += 1
            event = {
                "event_id": f"s{self.seq}",
                "ts": (start_s + self.rng.randrange(60)) * 1000,
                "channel": channel,
                "campaign": campaign,
            }
            # A mix that meets the seed targets (CTR ~3 %, CVR ~10 %, AOV ~600, ROI well above 1): only
            # what retention bounds should grow, not a pile of threshold alerts.
            draw = self.rng.random()
            if draw < 0.40:
                topic, body = "clicks", {"type": "impression", "count": self.rng.randint(20, 40)}
            elif draw < 0.80:
                topic, body = "clicks", {"type": "click"}
            elif draw < 0.88:
                topic, body = "clicks", {"type": "visit"}
            elif draw < 0.92:
                topic, body = "clicks", {"type": "cart"}
            elif draw < 0.96:
                amount = round(self.rng.uniform(300, 900), 2)
                topic, body = "orders", {"order_id": f"o{self.seq}", "amount": amount}
            else:
                topic, body = "spend", {"cost": round(self.rng.uniform(0.5, 20), 2)}
            # Round robin over the partitions (trackers need not key by channel), so that every source
            # partition carries event time forward.
            records.append((topic, self.seq % partitions, channel.encode(), orjson.dumps({**event, **body})))
        return records


async def produce(bootstrap: str, prefix: str, records: list[tuple[str, int, bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = [
            await producer.send(prefix + topic, value, key=key, partition=partition)
            for topic, partition, key, value in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def redis_sample(redis_url: str, prefix: str) -> tuple[float, int, int, float | None]:
    """Redis memory (MiB), snapshot rows, judged marks and the worker's watermark."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = Keys(prefix)
        memory = float(client.info("memory")["used_memory"]) / 2**20
        watermark = client.hget(keys.kpis_meta, "watermark_s")
        return (
            memory,
            int(client.hlen(keys.kpis)),
            int(client.hlen(keys.judged)),
            (float(watermark) if watermark is not None else None),
        )
    finally:
        client.close()


def histogram(text: str | None, name: str) -> tuple[float, float]:
    """(sum, count) of a histogram on a /metrics page."""
    return metric_sum(text, f"{name}_sum"), metric_sum(text, f"{name}_count")


def over(text: str | None, histogram_name: str, bound_s: float = STALL_S) -> float:
    """Observations of a histogram (all label values) above ``bound_s`` so far."""
    total = metric_sum(text, f"{histogram_name}_count")
    within = metric_sum(text, f"{histogram_name}_bucket", le=f"{bound_s}")
    return total - within


def run(args: argparse.Namespace) -> list[Day]:
    workdir = Path(tempfile.mkdtemp(prefix="scale-state-", dir=args.workdir))
    started = Started()
    tag = uuid.uuid4().hex[:6]
    prefix, redis_prefix = f"scale-{tag}.", f"scale-{tag}"
    traffic = Traffic(args, args.seed)
    first_day = int(time.time()) // DAY_S * DAY_S - args.days * DAY_S
    days: list[Day] = []
    try:
        with stack(args, workdir, started) as st:
            print(
                f"broker {redacted_url(st.bootstrap)}, redis {redacted_url(st.redis_url)}, work dir {workdir}"
            )
            asyncio.run(create_topics(st.bootstrap, prefix, args.partitions))
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("ADPULSE_")}
            env.update(
                ADPULSE_KAFKA_BOOTSTRAP=st.bootstrap,
                ADPULSE_REDIS_URL=st.redis_url,
                ADPULSE_WEB_PORT=str(port),
                ADPULSE_TOPIC_PREFIX=prefix,
                ADPULSE_REDIS_PREFIX=redis_prefix,
                ADPULSE_PARTITIONS=str(args.partitions),
                ADPULSE_APP_ID=f"scale-{tag}",
                ADPULSE_HOME=str(workdir / "home"),
                ADPULSE_ENV_FILE=str(workdir / "no.env"),
                ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL=str(args.max_campaigns or args.campaigns),
                ADPULSE_BUCKET_SHARDS=str(args.bucket_shards),
                # Judge the whole month (a first start judges only the last day of history by default),
                # and never let the producer's pauses count as idle partitions.
                ADPULSE_ALERT_LOOKBACK_S=str((args.days + 2) * DAY_S),
                ADPULSE_IDLE_PARTITION_S="3600",
                ADPULSE_FLUSH_INTERVAL_S=str(args.flush_interval),
                ADPULSE_GC_FREEZE_AFTER_S=str(args.gc_freeze_after_s),
                ADPULSE_GC_SWEEP_S=str(args.gc_sweep_s),
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            )
            env.update(broker_env(args.broker))
            log_path = workdir / "worker.log"
            with log_path.open("wb") as log_file:
                proc = started.add(
                    subprocess.Popen(
                        [sys.executable, "-c", WORKER_CODE],
                        cwd=workdir,
                        env=env,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            url = f"http://127.0.0.1:{port}/metrics"
            began = time.perf_counter()
            # snapshot sum/count, judge sum/count, stalls, garbage collections over 0.1 s, so far
            previous = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            for day in range(args.days):
                for hour in range(24):
                    hour_s = first_day + day * DAY_S + hour * HOUR_S
                    records = [
                        record
                        for minute in range(60)
                        for record in traffic.minute(hour_s + minute * 60, day, args.partitions)
                    ]
                    asyncio.run(produce(st.bootstrap, prefix, records))
                    wait_for_watermark(
                        proc, log_path, st.redis_url, redis_prefix, hour_s + HOUR_S - AHEAD_S, args
                    )
                day_end = first_day + (day + 1) * DAY_S
                wait_for_watermark(proc, log_path, st.redis_url, redis_prefix, day_end - 120, args)
                text = read_metrics(url) or ""
                snap_sum, snap_count = histogram(text, "adpulse_snapshot_seconds")
                judge_sum, judge_count = histogram(text, "adpulse_judge_seconds")
                stalled = over(text, "adpulse_event_loop_lag_seconds")
                collections = over(text, "adpulse_gc_pause_seconds")
                p_snap_sum, p_snap_count, p_judge_sum, p_judge_count, p_stalls, p_collections = previous
                memory, rows, judged, _ = redis_sample(st.redis_url, redis_prefix)
                sample = Day(
                    day=day + 1,
                    wall_s=time.perf_counter() - began,
                    rss_mb=(status_kb(proc.pid, "VmRSS") or 0) / 1024,
                    bucket_keys=metric_sum(text, "adpulse_bucket_keys"),
                    snapshot_mean_ms=1000 * (snap_sum - p_snap_sum) / max(1.0, snap_count - p_snap_count),
                    snapshot_ticks=snap_count - p_snap_count,
                    judge_mean_ms=1000 * (judge_sum - p_judge_sum) / max(1.0, judge_count - p_judge_count),
                    stalls=stalled - p_stalls,
                    gc_pauses=collections - p_collections,
                    gc_freezes=metric_sum(text, "adpulse_gc_freezes_total"),
                    max_lag_s=metric_sum(text, "adpulse_event_loop_lag_max_seconds"),
                    redis_mb=memory,
                    kpi_rows=rows,
                    judged_marks=judged,
                    campaigns_seen=len(traffic.seen),
                )
                previous = (snap_sum, snap_count, judge_sum, judge_count, stalled, collections)
                days.append(sample)
                print(
                    f"day {sample.day:>2}: {sample.wall_s:7.0f} s, RSS {sample.rss_mb:6.0f} MiB, "
                    f"{sample.bucket_keys:6.0f} buckets, snapshot {sample.snapshot_mean_ms:6.1f} ms, "
                    f"judge {sample.judge_mean_ms:6.1f} ms, stalls>{STALL_S}s {sample.stalls:3.0f} "
                    f"(gc {sample.gc_pauses:.0f}, {sample.gc_freezes:.0f} freezes so far), max lag "
                    f"{sample.max_lag_s:5.3f} s, Redis {sample.redis_mb:6.0f} MiB, {sample.kpi_rows} rows, "
                    f"{sample.judged_marks} judged, {sample.campaigns_seen} campaigns seen",
                    flush=True,
                )
            dlq = metric_sum(read_metrics(url), "adpulse_dlq_records_total")
            if dlq:
                print(f"warning: {dlq:.0f} records went to the DLQ (the producer outran the grace?)")
    finally:
        started.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return days


def wait_for_watermark(
    proc: subprocess.Popen[bytes],
    log_path: Path,
    redis_url: str,
    redis_prefix: str,
    target_s: float,
    args: argparse.Namespace,
) -> None:
    """Wait until the worker's event time reaches ``target_s``."""
    deadline = time.monotonic() + args.timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the worker exited with {proc.returncode}; see {log_path}:\n{log_path.read_text()[-3000:]}"
            )
        watermark = redis_sample(redis_url, redis_prefix)[3]
        if watermark is not None and watermark >= target_s:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the worker's event time stayed at {watermark} (waiting for {target_s}); see {log_path}"
            )
        time.sleep(0.2)


def growth(days: list[Day]) -> tuple[float, float]:
    """Mean and largest day-over-day RSS growth (%) after the first day (from its end on)."""
    steps = [100.0 * (b.rss_mb - a.rss_mb) / a.rss_mb for a, b in zip(days, days[1:], strict=False)]
    if not steps:
        return float("nan"), float("nan")
    return sum(steps) / len(steps), max(steps)


def markdown(days: list[Day], args: argparse.Namespace, info: dict[str, str], command: str) -> str:
    mean_growth, max_growth = growth(days)
    begin, end = section_markers("scale_state.py", args.broker)
    title = "Bounded state over a simulated month" + ("" if args.broker == "tansu" else " on Apache Kafka")
    lines = section_head(begin, title, command, info)
    lines += [
        f"{args.channels} channels × {args.campaigns:,} live campaigns, {args.churn:.0%} of them replaced "
        f"each day ({days[-1].campaigns_seen:,} campaigns seen in all), {args.records_per_minute:,} records "
        f"per simulated minute, {args.days} simulated days on {args.broker}, {args.partitions} partitions, "
        f"flush every {args.flush_interval} s, {args.bucket_shards} bucket shards, default retentions, "
        + (
            f"survivors of full collections over {args.gc_freeze_after_s} s frozen (sweep every "
            f"{args.gc_sweep_s:.0f} s). "
            if args.gc_freeze_after_s > 0
            else "nothing frozen by full collections. "
        )
        + f"Wall time {days[-1].wall_s / 60:.0f} min.",
        "",
        "| day | wall s | worker RSS MiB | buckets | snapshot ms (mean) | judging ms (mean per tick) "
        "| stalls > 0.1 s | GC pauses > 0.1 s | GC freezes so far | max stall s | Redis MiB | snapshot rows "
        "| judged marks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in days:
        lines.append(
            f"| {d.day} | {d.wall_s:.0f} | {d.rss_mb:.0f} | {d.bucket_keys:.0f} | {d.snapshot_mean_ms:.1f} | "
            f"{d.judge_mean_ms:.1f} | {d.stalls:.0f} | {d.gc_pauses:.0f} | {d.gc_freezes:.0f} | "
            f"{d.max_lag_s:.3f} | "
            f"{d.redis_mb:.0f} | "
            f"{d.kpi_rows:,} | {d.judged_marks:,} |"
        )
    lines += [
        "",
        f"RSS growth per simulated day after the first: mean {mean_growth:.2f} %, largest {max_growth:.2f} % "
        f"(target ≤ 2 %); longest event-loop stall {max(d.max_lag_s for d in days):.3f} s (target ≤ 0.1 s).",
        "",
        end,
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument(
        "--campaigns", type=int, default=1000, help="live campaigns per channel (default 1000)"
    )
    parser.add_argument("--days", type=int, default=30, help="simulated days (default 30)")
    parser.add_argument("--churn", type=float, default=0.1, help="share of campaigns replaced each day (0.1)")
    parser.add_argument("--records-per-minute", type=int, default=600, help="records per simulated minute")
    parser.add_argument(
        "--max-campaigns", type=int, help="ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL (default --campaigns)"
    )
    parser.add_argument("--flush-interval", type=float, default=1.0, help="ADPULSE_FLUSH_INTERVAL_S (1.0)")
    parser.add_argument("--bucket-shards", type=int, default=1, help="ADPULSE_BUCKET_SHARDS (1)")
    parser.add_argument(
        "--gc-freeze-after-s",
        type=float,
        default=0.05,
        help="ADPULSE_GC_FREEZE_AFTER_S (0.05; 0: plain garbage collections, nothing frozen)",
    )
    parser.add_argument(
        "--gc-sweep-s", type=float, default=6 * 3600.0, help="ADPULSE_GC_SWEEP_S (21600; at least 60)"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bootstrap", help="reuse this Kafka-compatible broker instead of starting one")
    parser.add_argument("--broker-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help="reuse this Redis instead of starting valkey-server")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="longest wait for the worker to catch up"
    )
    add_report_args(parser)
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument("--workdir", type=Path, help="where the stack and the worker's log live (a temp dir)")
    args = parser.parse_args(argv)
    if args.days < 2 or args.channels < 1 or args.campaigns < 1 or args.records_per_minute < args.partitions:
        parser.error("--days ≥ 2, --channels and --campaigns ≥ 1, --records-per-minute ≥ --partitions")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command, info = command_and_machine("scale_state.py", argv)
    days = run(args)
    publish(markdown(days, args, info, command), args, section_markers("scale_state.py", args.broker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
