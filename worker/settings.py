"""Settings: read once in the composition root from WORKER_* env vars and --flags."""

from __future__ import annotations

import re
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


MAX_SECONDS: Final = 365 * 86_400.0
"""No duration setting means more than a year; a typo such as 1e30 fails at start-up."""

Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KAFKA_NAME: Final = re.compile(r"[a-zA-Z0-9._-]{1,249}")
"""Kafka's rule for topic names and group instance ids."""


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise PydanticCustomError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    return level


LogLevel = Annotated[str, AfterValidator(_log_level)]


def _kafka_name(value: str) -> str:
    if not KAFKA_NAME.fullmatch(value):
        raise PydanticCustomError(
            "kafka_name", "must be 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-'"
        )
    return value


KafkaName = Annotated[str, AfterValidator(_kafka_name)]


def _bootstrap_servers(value: str) -> str:
    for server in value.split(","):
        host, colon, port = server.strip().rpartition(":")
        if not colon:
            host, port = port, "9092"
        if not host or any(c.isspace() for c in host) or not port.isdigit():
            raise PydanticCustomError(
                "bootstrap_servers", "must be HOST:PORT[,HOST:PORT...], e.g. kafka-1:9092"
            )
        if not 0 < int(port) < 65536:
            raise PydanticCustomError("bootstrap_servers", f"port {port} is not 1-65535")
    return value


BootstrapServers = Annotated[str, AfterValidator(_bootstrap_servers)]
NonEmpty = Annotated[str, Field(min_length=1)]


def _security_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("security_settings", message)


class Settings(BaseSettings):
    """Every knob of the worker; env `WORKER_<NAME>`, flag `--<name-with-dashes>`.

    Each field's docstring is its description: `--help` shows it, so a new field with a
    docstring is a documented flag (worker.cli picks the commands that take it). A value that
    is not finite, out of bounds or not one of an enum's values fails here, for every
    command, whether it came from a flag or the environment. An empty environment variable
    counts as unset.
    """

    model_config = SettingsConfigDict(
        env_prefix="WORKER_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        frozen=True,
        extra="ignore",
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )

    bootstrap_servers: BootstrapServers = "127.0.0.1:9092"
    """Kafka brokers to connect to first, HOST:PORT, comma-separated."""
    group_id: KafkaName = "session-worker"
    """Consumer group; one per deployment. The changelog topic is named after it."""
    group_instance_id: KafkaName | None = None
    """Static membership (e.g. the pod name): a restart within the session timeout keeps the
    partitions without a rebalance. Unset means dynamic membership."""
    session_timeout_s: Annotated[float, Field(ge=6, le=300)] = 10.0
    """Seconds the group waits for a silent member; raise it with static membership."""
    client_id: NonEmpty = "session-worker"
    """Kafka client id (broker logs and quotas)."""
    input_topic: KafkaName = "media.segment-events"
    """Topic of the input events, keyed by session id."""
    snapshot_topic: KafkaName = "media.sessions"
    """Compacted topic the Session snapshots are published to."""
    dlq_topic: KafkaName = "media.segment-events.dlq"
    """Dead letters: invalid input records, unchanged, with dlq.* headers."""
    changelog_topic: KafkaName | None = None
    """State changelog (compacted, partitioned like the input); unset:
    `<group_id>.<input_topic>.changelog`, one per group and input."""

    http_host: NonEmpty = "0.0.0.0"  # noqa: S104  # a pod must be scrapeable from outside
    """Address the HTTP port binds to."""
    http_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    """Port of /metrics, /healthz, /readyz and /sessions/{id}; 0 picks a free one."""
    publish_interval_s: Seconds = 1.0
    """Seconds between snapshot publishes (at most one per session per interval)."""
    commit_interval_s: Seconds = 5.0
    """At-least-once: how often the changelog is written and input offsets committed (at
    least the publish interval). Exactly-once commits with every publish."""
    catchup_backlog: Annotated[int, Field(ge=0)] = 50_000
    """While more input records than this wait, snapshots go out only with the checkpoints
    (every commit interval) so the backlog is folded faster. 0: publish every interval."""
    rate_window_s: Seconds = 10.0
    """Seconds of the trailing window of ingestRate and outgoingRate."""
    inactive_after_s: Seconds = 60.0
    """Seconds without a new segment.ingested after which a session is inactive: isHealthy
    null, no issues, rates 0, not republished until it changes."""
    stall_min_s: Seconds = 10.0
    """Minimum seconds without source segments before a session is reported stalled."""
    retention_s: Seconds = 300.0
    """Seconds an ended session stays in memory and metrics."""
    idle_timeout_s: Seconds = 3600.0
    """Seconds without events after which a session is ended as timed out."""
    evicted_ttl_s: Seconds = 86400.0
    """Seconds an evicted session's totals are kept, so a late event cannot reset them."""
    liveness_timeout_s: Seconds = 30.0
    """/healthz fails when the consume loop has not moved for this many seconds."""
    shutdown_timeout_s: Seconds = 10.0
    """Seconds the final checkpoint on SIGTERM may take."""
    changelog_format: Annotated[int, Field(ge=1, le=2)] = 2
    """Changelog records written in this format; every version since 2 reads both. Set 1
    during a rolling upgrade from a version that reads only format 1, then remove it."""
    max_poll_records: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    """Records per fetch batch."""
    metrics_max_sessions: Annotated[int, Field(ge=0)] = 10_000
    """Cap on per-session metric series (most recently active first)."""
    processing_guarantee: ProcessingGuarantee = ProcessingGuarantee.AT_LEAST_ONCE
    """at_least_once, or exactly_once (Kafka transactions; readers use read_committed)."""
    create_topics: bool = True
    """Create missing topics at start-up (the input too); false in production."""
    topic_partitions: Annotated[int, Field(ge=1, le=100_000)] = 6
    """Partitions of the input topic when the worker creates it (local and demo use)."""
    replication_factor: Annotated[int, Field(ge=1, le=32_767)] = 1
    """Replication of the topics the worker creates; `topics create` checks existing ones."""

    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: SaslMechanism | None = None
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with SASL_PLAINTEXT / SASL_SSL, as
    are the username and password."""
    sasl_username: NonEmpty | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password; never logged (prefer the environment to a flag)."""
    ssl_cafile: NonEmpty | None = None
    """PEM bundle of the CAs to trust; default: the system's trust store."""
    ssl_certfile: NonEmpty | None = None
    """PEM client certificate (mutual TLS); `ssl_keyfile` if the key is in another file."""
    ssl_keyfile: NonEmpty | None = None
    """PEM client key, when it is not in the certificate file."""
    ssl_key_password: SecretStr | None = None
    """Password of the client key; never logged."""
    ssl_check_hostname: bool = True
    """Verify that the broker's certificate names the host we connect to."""

    log_level: LogLevel = "INFO"
    """DEBUG, INFO, WARNING, ERROR or CRITICAL (tools: WARNING unless set)."""
    log_format: LogFormat = LogFormat.JSON
    """json (one object per line) or text (tools and demo: text unless set)."""

    debug_stall_file: Path | None = None
    """TEST HOOK, never for production: while this file exists the consume loop sleeps
    instead of fetching, so tests can see /healthz fail for a stuck loop. Hidden from
    --help, like every `debug_` setting."""

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
    def _check_changelog_name(self) -> Settings:
        if self.changelog_topic is None and not KAFKA_NAME.fullmatch(self.changelog_topic_name):
            raise ValueError(
                f"the changelog topic name {self.changelog_topic_name!r} (WORKER_GROUP_ID."
                "WORKER_INPUT_TOPIC.changelog) is too long: shorten them or set "
                "WORKER_CHANGELOG_TOPIC"
            )
        return self

    @model_validator(mode="after")
    def _check_topics_differ(self) -> Settings:
        """A shared topic breaks the worker: it would fold its own snapshots as input, or
        dead-letter its dead letters again forever."""
        roles = {
            "WORKER_INPUT_TOPIC": self.input_topic,
            "WORKER_SNAPSHOT_TOPIC": self.snapshot_topic,
            "WORKER_DLQ_TOPIC": self.dlq_topic,
            "the changelog topic": self.changelog_topic_name,
        }
        seen: dict[str, str] = {}
        for role, topic in roles.items():
            if topic in seen:
                raise ValueError(
                    f"{seen[topic]} and {role} are both {topic!r}: each role needs its own topic"
                )
            seen[topic] = role
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
