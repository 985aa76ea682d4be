"""``adpulse worker``: the fold stage and the Faust agents in one process (start several to scale out)."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import faust
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from adpulse.judging import evaluation_config, health_config
from adpulse.settings import Settings
from agents.buckets import FAUST_MAX_REQUEST_BYTES, BucketConfig, SnapshotHolder, install
from agents.budget_feed import BudgetFeed
from agents.evaluate import Evaluator
from agents.fold import FoldConfig
from agents.fold_stage import FoldStage, FoldStageConfig
from agents.gc_refreeze import Refreezer
from agents.health import HealthMonitor
from agents.malloc_trim import MallocTrim, libc_malloc_trim
from agents.metrics import PipelineMetrics, SnapshotCollector, watch_gc, watch_loop_lag
from agents.redis_retry import RedisRetry
from alerts.budgets import BudgetBook
from alerts.sinks.redis_sink import RedisAlertSink
from streams.app import make_app
from streams.metadata import partition_counts
from streams.topics import value_limit
from streams.windows import Calendar

log = logging.getLogger(__name__)


def build_worker_app(settings: Settings, registry: CollectorRegistry | None = None) -> faust.App:
    """The worker's Faust app with the fold stage, the bucket table, the snapshot timer and /metrics."""
    registry = registry or CollectorRegistry()
    metrics = PipelineMetrics(registry)
    # One view of Redis for the whole process: an outage is logged and counted once, whoever meets it.
    retry = RedisRetry(metrics)
    holder = SnapshotHolder()
    registry.register(SnapshotCollector(lambda: holder.rows, settings.max_channels))
    calendar = Calendar(settings.zone)
    app = make_app(
        settings.app_id,
        settings.kafka_bootstrap,
        partitions=settings.partitions,
        web_host=settings.web_host,
        web_port=settings.web_port,
        datadir=str(settings.home / "worker-data"),
        credentials=_faust_credentials(settings),
        fetch_wait_ms=settings.fetch_wait_ms,
        replication_factor=settings.topic_replication_factor,
        instance_id=settings.instance_id,
        changelog_batch_bytes=settings.changelog_batch_bytes,
        session_timeout_s=settings.group_session_timeout_s,
    )
    clients: dict[str, Any] = {}
    budgets = BudgetBook()
    evaluation = evaluation_config(settings)

    health = health_config(settings)

    def health_monitor() -> HealthMonitor:
        if "health" not in clients:
            clients["health"] = HealthMonitor(health, redis(), settings.redis_prefix, calendar, retry=retry)
        made: HealthMonitor = clients["health"]
        return made

    def redis() -> Any:
        if "redis" not in clients:
            clients["redis"] = aioredis.from_url(settings.redis_url)
        return clients["redis"]

    def evaluator() -> Evaluator:
        # Built on first use, inside the running event loop (the sink registers a Lua script).
        if "evaluator" not in clients:
            clients["evaluator"] = Evaluator(
                evaluation,
                RedisAlertSink(redis(), settings.redis_prefix),
                redis(),
                settings.redis_prefix,
                calendar,
                budgets,
                settings.max_channels,
                registry=registry,
                retry=retry,
            )
        made: Evaluator = clients["evaluator"]
        return made

    install(
        app,
        BucketConfig(
            partials_topic=settings.topic("partials"),
            partitions=settings.partitions,
            redis_prefix=settings.redis_prefix,
            grace_s=settings.grace_s,
            idle_partition_s=settings.idle_partition_s,
            tick_s=settings.tick_s,
            stale_mark_s=max(10.0, 20 * settings.flush_interval_s),
            max_campaigns=settings.max_campaigns_per_channel,
            shards=settings.bucket_shards,
            max_value_bytes=value_limit(min(settings.max_message_bytes, FAUST_MAX_REQUEST_BYTES)),
            retention_s={
                "1m": settings.retention_1m_s,
                "1h": settings.retention_1h_s,
                "1d": settings.retention_1d_s,
            },
        ),
        calendar,
        redis,
        holder,
        metrics,
        evaluator,
        health_monitor,
        retry,
    )
    stage_config = fold_stage_config(settings)

    @app.early_task
    async def fold_stage() -> None:
        stage = FoldStage(stage_config, redis(), calendar, metrics, retry=retry)
        try:
            await stage.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("fold stage crashed; stopping the worker so that it restarts from its checkpoints")
            raise

    @app.task  # type: ignore[untyped-decorator]
    async def loop_lag() -> None:
        stop_gc_watch = watch_gc(metrics)
        try:
            await watch_loop_lag(metrics)
        finally:
            stop_gc_watch()

    if settings.gc_freeze_after_s > 0:

        @app.task  # type: ignore[untyped-decorator]
        async def gc_refreeze() -> None:
            refreezer = Refreezer(metrics, settings.gc_freeze_after_s, settings.gc_sweep_s)
            stop = refreezer.install()
            try:
                await refreezer.run()
            finally:
                stop()

    if settings.malloc_trim_s > 0:

        @app.task  # type: ignore[untyped-decorator]
        async def malloc_trim() -> None:
            await MallocTrim(metrics, settings.malloc_trim_s, libc_malloc_trim()).run()

    @app.task  # type: ignore[untyped-decorator]
    async def budget_feed() -> None:
        await BudgetFeed(settings.kafka_client_options(), settings.topic("budgets"), budgets).run()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body = generate_latest(registry)
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return app


def fold_stage_config(settings: Settings) -> FoldStageConfig:
    """What the worker's fold stage is told, from the settings."""
    return FoldStageConfig(
        kafka=settings.kafka_client_options(),
        group_id=f"{settings.app_id}-fold",
        topic_prefix=settings.topic_prefix,
        partials_partitions=settings.partitions,
        redis_prefix=settings.redis_prefix,
        fold=FoldConfig(
            block_records=settings.block_records,
            grace_s=settings.grace_s,
            max_future_skew_s=settings.max_future_skew_s,
            max_record_bytes=settings.max_record_bytes,
            currency=settings.currency,
            max_campaigns_per_channel=settings.max_campaigns_per_channel,
        ),
        flush_interval_s=settings.flush_interval_s,
        fetch_max_records=settings.fetch_max_records,
        fetch_wait_ms=settings.fetch_wait_ms,
        max_message_bytes=settings.max_message_bytes,
        session_timeout_ms=round(settings.group_session_timeout_s * 1000),
        health=health_config(settings),
    )


def _faust_credentials(settings: Settings) -> Any:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    ssl_context = settings.kafka_ssl_context() if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.sasl_password(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


#: Campaigns one bucket shard holds within Faust's 1 MB changelog record for keyed trackers (three source
#: partitions writing a channel, names of up to ~60 bytes: docs/operations.md, "Campaigns per channel").
CAMPAIGNS_PER_SHARD = 2000


def shard_advice(max_campaigns: int, shards: int) -> str | None:
    """What to tell an operator whose campaign cap outgrows the bucket shards (None: it fits)."""
    if max_campaigns <= shards * CAMPAIGNS_PER_SHARD:
        return None
    needed = -(-max_campaigns // CAMPAIGNS_PER_SHARD)
    return (
        f"ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL={max_campaigns} with ADPULSE_BUCKET_SHARDS={shards}: a "
        f"bucket shard may hold up to {-(-max_campaigns // shards)} campaigns and outgrow the 1 MB "
        "changelog record (it then stops updating, counted in "
        f'adpulse_quarantined_total{{where="size"}}); set ADPULSE_BUCKET_SHARDS to {needed} or more '
        "(twice that for unkeyed trackers), on every worker at once"
    )


#: Net new container objects between two young collections of the garbage collector (CPython's default is
#: 700). The fold stage holds a fetch of up to 5,000 records while it folds them: at the default, young
#: collections run every few hundred records and promote the fetch's records to the older generations, to be
#: walked again there before they are freed.
GC_YOUNG_OBJECTS = 50_000


def tune_gc() -> None:
    """Freeze what startup built (modules, the app: it lives as long as the process, and no collection need
    walk it again) and collect the young generation less often (``GC_YOUNG_OBJECTS``)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_OBJECTS, older, oldest)


class PartitionCountError(RuntimeError):
    """The worker's topics do not fit ``ADPULSE_PARTITIONS``: the partials topic is missing, or it or the
    bucket table's changelog has another partition count."""


def partition_count_problem(
    expected: int, partials: tuple[str, int], changelog: tuple[str, int]
) -> str | None:
    """What keeps a worker from starting on these topics (name, partition count; 0: missing), or None.

    The changelog may be missing (Faust creates it); the partials topic may not: nothing but ``adpulse
    stack up`` or ``deploy/kafka/create-topics.sh`` creates it."""
    (partials_topic, partials_n), (changelog_topic, changelog_n) = partials, changelog
    if not partials_n:
        return (
            f"topic {partials_topic} does not exist: create the topics first (`adpulse stack up` on the "
            "embedded stack, `deploy/kafka/create-topics.sh` on your own Kafka)"
        )
    if changelog_n and changelog_n != partials_n:
        return (
            f"topic {partials_topic} has {partials_n} partitions but the bucket table's changelog "
            f"{changelog_topic} has {changelog_n}: no setting of ADPULSE_PARTITIONS fits both; a partition "
            "count cannot be changed in place (docs/operations.md, Partitions and workers)"
        )
    if partials_n != expected:
        return (
            f"topic {partials_topic} has {partials_n} partitions, ADPULSE_PARTITIONS is {expected}: set "
            f"ADPULSE_PARTITIONS={partials_n}, as the deployment's other workers have it; to change the "
            "count, start a new deployment beside this one (new ADPULSE_TOPIC_PREFIX and ADPULSE_APP_ID; "
            "docs/operations.md, Partitions and workers)"
        )
    return None


def check_partition_counts(settings: Settings, changelog: str, timeout_s: float = 10.0) -> None:
    """Refuse to start on topics that do not fit ``ADPULSE_PARTITIONS``: the fold stage sends a channel's
    partials to the partition the setting gives it, and the bucket table needs its changelog partitioned
    like the partials topic (else every write of the table fails). When the broker does not answer in
    ``timeout_s`` the check is skipped with a warning, and the worker starts as it would without it."""
    partials = settings.topic("partials")
    loop = asyncio.new_event_loop()  # its own, closed after: the thread's loop is left to Faust's worker
    try:
        counts = loop.run_until_complete(
            asyncio.wait_for(partition_counts(settings.kafka_client_options()), timeout_s)
        )
    except Exception as exc:  # noqa: BLE001 - whatever the broker's trouble, the worker meets it next
        log.warning(
            "could not check the partition counts of %s and %s (%r); starting anyway",
            partials,
            changelog,
            exc,
        )
        return
    finally:
        loop.close()
    problem = partition_count_problem(
        settings.partitions, (partials, counts.get(partials, 0)), (changelog, counts.get(changelog, 0))
    )
    if problem is not None:
        raise PartitionCountError(problem)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until SIGINT/SIGTERM; :class:`PartitionCountError` before it starts if its topics are
    partitioned unlike the settings."""
    settings.home.mkdir(parents=True, exist_ok=True)
    advice = shard_advice(settings.max_campaigns_per_channel, settings.bucket_shards)
    if advice is not None:
        log.warning("%s", advice)
    app = build_worker_app(settings)
    check_partition_counts(settings, app.tables["buckets"].changelog_topic.get_topic_name())
    tune_gc()
    worker = faust.Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()
