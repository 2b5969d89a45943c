"""Settings: read once in the composition root from WORKER_* env vars and --flags."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

from pydantic import AfterValidator, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError
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

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise PydanticCustomError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    return level


LogLevel = Annotated[str, AfterValidator(_log_level)]


def _security_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("security_settings", message)


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
    commit_interval_s: Seconds = 5.0
    """At-least-once: how often the changelog is written and input offsets committed (at
    least the publish interval). Exactly-once commits with every publish."""
    catchup_backlog: Annotated[int, Field(ge=0)] = 50_000
    """While more input records than this wait, snapshots go out only with the checkpoints
    (every commit interval) so the backlog is folded faster. 0: publish every interval."""
    rate_window_s: Seconds = 10.0
    inactive_after_s: Seconds = Field(
        60.0,
        description="A session without a new segment.ingested for this long is inactive: "
        "isHealthy null, no issues, rates 0, not republished until it changes",
    )
    stall_min_s: Seconds = 10.0
    retention_s: Seconds = 300.0
    idle_timeout_s: Seconds = 3600.0
    evicted_ttl_s: Seconds = 86400.0
    liveness_timeout_s: Seconds = 30.0
    shutdown_timeout_s: Seconds = 10.0
    changelog_format: Annotated[int, Field(ge=1, le=2)] = 2
    """Changelog records written in this format; every version since 2 reads both. Set 1
    during a rolling upgrade from a version that reads only format 1, then remove it."""
    max_poll_records: Annotated[int, Field(ge=1)] = 5000
    metrics_max_sessions: Annotated[int, Field(ge=0)] = 10_000
    processing_guarantee: ProcessingGuarantee = ProcessingGuarantee.AT_LEAST_ONCE
    create_topics: bool = True
    topic_partitions: Annotated[int, Field(ge=1)] = 6
    """Partitions of the input topic when the worker creates it (local and demo use)."""
    replication_factor: Annotated[int, Field(ge=1)] = 1

    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    """Required with SASL_PLAINTEXT / SASL_SSL, as are the username and password."""
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    """PEM bundle of the CAs to trust; default: the system's trust store."""
    ssl_certfile: str | None = None
    """PEM client certificate (mutual TLS); `ssl_keyfile` if the key is in another file."""
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    """Verify that the broker's certificate names the host we connect to."""

    log_level: LogLevel = "INFO"
    log_format: LogFormat = LogFormat.JSON

    debug_stall_file: Path | None = None
    """TEST HOOK, never for production: while this file exists the consume loop sleeps
    instead of fetching, so tests can see /healthz fail for a stuck loop."""

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        """Contradictory security settings fail at start-up, not at the first connection."""
        sasl = self.security_protocol in (
            SecurityProtocol.SASL_PLAINTEXT,
            SecurityProtocol.SASL_SSL,
        )
        tls = self.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)
        if sasl:
            missing = [
                f"WORKER_{name.upper()}"
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise _security_error(f"{self.security_protocol} needs {', '.join(missing)}")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise _security_error("SASL settings need security_protocol SASL_PLAINTEXT or SASL_SSL")
        if not tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise _security_error("ssl_* files need security_protocol SSL or SASL_SSL")
        if (self.ssl_keyfile or self.ssl_key_password) and not self.ssl_certfile:
            raise _security_error("ssl_keyfile and ssl_key_password need ssl_certfile")
        return self

    @model_validator(mode="after")
    def _check_intervals(self) -> Settings:
        if self.commit_interval_s < self.publish_interval_s:
            raise ValueError(
                f"WORKER_COMMIT_INTERVAL_S ({self.commit_interval_s}) must be at least "
                f"WORKER_PUBLISH_INTERVAL_S ({self.publish_interval_s})"
            )
        return self

    @property
    def changelog_topic_name(self) -> str:
        return self.changelog_topic or f"{self.group_id}.{self.input_topic}.changelog"

    def rules(self) -> Rules:
        return Rules(
            rate_window_ms=round(self.rate_window_s * 1000),
            inactive_after_ms=round(self.inactive_after_s * 1000),
            stall_min_ms=round(self.stall_min_s * 1000),
            retention_ms=round(self.retention_s * 1000),
            idle_timeout_ms=round(self.idle_timeout_s * 1000),
            evicted_ttl_ms=round(self.evicted_ttl_s * 1000),
        )
