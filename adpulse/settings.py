"""The one settings object: read once at the edge (the CLI), passed down as plain values.

Every field maps to an ``ADPULSE_<NAME>`` environment variable; an optional dotenv-style file named by
``ADPULSE_ENV_FILE`` (default ``.env`` in the current directory, if present) is read too. Time inside
adpulse is float seconds and the names say so (``grace_s``); milliseconds appear only at the Kafka edge.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.windows import known_time_zone

# ``user:PASSWORD@rest`` after the scheme: the password runs to the last "@", so one with an unencoded "@",
# "#" or "/" in it is still hidden whole.
_USERINFO = re.compile(r"^(?P<user>[^:/@?#]*):(?P<password>.*)@(?P<rest>[^@]*)$")
# Query parameters that carry a credential (redis-py passes ``?password=`` on to the connection).
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&#]*(?:pass|secret|token|auth)[^=&#]*=)[^&#]*")


def redacted_url(url: str) -> str:
    """``url`` as it may be printed or logged: any password replaced by ``***``.

    Covers ``scheme://user:PASSWORD@host``, ``?password=`` (and other secret-named parameters), and
    comma-separated ``user:PASSWORD@host:port`` lists such as a Kafka bootstrap. Every message that shows
    ``ADPULSE_REDIS_URL`` or ``ADPULSE_KAFKA_BOOTSTRAP`` goes through this.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    shown = []
    for item in [rest] if sep else rest.split(","):
        if match := _USERINFO.match(item):
            item = f"{match['user']}:***@{match['rest']}"
        shown.append(_SECRET_PARAM.sub(r"\1***", item))
    return scheme + sep + ",".join(shown)


class Settings(BaseSettings):
    """adpulse configuration (environment variables ``ADPULSE_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="ADPULSE_",
        env_file=os.environ.get("ADPULSE_ENV_FILE", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # Where things are.
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (redis:// or rediss://)")
    web_port: int = Field(6066, ge=0, le=65535, description="worker /metrics port (0 = pick a free one)")
    web_host: str = Field("127.0.0.1", description="address the worker's /metrics binds to")
    home: Path = Field(Path(".adpulse"), description="embedded stack and local state")
    redis_prefix: str = Field("adpulse", description="namespace of every Redis key (adpulse:alerts, ...)")

    # Kafka security (production clusters); empty means PLAINTEXT.
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL"
    )
    kafka_sasl_mechanism: str = Field("PLAIN", description="PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(None, repr=False)
    kafka_sasl_password_file: Path | None = Field(
        None, description="file holding the SASL password (secrets)"
    )
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (PEM), for mutual TLS")
    kafka_ssl_keyfile: Path | None = Field(None, description="client key (PEM), for mutual TLS")
    topic_replication_factor: int = Field(
        1,
        ge=1,
        le=10,
        description="replication of the topics adpulse creates (changelog, partials); 3 on a cluster",
    )

    # Topics.
    topic_prefix: str = "adpulse."
    partitions: int = Field(4, ge=1, le=1024, description="partitions of the event topics")
    app_id: str = Field("adpulse", description="Kafka consumer-group / Faust app id")
    instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description=(
            "this worker's static member name in the Faust consumer group (group.instance.id): stable "
            "across restarts and unique per worker; a restarted worker then rejoins at once. Apache Kafka "
            "only: on the embedded broker (Tansu) a returning static member can rejoin forever"
        ),
    )

    # Domain.
    tz: str = Field("Asia/Shanghai", description="time zone for day windows and budget periods")
    currency: str = Field("CNY", min_length=3, max_length=3)
    max_channels: int = Field(500, ge=1, description="bound on channel label values; the rest are 'other'")
    max_campaigns_per_channel: int = Field(
        2000, ge=1, description="campaigns of their own per channel; the rest are counted under '(other)'"
    )
    bucket_shards: int = Field(
        1,
        ge=1,
        le=256,
        description="table keys a window bucket's campaigns are spread over (a changelog record each)",
    )
    gc_freeze_after_s: float = Field(
        0.05,
        ge=0,
        description=(
            "a full garbage collection that held the worker this long freezes what it found alive out of "
            "the next ones, so that they walk only what changed (at 100,000 campaigns a full collection "
            "otherwise stalls the worker for seconds); 0: never freeze"
        ),
    )
    gc_sweep_s: float = Field(
        6 * 3600.0,
        ge=60,
        description=(
            "seconds (±10 %) between collections of everything, frozen objects included: they free frozen "
            "objects that became unreachable cycles, and stall as long as a plain full collection"
        ),
    )
    malloc_trim_s: float = Field(
        10.0,
        ge=0,
        description=(
            "seconds between handing memory the worker freed back to the system (glibc malloc_trim; at "
            "100,000 campaigns the C heap otherwise keeps every tick's high-water mark, 0.7 GB measured); "
            "0: never, else at least 1"
        ),
    )

    # Event time.
    grace_s: float = Field(60.0, ge=0, description="how long after a window ends events are still accepted")
    max_future_skew_s: float = Field(
        3600.0, ge=0, description="reject events this far ahead of their send time"
    )
    max_record_bytes: int = Field(64 * 1024, ge=256)
    max_message_bytes: int = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="the brokers' message.max.bytes: no DLQ record or partial is larger",
    )
    idle_partition_s: float = Field(
        30.0, gt=0, description="a caught-up partition silent this long stops holding the watermark back"
    )

    # Engine.
    block_records: int = Field(
        5000, ge=10, description="source offsets per replay block (the unit of exactly-once folding)"
    )
    flush_interval_s: float = Field(0.25, gt=0, description="how often folded partials are published")
    tick_s: float = Field(0.5, gt=0, description="how often KPI snapshots go to Redis and alerts are judged")
    fetch_max_records: int = Field(5000, ge=1)
    fetch_wait_ms: int = Field(
        100,
        ge=1,
        le=5000,
        description=(
            "longest a fetch waits for new records (both consumers): bounds how stale an idle worker gets"
        ),
    )
    group_session_timeout_s: float = Field(
        10.0,
        ge=6.0,
        le=60.0,
        description=(
            "session of the worker's two consumer-group memberships (Faust's and the fold stage's): a dead "
            "worker's partitions move this long after it died, and a worker whose consumers cannot heartbeat "
            "this long is taken out of its groups. 6 s is the least Apache Kafka accepts by default "
            "(group.min.session.timeout.ms); the embedded broker (Tansu) holds every join for half of it, "
            "which the consumers' request timeouts (40 s for the fold stage's) must outlast"
        ),
    )
    changelog_batch_bytes: int = Field(
        1,
        ge=1,
        le=16 * 1024 * 1024,
        description=(
            "largest record batch the worker writes to its table's changelog; 1 (a record per batch) is what "
            "the embedded broker (Tansu) needs; 65536 on Apache Kafka writes it many times faster"
        ),
    )
    retention_1m_s: float = Field(6 * 3600.0, gt=0, description="how long 1-minute buckets are kept")
    retention_1h_s: float = Field(8 * 86400.0, gt=0)
    retention_1d_s: float = Field(62 * 86400.0, gt=0)

    # Alerts.
    rules_file: Path | None = Field(None, description="threshold rules (YAML); default: the seed targets")
    anomaly_window_s: int = Field(600, ge=60, description="rolling window the anomaly detectors judge")
    alert_lookback_s: float = Field(
        86400.0, gt=0, description="on a first start, judge closed windows this far back (not older history)"
    )
    alert_resolve_after: int = Field(2, ge=1, description="consecutive OK evaluations before resolving")
    alert_repeat_s: float = Field(4 * 3600.0, gt=0, description="repeat a firing alert this often")
    # Data health (docs/runbook.md#data_health).
    health_bucket_s: int = Field(60, ge=1, description="wall-clock bucket of the fold's data-health counters")
    health_window_s: int = Field(300, ge=1, description="data-health ratios are judged over this window")
    health_baseline_s: int = Field(3600, ge=0, description="the window before, for duplicate and late spikes")
    health_reject_ratio: float = Field(0.02, gt=0, lt=1, description="a channel's reject ratio bound")
    clock_ahead_s: float = Field(60.0, ge=0, description="a CreateTime this far ahead of the worker is skew")
    grafana_url: str | None = Field("http://127.0.0.1:3000", description="root of Grafana, for dashboard_url")
    runbook_url: str = Field(
        "https://github.com/adpulse/adpulse/blob/main/docs/runbook.md", description="runbook_url base"
    )

    # Chat router.
    routes_file: Path | None = Field(
        None, description="routes file (YAML, CONTRACT.md §6) of `adpulse router`"
    )
    router_port: int = Field(6067, ge=0, le=65535, description="router /metrics and action links port")
    router_host: str = Field("127.0.0.1", description="address the router's HTTP endpoint binds to")
    router_public_url: str | None = Field(
        None, description="URL chat users reach the router at, for action links (default http://host:port)"
    )
    router_token_key: str | None = Field(
        None, repr=False, description="secret that signs action links (ack, snooze, approve); none: no links"
    )
    router_token_key_file: Path | None = Field(None, description="file holding router_token_key")
    router_name: str | None = Field(None, description="consumer name in the router group (default host-pid)")
    router_claim_idle_s: float = Field(
        30.0, gt=0, description="take over a dead router's alerts after they sat unacknowledged this long"
    )
    router_group_wait_s: float = Field(
        0.1, ge=0, description="after an alert arrives, wait this long for more of the same channel to group"
    )
    router_token_ttl_s: float = Field(
        86400.0, gt=0, le=7 * 86400.0, description="how long action links stay valid (at most 7 days)"
    )

    log_level: str = Field("INFO")

    @field_validator("tz")
    @classmethod
    def _known_tz(cls, value: str) -> str:
        return known_time_zone(value)

    @field_validator("malloc_trim_s")
    @classmethod
    def _trim_period(cls, value: float) -> float:
        if 0 < value < 1 or not math.isfinite(value):
            raise ValueError("0 (never) or at least 1 second: each trim holds the C heap's lock a moment")
        return value

    @field_validator("currency")
    @classmethod
    def _upper_currency(cls, value: str) -> str:
        return value.upper()

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                "ADPULSE_REDIS_URL must start with redis://, rediss:// or unix://, "
                f"got {redacted_url(value)!r}"
            )
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(
                    f"ADPULSE_KAFKA_BOOTSTRAP entries must be host:port, got {redacted_url(server.strip())!r}"
                )
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A Settings printed in a traceback or a debug line shows the Redis URL without its password.
        for name, value in super().__repr_args__():
            yield name, redacted_url(value) if name in ("redis_url", "kafka_bootstrap") else value

    def token_key(self) -> bytes | None:
        """The key that signs action links: ``router_token_key``, else the content of its file, else None.

        Raises ``alerts.router.tokens.WeakKeyError`` (a ValueError) for a placeholder or weak key, saying
        how to make a good one.
        """
        from alerts.router.tokens import check_key

        if self.router_token_key:
            return check_key(self.router_token_key.encode())
        if self.router_token_key_file is not None:
            text = self.router_token_key_file.read_text().strip()
            source = f"the key in ADPULSE_ROUTER_TOKEN_KEY_FILE ({self.router_token_key_file})"
            return check_key(text.encode(), source) if text else None
        return None

    def topic(self, name: str) -> str:
        """Full topic name for a short name such as ``clicks``."""
        return f"{self.topic_prefix}{name}"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def kafka_client_options(self) -> dict[str, object]:
        """Connection options shared by every aiokafka client (security included)."""
        options: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.sasl_password(),
            )
        if self.kafka_security_protocol.endswith("SSL"):
            options["ssl_context"] = self.kafka_ssl_context()
        return options

    def sasl_password(self) -> str | None:
        """The SASL password: ``kafka_sasl_password``, else the content of its file."""
        if self.kafka_sasl_password is None and self.kafka_sasl_password_file is not None:
            return self.kafka_sasl_password_file.read_text().strip()
        return self.kafka_sasl_password

    def kafka_ssl_context(self) -> ssl.SSLContext:
        """TLS to the brokers: the CA to trust and, for mutual TLS, the client certificate and key."""
        from aiokafka.helpers import create_ssl_context

        def text(path: Path | None) -> str | None:
            return str(path) if path else None

        context: ssl.SSLContext = create_ssl_context(
            cafile=text(self.kafka_ssl_cafile),
            certfile=text(self.kafka_ssl_certfile),
            keyfile=text(self.kafka_ssl_keyfile),
        )
        return context

    def to_env(self) -> dict[str, str]:
        """These settings as ``ADPULSE_*`` environment variables, for child processes (worker, demo)."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            env[f"ADPULSE_{name.upper()}"] = str(value)
        return env


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once (environment, optional file), with explicit overrides from the CLI."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
