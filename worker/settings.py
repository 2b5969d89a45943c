"""Settings: read once in the composition root from WORKER_* env vars and --flags."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.rules import Rules


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class ProcessingGuarantee(StrEnum):
    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


Seconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Every knob of the worker; env `WORKER_<NAME>`, flag `--<name-with-dashes>`."""

    model_config = SettingsConfigDict(
        env_prefix="WORKER_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "session-worker"
    group_instance_id: str | None = None
    """Static membership (e.g. the pod name): a restart within the session timeout keeps the
    partitions without a rebalance. Empty means dynamic membership."""
    session_timeout_s: Annotated[float, Field(ge=6, le=300)] = 10.0
    """How long the group waits for a silent member; raise it with static membership."""
    client_id: str = "session-worker"
    input_topic: str = "media.segment-events"
    snapshot_topic: str = "media.sessions"
    dlq_topic: str = "media.segment-events.dlq"
    changelog_topic: str | None = None
    """Default: `<group_id>.<input_topic>.changelog`, one per group and input."""

    http_host: str = "0.0.0.0"  # noqa: S104  # a pod must be scrapeable from outside
    http_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    publish_interval_s: Seconds = 1.0
    rate_window_s: Seconds = 10.0
    stall_min_s: Seconds = 10.0
    retention_s: Seconds = 300.0
    idle_timeout_s: Seconds = 3600.0
    evicted_ttl_s: Seconds = 86400.0
    liveness_timeout_s: Seconds = 30.0
    shutdown_timeout_s: Seconds = 10.0
    max_poll_records: Annotated[int, Field(ge=1)] = 5000
    metrics_max_sessions: Annotated[int, Field(ge=0)] = 10_000
    processing_guarantee: ProcessingGuarantee = ProcessingGuarantee.AT_LEAST_ONCE
    create_topics: bool = True
    topic_partitions: Annotated[int, Field(ge=1)] = 6
    """Partitions of the input topic when the worker creates it (local and demo use)."""
    replication_factor: Annotated[int, Field(ge=1)] = 1

    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None

    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.JSON

    @property
    def changelog_topic_name(self) -> str:
        return self.changelog_topic or f"{self.group_id}.{self.input_topic}.changelog"

    def rules(self) -> Rules:
        return Rules(
            rate_window_ms=round(self.rate_window_s * 1000),
            stall_min_ms=round(self.stall_min_s * 1000),
            retention_ms=round(self.retention_s * 1000),
            idle_timeout_ms=round(self.idle_timeout_s * 1000),
            evicted_ttl_ms=round(self.evicted_ttl_s * 1000),
        )
