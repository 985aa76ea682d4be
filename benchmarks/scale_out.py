"""Scale-out: 1, 2 and 3 workers on the same topics, against the raw consumer ceiling of the same run.

Per configuration (k workers) and round: fresh topics (``--partitions`` each, enough for every k); k worker
processes start on them while they are empty, with a fresh consumer group and Redis prefix; once both
consumer groups (the fold stage's and Faust's) are Stable with the same k members two polls apart, the
workers are stopped (SIGSTOP), the same N records are preloaded, and the workers continue (SIGCONT). The
rate runs from there (every worker has a full backlog, no producer competes for the CPU) to the first
/metrics poll where the workers' summed ``adpulse_events_total`` reaches N; the groups' members are
compared before and after (a rebalance would void the figure). A figure only counts if the outcome
counters and every channel's all-time KPI row in Redis equal what the records must produce. After the
workers stop, the raw consumer (``ceiling.py``) reads the same topics: all partitions (the total ceiling)
and the busiest partition alone (the per-partition ceiling: what one consumer can take from one
partition). Results go to stdout and to a section of BENCHMARKS.md.

    python benchmarks/scale_out.py --events 1000000 --rounds 2
    python benchmarks/scale_out.py --broker kafka --events 1000000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Started, add_report_args, command_and_machine, publish, section_head, section_markers
from throughput import (
    Stack,
    WorkerRun,
    broker_name,
    create_topics,
    delete_topics,
    fmt_rate,
    preload,
    run_ceiling,
    run_worker,
    stack,
)
from workload import Expected, Record, generate, numbered_channels

from adpulse.settings import redacted_url
from streams.partitioning import partition_of

TARGET_TWO_WORKERS = 1.6


def markers(broker: str) -> tuple[str, str]:
    """The generated section's markers: one section per broker."""
    return section_markers("scale_out.py", broker)


def balanced_channels(n: int, partitions: int) -> tuple[str, ...]:
    """``n`` channel names (``ch0000``…, skipping some) spread as evenly as possible over the partitions:
    the records are keyed by channel, so with channels of equal weight every partition carries about the
    same load, and the figures measure the workers rather than how the names happen to hash."""
    per = -(-n // partitions)
    taken: dict[int, int] = {}
    chosen: list[str] = []
    for name in numbered_channels(n * partitions * 4):
        p = partition_of(name, partitions)
        if taken.get(p, 0) < per:
            taken[p] = taken.get(p, 0) + 1
            chosen.append(name)
            if len(chosen) == n:
                return tuple(chosen)
    raise ValueError(f"no {n} names spread over {partitions} partitions")


def records_per_partition(records: list[Record], partitions: int) -> dict[int, int]:
    """Records of all source topics per partition number (the fold stage's unit of work)."""
    counts = Counter(partition_of(key.decode(), partitions) for _topic, key, _value in records)
    return {p: counts.get(p, 0) for p in range(partitions)}


def spread(per_partition: dict[int, int], workers: int) -> float:
    """The largest share of the records one of ``workers`` consumers gets when the partitions are dealt
    round-robin in order (what the range/round-robin assignors do with one topic set): the busiest
    worker bounds the speed-up to 1 ÷ this share."""
    loads = [0] * workers
    for p in sorted(per_partition):
        loads[p % workers] += per_partition[p]
    total = sum(loads)
    return max(loads) / total if total else float("nan")


@dataclass
class Config:
    """One round of one configuration: k workers, their run and the ceilings read after it."""

    workers: int
    round: int
    run: WorkerRun
    ceiling: dict[str, Any]
    partition_ceiling: dict[str, Any]

    @property
    def per_core(self) -> float:
        """Events per second per core the workers used (the figure that projects to more cores)."""
        return self.run.events_per_s / self.run.cpu_cores if self.run.cpu_cores > 0 else float("nan")


def median_of(configs: list[Config], workers: int, value: Callable[[Config], float]) -> float:
    """The median of ``value(config)`` over the rounds of ``workers`` workers."""
    return statistics.median(value(c) for c in configs if c.workers == workers)


def measure(
    args: argparse.Namespace,
    st: Stack,
    started: Started,
    workdir: Path,
    records: list[Record],
    expected: Expected,
    busiest: tuple[int, int],
    run_id: str,
) -> list[Config]:
    """Every round of every configuration, in the order 1, 2, 3, 1, 2, 3, …"""
    configs: list[Config] = []
    for index in range(1, args.rounds + 1):
        for k in args.workers:
            tag = f"{run_id}-r{index}-w{k}"
            prefix = f"bench-{tag}."
            asyncio.run(create_topics(st.bootstrap, prefix, args.partitions))
            loaded: list[float] = []

            def load(prefix: str = prefix, loaded: list[float] = loaded) -> None:
                loaded.append(asyncio.run(preload(st.bootstrap, prefix, records, args.partitions)))

            run = run_worker(
                args, st, started, prefix, workdir, expected, len(records), tag, workers=k, load=load
            )
            print(
                f"[{tag}] {k} worker(s): {fmt_rate(run.events_per_s)} events/s (preload {loaded[0]:.1f} s), "
                f"CPU {' + '.join(f'{c:.2f}' for c in run.cpu_per_worker)} cores, exact={run.exact}"
                + ("" if run.exact else f": {run.problems[:5]}")
            )
            ceiling = run_ceiling(st, prefix, len(records), args.timeout)
            one = run_ceiling(st, prefix, busiest[1], args.timeout, partition=busiest[0])
            print(
                f"[{tag}] ceiling {fmt_rate(ceiling['events_per_s'])} events/s, partition {busiest[0]} alone "
                f"{fmt_rate(one['events_per_s'])} events/s"
            )
            if args.bootstrap:
                asyncio.run(delete_topics(st.bootstrap, prefix, args.partitions))
            configs.append(Config(k, index, run, ceiling, one))
    return configs


# --------------------------------------------------------------------------------------------- report


def table(configs: list[Config], workers: list[int]) -> list[str]:
    """The per-round table (markdown), with each configuration's ratio to one worker of the same round."""
    one = {c.round: c.run.events_per_s for c in configs if c.workers == 1}
    lines = [
        "| round | workers | events/s | ÷ one worker (same round) | CPU per worker (cores) | workers' CPU "
        "(cores) | events/s per worker core | waiting for a CPU | broker CPU (cores) | other processes "
        "(cores) | ceiling events/s | ÷ ceiling | busiest partition alone (ceiling) | Redis commands per "
        "event | peak RSS (largest worker) | exact |",
        "|" + "---|" * 16,
    ]
    for c in sorted(configs, key=lambda c: (c.round, workers.index(c.workers))):
        r = c.run
        base = one.get(c.round)
        lines.append(
            f"| {c.round} | {c.workers} | {fmt_rate(r.events_per_s)} | "
            + (f"{r.events_per_s / base:.2f}" if base else "n/a")
            + f" | {' / '.join(f'{x:.2f}' for x in r.cpu_per_worker)} | {r.cpu_cores:.2f} | "
            f"{fmt_rate(c.per_core)} | {r.cpu_wait_share:.0%} | "
            + ("n/a" if r.broker_cpu_cores is None else f"{r.broker_cpu_cores:.2f}")
            + f" | {r.others_cores:.2f} | {fmt_rate(c.ceiling['events_per_s'])} | "
            f"{r.events_per_s / c.ceiling['events_per_s']:.3f} | "
            f"{fmt_rate(c.partition_ceiling['events_per_s'])} | {r.redis_per_event:.4f} | "
            f"{r.peak_rss_mb:.0f} MiB | {'yes' if r.exact else 'NO'} |"
        )
    return lines


def findings(
    configs: list[Config], workers: list[int], per_partition: dict[int, int], nproc: int
) -> list[str]:
    """What the figures say: the speed-up, what bounds it on this machine, and the projection."""
    one = median_of(configs, 1, lambda c: c.run.events_per_s) if 1 in workers else float("nan")
    per_core = median_of(configs, min(workers), lambda c: c.per_core)
    ceiling = statistics.median(c.ceiling["events_per_s"] for c in configs)
    part_ceiling = statistics.median(c.partition_ceiling["events_per_s"] for c in configs)
    broker = [c.run.broker_cpu_cores for c in configs if c.run.broker_cpu_cores is not None]
    out = []
    for k in workers:
        rate = median_of(configs, k, lambda c: c.run.events_per_s)
        cores = median_of(configs, k, lambda c: c.run.cpu_cores)
        out.append(
            f"- **{k} worker{'s' if k > 1 else ''}: {fmt_rate(rate)} events/s** (median), "
            + (f"{rate / one:.2f} × one worker, " if k > 1 else "")
            + f"{rate / ceiling:.2f} × the ceiling; the workers used {cores:.2f} cores together "
            f"({fmt_rate(rate / cores)} events/s per worker core); the busiest worker holds "
            f"{spread(per_partition, k):.0%} of the records (at most {1 / spread(per_partition, k):.2f} × "
            "one worker from the partition spread alone)."
        )
    if 2 in workers and 1 in workers:
        two = median_of(configs, 2, lambda c: c.run.events_per_s)
        verdict = "met" if two >= TARGET_TWO_WORKERS * one else "missed"
        out.append(
            f"- Target 2 workers ≥ {TARGET_TWO_WORKERS} × one: **{verdict}** ({two / one:.2f} ×"
            + ("" if verdict == "met" else f", short by {TARGET_TWO_WORKERS * one - two:,.0f} events/s")
            + ")."
        )
    broker_cores = statistics.median(broker) if broker else 0.0
    others = statistics.median(c.run.others_cores for c in configs)
    out += [
        f"- This machine has {nproc} cores; while the workers ran, the broker used {broker_cores:.2f} and "
        f"other processes (this script, valkey, the rest of the machine) {others:.2f} of them (medians), "
        f"which leaves ~{max(0.0, nproc - broker_cores - others):.1f} cores for the workers: beyond that, "
        "more workers only share the same cores.",
        f"- Projection: a worker does {fmt_rate(per_core)} events/s per core it gets. With one worker per "
        f"core and the partitions spread evenly, n cores give about n × {fmt_rate(per_core)} events/s, until "
        f"the partitions run out (a worker needs at least one; {len(per_partition)} here, the busiest read "
        f"alone by the raw consumer at {fmt_rate(part_ceiling)} events/s) or the broker does (the raw "
        f"consumer read all partitions at {fmt_rate(ceiling)} events/s in one process; a broker on cores of "
        "its own is not measured here).",
    ]
    return out


def markdown(
    configs: list[Config],
    info: dict[str, str],
    command: str,
    args: argparse.Namespace,
    expected: Expected,
    per_partition: dict[int, int],
    busiest: tuple[int, int],
) -> str:
    begin, end = markers(args.broker)
    o = expected.outcomes
    n = sum(per_partition.values())
    lines = [
        *section_head(
            begin,
            "Scale-out: "
            + ", ".join(str(k) for k in args.workers)
            + " workers"
            + (" on Apache Kafka" if args.broker == "kafka" else ""),
            command,
            info,
            ' (the machine is shared: see "other processes")',
        ),
        f"Workload per configuration: {n:,} records preloaded into fresh `clicks`/`orders`/`spend` topics "
        f"({args.partitions} partitions each) on {broker_name(args.broker)}: {args.channels} channels "
        f"of equal weight × 5 campaigns, keyed by channel (names picked so that each partition carries "
        f"the same number of channels); {o['invalid']:,} malformed, {o['duplicate']:,} "
        f"duplicates, {o['accepted']:,} valid. Records per partition: "
        + ", ".join(f"{p}: {c:,}" for p, c in per_partition.items())
        + ".",
        "",
        *table(configs, args.workers),
        "",
        *findings(configs, args.workers, per_partition, int(info["nproc"])),
        "",
        "How it is measured:",
        "",
        "- *workers*: k processes `run_worker(Settings())` with the same app id (consumer groups) and Redis "
        "prefix, started on the empty topics; once the fold stage's and Faust's consumer groups are Stable "
        "with the same k members two polls 1 s apart (`describe_consumer_groups`), the workers are stopped "
        "(SIGSTOP) while the records are preloaded, then continued (SIGCONT). *events/s* = N ÷ (time of the "
        "first /metrics poll whose sum over the workers reaches N − the SIGCONT), polls every "
        f"{args.poll:.2f} s; the groups' members are compared before and after (a rebalance voids the "
        "figure). *exact*: outcome counters summed over the workers equal the "
        "generated numbers and every channel's all-time row in `<redis_prefix>:kpis` equals its expected "
        "totals; a configuration that is not exact does not count.",
        "- *CPU per worker*: utime + stime of each worker over the measured interval ÷ its duration; "
        "*events/s per worker core* = events/s ÷ the workers' CPU together; *waiting for a CPU* = run_delay "
        "of all the workers' threads ÷ the interval (above 100 % when several wait at once).",
        f"- *ceiling*: `benchmarks/ceiling.py` (bare `AIOKafkaConsumer`, `getmany`, `orjson.loads`) over "
        f"every partition of the same topics after the workers stopped; *busiest partition alone*: the same "
        f"over partition {busiest[0]} of each topic only ({busiest[1]:,} records), the most one worker that "
        "owns one partition can be fed by one consumer.",
        "- *Redis commands per event*: `INFO commandstats` (all commands but `INFO`) over the measured "
        "interval ÷ the events counted in it.",
        end,
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Events/s of 1, 2 and 3 adpulse workers on the same topics, against the raw ceiling.",
        epilog="Example: python benchmarks/scale_out.py --events 1000000 --rounds 2",
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="records per configuration")
    parser.add_argument(
        "--partitions", type=int, default=6, help="partitions of every topic (default 6: 6, 3 and 2 each)"
    )
    parser.add_argument(
        "--workers",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[1, 2, 3],
        help="worker counts, comma-separated (default 1,2,3)",
    )
    parser.add_argument("--channels", type=int, default=60, help="channels of equal weight (default 60)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the report gives medians (default 1)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated workload")
    add_report_args(parser)
    parser.add_argument("--bootstrap", help="reuse this Kafka-compatible broker instead of starting one")
    parser.add_argument("--broker-pid", type=int, help="pid of a reused broker, to report its CPU use")
    parser.add_argument("--redis-url", help="reuse this Redis instead of starting valkey-server")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between /metrics polls")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a configuration after this")
    parser.add_argument("--keep-workdir", action="store_true", help="keep worker logs in the temp dir")
    args = parser.parse_args(argv)
    if args.events < 1000 or args.rounds < 1 or not args.workers or min(args.workers) < 1:
        parser.error("--events ≥ 1000, --rounds ≥ 1, worker counts ≥ 1")
    if max(args.workers) > args.partitions:
        parser.error("--partitions must be at least the largest worker count")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command, info = command_and_machine("scale_out.py", argv)
    workdir = Path(tempfile.mkdtemp(prefix="adpulse-scale-"))
    started = Started()
    channels = balanced_channels(args.channels, args.partitions)
    records, expected = generate(
        args.events, int(time.time() * 1000), seed=args.seed, channels=channels, weights=[1.0] * len(channels)
    )
    per_partition = records_per_partition(records, args.partitions)
    busiest = max(per_partition.items(), key=lambda pc: pc[1])
    print(f"generated {len(records):,} records; per partition {per_partition}")
    try:
        with stack(args, workdir, started) as st:
            print(
                f"broker {redacted_url(st.bootstrap)} (pid {st.broker_pid}), "
                f"redis {redacted_url(st.redis_url)}"
            )
            configs = measure(args, st, started, workdir, records, expected, busiest, uuid.uuid4().hex[:6])
    finally:
        started.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work dir kept: {workdir}")
    publish(
        markdown(configs, info, command, args, expected, per_partition, busiest), args, markers(args.broker)
    )
    return 0 if all(c.run.exact for c in configs) else 1


if __name__ == "__main__":
    sys.exit(main())
